"""Retrain the shipped models from their configs (``make weights``).

    NAPARI_LGMS_DATA=../shared/datasets python scripts/train_weights.py [NAME ...] [--resume]

Each ``training/configs/NAME.yaml`` is trained with ``napari-lgms train`` (its
output folder keeps a checkpoint, so ``--resume`` continues an interrupted run,
across sessions if need be); the best model is then copied into
``resources/models`` with fp16 weights. The demo model is
``scripts/train_demo_model.py``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from napari_lgms.cli import main as cli
from napari_lgms.training.config import load_yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "training" / "configs"
SHIPPED = ROOT / "resources" / "models"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="config names (default: all)")
    parser.add_argument("--resume", action="store_true", help="continue from each run's checkpoint")
    args, extra = parser.parse_known_args()
    if not os.environ.get("NAPARI_LGMS_DATA"):
        print("set NAPARI_LGMS_DATA to the datasets folder (e.g. ../shared/datasets)", file=sys.stderr)
        return 2
    names = args.names or sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    for name in names:
        config_file = CONFIGS / f"{name}.yaml"
        flags = ["train", "--config", str(config_file), "--save-half", *extra]
        if args.resume:
            flags.append("--resume")
        status = cli(flags)
        if status:
            return status
        output = Path(load_yaml(config_file)["output"])
        SHIPPED.mkdir(parents=True, exist_ok=True)
        for suffix in (".json", ".safetensors"):
            shutil.copy2(output / f"{name}{suffix}", SHIPPED / f"{name}{suffix}")
        print(f"shipped {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
