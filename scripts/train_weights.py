"""Retrain the shipped models from their configs (``make weights``), ship and score them.

    NAPARI_LGMS_DATA=../shared/datasets python scripts/train_weights.py [NAME ...] [--resume] [TRAIN FLAGS]
    NAPARI_LGMS_DATA=../shared/datasets python scripts/train_weights.py NAME --ship-only [--progress TEXT]
    NAPARI_LGMS_DATA=../shared/datasets python scripts/train_weights.py NAME --score-only

Each ``training/configs/NAME.yaml`` is trained with ``napari-lgms train`` (its
output folder keeps a checkpoint, so ``--resume`` continues an interrupted run,
across sessions if need be); extra flags (``--epochs 20 --patch-size 160 160``)
override the config. The best model is copied into ``resources/models`` with
fp16 weights, then scored the way users run it: ``napari-lgms evaluate`` (the
engine, at each image's own resolution) on the validation images of the
config's ``split_file``; those numbers go into the card as ``metrics.engine``.
``--ship-only`` ships a run trained by hand (``napari-lgms train --config ...``);
``--score-only`` re-scores an already shipped model; ``--progress`` records in
the card how far a shortened (CPU) schedule got. Every shipped card takes its
default test-time augmentation from its config (``test_time_augmentation``;
runs trained before that setting existed get it when shipped or re-scored). The demo model is
``scripts/train_demo_model.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from napari_lgms._atomic import atomic_write_bytes, atomic_write_text
from napari_lgms.cli import main as cli
from napari_lgms.training.config import TrainConfig, load_yaml
from napari_lgms.training.data import dataset_folders, expand_path, read_split

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "training" / "configs"
SHIPPED = ROOT / "resources" / "models"


def evaluate_report(card_path: Path, images: Path, masks: Path, split_file: Path, tta: str) -> dict | None:
    """``napari-lgms evaluate --json`` on the split's validation images; its report, None if it failed."""
    with tempfile.TemporaryDirectory() as scratch:
        report_path = Path(scratch) / "scores.json"
        status = cli(["evaluate", "--model", str(card_path), "--images", str(images), "--masks", str(masks),
                      "--split", str(split_file), "--json", str(report_path), "--tta", tta])
        return None if status else json.loads(report_path.read_text())


def score(name: str, progress: str = "") -> int:
    """Score the shipped NAME on its config's validation split with the engine; record it in the card.

    The card's default test-time augmentation is set from the config first; the scores use it,
    as users run it, and when it is not "none" the one-pass scores go beside them as ``one_pass``.
    """
    config = load_yaml(CONFIGS / f"{name}.yaml")
    split_file = ROOT / config["split_file"]
    layout = dataset_folders(expand_path(config["data"]))
    if layout is None:
        raise SystemExit(f"{config['data']}: neither images/ + masks/ nor imagesTr/ + labelsTr/")
    images, masks, _ = layout
    card_path = SHIPPED / f"{name}.json"
    card = json.loads(card_path.read_text())
    card.setdefault("output", {})["test_time_augmentation"] = config.get(
        "test_time_augmentation", TrainConfig.test_time_augmentation)
    atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")  # evaluate reads the default from it
    report = evaluate_report(card_path, images, masks, split_file, "auto")
    if report is None:
        return 1
    one_pass = None
    if report["test_time_augmentation"] != "none":
        one_pass = evaluate_report(card_path, images, masks, split_file, "none")
        if one_pass is None:
            return 1
    split = read_split(split_file)
    card.setdefault("metrics", {})["engine"] = {
        **report["mean"], "images": report["count"], "test_time_augmentation": report["test_time_augmentation"],
        "split": f"{split_file.relative_to(ROOT).as_posix()}: {split['description']}",
        "how": "napari-lgms evaluate (the inference engine at each image's own resolution, fp16-stored "
               "weights, the card's test-time augmentation, per-image scores averaged): what a user gets",
        "command": f"napari-lgms evaluate --model {name} --images {config['data']}/{images.name} "
                   f"--masks {config['data']}/{masks.name} "
                   f"--split {split_file.relative_to(ROOT).as_posix()}",
    }
    if one_pass is not None:
        card["metrics"]["engine"]["one_pass"] = {key: one_pass["mean"][key] for key in ("iou", "dice")}
    if progress:
        card["training"]["progress"] = progress
    class_dice = report["mean"].get("class_dice")
    if class_dice:
        card["metrics"]["engine"]["mean_class_dice"] = sum(class_dice.values()) / len(class_dice)
    atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
    print(f"scored {name}: {json.dumps(report['mean'])}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="config names (default: all)")
    parser.add_argument("--resume", action="store_true", help="continue from each run's checkpoint")
    parser.add_argument("--score-only", action="store_true", help="only re-score the shipped models")
    parser.add_argument("--ship-only", action="store_true",
                        help="ship the best model of each finished run (no training), then score it")
    parser.add_argument("--run-dir", default="",
                        help="with --ship-only: the run folder to ship from (default: the config's output)")
    parser.add_argument("--progress", default="",
                        help="how far training got (a shortened CPU schedule...): stored in the card")
    args, extra = parser.parse_known_args()
    if not os.environ.get("NAPARI_LGMS_DATA"):
        print("set NAPARI_LGMS_DATA to the datasets folder (e.g. ../shared/datasets)", file=sys.stderr)
        return 2
    names = args.names or sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    for name in names:
        if args.ship_only:
            ship(name, args.run_dir)
        elif not args.score_only:
            status = train_and_ship(name, args.resume, extra)
            if status:
                return status
        status = score(name, args.progress)
        if status:
            return status
    return 0


def train_and_ship(name: str, resume: bool, extra: list[str]) -> int:
    config_file = CONFIGS / f"{name}.yaml"
    flags = ["train", "--config", str(config_file), "--save-half", *extra]
    if resume:
        flags.append("--resume")
    status = cli(flags)
    if status:
        return status
    ship(name)
    return 0


def ship(name: str, run_dir: str = "") -> None:
    """Copy the best model of NAME's run (``run_dir``, else its config's output folder) into
    resources/models, weights first (a crash leaves a card whose hash check fails, never a mix)."""
    output = Path(run_dir or load_yaml(CONFIGS / f"{name}.yaml")["output"])
    SHIPPED.mkdir(parents=True, exist_ok=True)
    for suffix in (".safetensors", ".json"):
        atomic_write_bytes(SHIPPED / f"{name}{suffix}", (output / f"{name}{suffix}").read_bytes())
    print(f"shipped {name}")


if __name__ == "__main__":
    sys.exit(main())
