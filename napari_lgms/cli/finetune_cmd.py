"""``napari-lgms finetune``: a new model version from a user's corrections, within a time budget.

    napari-lgms finetune --model NAME_OR_PATH (--corrections DIR | --images DIR --masks DIR)
                         [--unlabelled DIR] [--output DIR] [--time-budget SECONDS | --steps N]
                         [--device cpu] [--preset fast]

Every correction is scored by a model that did not train on it (two-fold cross-fitting), and the
verdict ("better", "no evidence either way", "worse") decides: only a better model is written,
as ``NAME-ft-YYYYmmdd-HHMMSS`` into --output (default: the user model folder). Exit code 0 either
way; the last line says what was decided. Fewer corrections than the check needs (five) are
refused before any training.
"""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "finetune", help="fine-tune a model on corrected examples (time-budgeted, never worse)",
        description="Fine-tune a model on corrections saved from napari, or on image/mask folders.",
    )
    parser.add_argument("--model", required=True, help="model name or path to a .json card / .safetensors file")
    source = parser.add_argument_group("examples (one source)")
    source.add_argument("--corrections", metavar="DIR", help="a corrections store folder (manifest.json)")
    source.add_argument("--images", metavar="DIR", help="folder of images ...")
    source.add_argument("--masks", metavar="DIR", help="... and of masks paired by file name")
    parser.add_argument("--unlabelled", metavar="DIR",
                        help="images of the same domain without masks (the rest of the folder you segment)")
    parser.add_argument("--output", metavar="DIR", help="where the new version goes (default: user model folder)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--time-budget", type=float, metavar="SECONDS", help="wall-clock budget for the whole run")
    budget.add_argument("--steps", type=int, help="optimiser steps of the final model (each of the two checks takes half as many)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--preset", default="default", choices=("default", "fast"),
                        help="default: a two-minute budget; fast: one minute")
    parser.add_argument("--freeze-encoder", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--lr", type=float, help="peak learning rate (AdamW, cosine schedule)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="name of the new model (default NAME-ft-YYYYmmdd-HHMMSS)")
    return parser


def run(args: argparse.Namespace) -> int:
    import time

    from napari_lgms._generators import every, run_to_end
    from napari_lgms.errors import InputError
    from napari_lgms.training import finetune_steps

    if not args.corrections and not (args.images and args.masks):
        raise InputError("give --corrections DIR, or both --images DIR and --masks DIR")
    if args.corrections and (args.images or args.masks):
        raise InputError("give either --corrections or --images/--masks, not both")
    generator = finetune_steps(
        args.model, corrections=args.corrections, images=args.images, masks=args.masks,
        unlabelled=args.unlabelled, output=args.output,
        time_budget=args.time_budget, steps=args.steps, device=args.device, preset=args.preset,
        freeze_encoder=args.freeze_encoder, lr=args.lr, batch_size=args.batch_size, seed=args.seed, name=args.name,
        require_evidence=True,
    )
    train_line_due = every(2.0, time.monotonic)

    def report(progress) -> None:
        if progress.phase == "train" and train_line_due():
            print(f"{progress.message}: step {progress.step} loss {progress.loss:.4f}", flush=True)
        elif progress.phase in ("loading", "validate") and progress.message:
            print(progress.message, flush=True)

    result = run_to_end(generator, report)
    if result.saved:
        print(f"model: {result.card_path}")
    print(f"verdict: {result.verdict}: {result.message}")
    return 0
