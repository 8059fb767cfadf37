"""``napari-lgms finetune``: a new model version from a user's corrections, within a time budget.

    napari-lgms finetune --model NAME_OR_PATH (--corrections DIR | --images DIR --masks DIR)
                         [--unlabelled DIR] [--output DIR] [--time-budget SECONDS | --steps N]
                         [--device cpu] [--preset fast] [--review DIR]

Every correction is scored by a model that did not train on it (two-fold cross-fitting), and the
verdict ("better", "no evidence either way", "worse") decides: only a better model is written,
as ``NAME-ft-YYYYmmdd-HHMMSS`` into --output (default: the user model folder). Exit code 0 either
way; the last line says what was decided. Fewer corrections than the check needs (five) are
refused before any training.

``--review DIR`` (with ``--unlabelled``): after the run, the unlabelled images whose masks the new
model changes most are written to DIR as two pictures each, "A" and "B" (the image with each
model's mask outlined; masks beside the image for volumes), in an order that does not say which
model made which; the command asks which is better for each, and the answers can save a model
the check could not vouch for, or withdraw one it did (:mod:`napari_lgms.training.review`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from napari_lgms._words import counted


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
    parser.add_argument("--review", metavar="DIR",
                        help="after the run, compare both models' masks on the unlabelled images it changes "
                             "most (pictures go to DIR) and answer which is better; with it, fewer than five "
                             "corrections are accepted (only the review can then save the new model)")
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
    from napari_lgms.training.review import reviewable

    if not args.corrections and not (args.images and args.masks):
        raise InputError("give --corrections DIR, or both --images DIR and --masks DIR")
    if args.corrections and (args.images or args.masks):
        raise InputError("give either --corrections or --images/--masks, not both")
    if args.review and not args.unlabelled:
        raise InputError("--review compares the models on your unlabelled images: give --unlabelled DIR too")
    if args.review and Path(args.review).expanduser().is_file():
        raise InputError(f"--review {args.review} is a file; give a folder for the pictures to compare")
    unlabelled = read_unlabelled(args.unlabelled) if args.review else args.unlabelled  # read once for both
    generator = finetune_steps(
        args.model, corrections=args.corrections, images=args.images, masks=args.masks,
        unlabelled=unlabelled, output=args.output,
        time_budget=args.time_budget, steps=args.steps, device=args.device, preset=args.preset,
        freeze_encoder=args.freeze_encoder, lr=args.lr, batch_size=args.batch_size, seed=args.seed, name=args.name,
        require_evidence=not args.review,  # with a review, fewer than five corrections can still decide
    )
    train_line_due, loading_line_due = every(2.0, time.monotonic), every(2.0, time.monotonic)
    stage = ""

    def report(progress) -> None:
        nonlocal stage
        if progress.phase == "train" and train_line_due():
            print(f"{progress.message}: step {progress.step} loss {progress.loss:.4f}", flush=True)
        elif progress.phase == "loading":  # "stage: done/total", a line as each stage starts, then every 2 s
            started, stage = progress.message.split(":")[0] != stage, progress.message.split(":")[0]
            if loading_line_due() or started:
                print(progress.message, flush=True)
        elif progress.phase == "validate" and progress.message:
            print(progress.message, flush=True)

    result = run_to_end(generator, report)
    if result.saved:
        print(f"model: {result.card_path}")
    print(f"verdict: {result.verdict}: {result.message}")
    if args.review:
        review(result, unlabelled, args.review, args.model)
    elif not result.saved and reviewable(result):
        print("to decide it yourself: run again with --unlabelled DIR --review DIR (the new and the current "
              "model's masks on your images, side by side; your answers decide)")
    return 0


def read_unlabelled(folder: str) -> list:
    """Every image of ``folder`` (:class:`~napari_lgms.io.image.ImageData`, with its file name as
    ``source``); a folder that is not one is left to the fine-tune's own one-line error."""
    from napari_lgms.io import read_image
    from napari_lgms.training.data import visible_files

    path = Path(folder).expanduser()
    if not path.is_dir():
        return folder
    return [read_image(p) for p in visible_files(path) if p.is_file()]


def review(result, images: list, folder: str, model: str) -> None:
    """Ask which mask is better on the unlabelled ``images`` the new model changes most; print the outcome."""
    import time

    from napari_lgms._generators import every, run_to_end
    from napari_lgms.errors import OutputError
    from napari_lgms.training.review import accept_review, review_items_steps, reviewable, write_pictures

    if not reviewable(result):
        print("review: nothing to review (the run was stopped or its check found the new model worse)")
        return
    count = counted(len(images), "unlabelled image")
    print(f"review: segmenting {count} with both models", flush=True)
    line_due = every(2.0, time.monotonic)

    def report(progress) -> None:
        if line_due() or progress.done == progress.total:
            print(f"review: {progress.done}/{progress.total} segmented by both models", flush=True)

    names = [Path(str(image.source)).name for image in images]
    items = run_to_end(review_items_steps(result, images, names=names, parent=model), report)
    if not items:
        print("review: the new model's masks match the current one's on these images: nothing to review")
        return
    destination = Path(folder).expanduser()
    try:
        destination.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or error
        raise OutputError(f"cannot create the review folder {destination} ({reason})") from None
    answers = []
    for number, item in enumerate(items, 1):
        pictures = write_pictures(item, destination, number)
        question = (f"[{number}/{len(items)}] {item.name}: {pictures[0].name} or {pictures[1].name}, "
                    "which mask is better? (a / b / s for the same) ")
        answers.append(ask(question))
    reviewed = accept_review(result, items, answers)
    if reviewed.saved:
        print(f"model: {reviewed.card_path}")
    print(f"after review: {reviewed.verdict}: {reviewed.message}")


def ask(question: str) -> str:
    """"A", "B" or "same" from the terminal; asks again until the answer is one of them."""
    from napari_lgms.errors import InputError

    while True:
        try:
            answer = input(question).strip().lower()
        except EOFError:
            raise InputError("--review asks which mask is better at the terminal, and its input ended: "
                             "run it where you can answer, or without --review") from None
        if answer in ("a", "b"):
            return answer.upper()
        if answer in ("s", "same"):
            return "same"
        print("answer a, b or s")
