"""Train a click model from a shipped model, one resumable stage per call.

    NAPARI_LGMS_DATA=../shared/datasets python scripts/train_click_model.py lgmsnet-breast-us \\
        --data '${NAPARI_LGMS_DATA}/busi' --split training/splits/busi.json --output runs/busi-clicks --steps 300

A stage starts from the output folder's model (the parent, the first time), or from its
checkpoint when the previous call was interrupted; it keeps its model only when its clicks on the
validation images improved (:mod:`napari_lgms.training.clicks`). ``--ship`` copies the folder's
model into ``resources/models`` with fp16 weights.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from napari_lgms.errors import InputError
from napari_lgms.training.clicks import ClickTraining, train_clicks
from napari_lgms.zoo.card import FIRST_VIEWS

SHIPPED = Path(__file__).resolve().parents[1] / "resources" / "models"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parent")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", required=True, help="the parent's recorded split.json")
    parser.add_argument("--output", required=True)
    parser.add_argument("--minutes", type=float, default=None, help="the stage's time budget")
    parser.add_argument("--steps", type=int, default=None, help="the stage's step budget")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--validation-images", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--radius", type=float, default=None,
                        help="a new model's click radius in patch pixels (default 5)")
    parser.add_argument("--first-view", choices=FIRST_VIEWS, default=None,
                        help="a new model's view of the first click: the whole image (default) or a "
                             "patch-sized window at the image's resolution")
    parser.add_argument("--ship", action="store_true", help="copy the output's model into resources/models")
    args = parser.parse_args(argv)
    if args.minutes is None and args.steps is None and not args.ship:
        parser.error("give --minutes, --steps or both")
    settings = ClickTraining(args.parent, args.data, args.split, args.output, seconds=None if args.minutes is None else args.minutes * 60,
                             steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             validation_images=args.validation_images, seed=args.seed,
                             radius=args.radius, first_view=args.first_view,
                             command=shlex.join(["python", "scripts/train_click_model.py", *sys.argv[1:]]))
    if args.ship:
        return ship(Path(args.output), f"{args.parent}-clicks")
    started, last = time.monotonic(), 0.0

    def show(progress):
        nonlocal last
        now = time.monotonic() - started
        if progress.phase != "train" or now - last > 30:
            last = now
            print(f"[{now:6.0f} s] {progress.phase} step {progress.step} "
                  f"{'' if progress.loss is None else f'loss {progress.loss:.3f} '}{progress.message} "
                  f"{progress.scores or ''}", flush=True)

    try:
        record = train_clicks(settings, on_progress=show)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not record["stopped"]:
        print(f"stage: {record['start']} -> {record['end']} ({'saved' if record['saved'] else 'not saved'})")
    return 0


def ship(output: Path, name: str) -> int:
    from napari_lgms.zoo import load_model, save_model

    loaded = load_model(output / f"{name}.json")
    print(save_model(loaded.network, loaded.card, SHIPPED, half=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
