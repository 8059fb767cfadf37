"""``napari-lgms train --config FILE.yaml [--setting value ...]``: train a model from a config.

Every setting of :class:`napari_lgms.training.config.TrainConfig` is also a
flag (``--patch-size 256 256``, ``--no-cache``, ``--model-args '{"num_classes": 3}'``);
flags override the YAML file. Runs unchanged under
``torchrun --nproc_per_node N -m napari_lgms.cli train ...`` (DDP; rank 0 prints and writes).
"""
from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    from napari_lgms.training.config import add_config_flags

    parser = subparsers.add_parser(
        "train", help="train a model from a YAML config (flags override it)",
        description="Train a segmentation model; writes NAME.safetensors + NAME.json, "
                    "training_log.jsonl, training_curves.png and checkpoint.pt into --output.",
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of settings (see training/configs/)")
    parser.add_argument("--quiet", action="store_true", help="print only the result")
    add_config_flags(parser)
    return parser


def _line(progress) -> str:
    if progress.phase == "train":
        remaining = f", {progress.remaining:.0f}s left" if progress.remaining is not None else ""
        return (f"epoch {progress.epoch}/{progress.epochs} step {progress.step}/{progress.total_steps} "
                f"loss {progress.loss:.4f} lr {progress.lr:.2e}{remaining}")
    if progress.phase == "epoch" and progress.val_metrics:
        scores = " ".join(f"{k} {v:.4f}" for k, v in progress.val_metrics.items())
        return f"epoch {progress.epoch}: train loss {progress.loss:.4f}; val {scores} {progress.message}".rstrip()
    return f"[{progress.phase}] {progress.message}" if progress.message else ""


def equivalent_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run: the YAML file plus every flag that was given."""
    import json
    import os
    import shlex

    from napari_lgms.training.config import TrainConfig

    words = ["napari-lgms", "train"]
    if getattr(args, "config", None):
        words += ["--config", str(args.config)]
    for name in TrainConfig.__dataclass_fields__:
        if name not in vars(args):
            continue
        value, flag = getattr(args, name), "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            words += [flag] + [str(v) for v in value]
        elif isinstance(value, dict):
            words += [flag, json.dumps(value)]
        else:
            words += [flag, str(value)]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        words = ["torchrun", "--nproc_per_node", os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]),
                 "-m", "napari_lgms.cli"] + words[1:]
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    import os

    import time

    from napari_lgms._generators import every, run_to_end
    from napari_lgms.training.config import config_from_args
    from napari_lgms.training.engine import train_steps

    config = config_from_args(args)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    command = equivalent_command(args)
    generator = train_steps(config, command=command)
    train_line_due = every(2.0, time.monotonic)

    def report(progress) -> None:
        if not main_rank or args.quiet or (progress.phase == "train" and not train_line_due()):
            return
        text = _line(progress)
        if text:
            print(text, flush=True)

    result = run_to_end(generator, report)
    if main_rank:
        if result.card_path is None:
            print("napari-lgms train: stopped before any validation; no model written", file=sys.stderr)
            return 1
        scores = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if isinstance(v, float))
        print(f"model: {result.card_path}\nvalidation (best epoch {result.best_epoch}): {scores}\n"
              f"log: {result.log_path}")
    return 0
