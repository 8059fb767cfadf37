"""``napari-lgms evaluate``: segment a folder of images and score them against their masks.

Images pair with masks by file name (:func:`napari_lgms.evaluation.pair_files`); unpaired files are
listed on stderr. Scores per image and their means (:mod:`napari_lgms.evaluation`); ``--json``
writes the same numbers atomically.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from napari_lgms._words import counted, plural
from napari_lgms.errors import InputError, LgmsError
from napari_lgms.evaluation import pair_files, score_pair, summarize


def add_parser(subparsers) -> argparse.ArgumentParser:
    from napari_lgms.cli.segment_cmd import add_device_argument, add_tta_argument

    parser = subparsers.add_parser(
        "evaluate",
        help="score a model on images with reference masks",
        description="Segment every image in --images, pair it with its mask in --masks by file "
        "name, and print per-image and mean IoU and Dice (plus Dice per class for multi-class models).",
    )
    parser.add_argument("--model", "-m", required=True, help="model name or path to a .json card / .safetensors file")
    parser.add_argument("--images", required=True, help="folder of images")
    parser.add_argument("--masks", required=True, help="folder of reference masks")
    parser.add_argument("--json", dest="json_path", help="also write the numbers to this JSON file")
    parser.add_argument("--split", dest="split_path",
                        help="a training run's split.json: score only its validation images (by name stem)")
    add_device_argument(parser)
    parser.add_argument("--slice-axis", type=int, default=0, help="axis a 2D model walks through a volume")
    add_tta_argument(parser)
    return parser


def _list_folder(folder: str, what: str) -> list[Path]:
    from napari_lgms.training.data import visible_files

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise InputError(f"--{what} {path} is not a folder")
    return visible_files(path)


def format_report(rows: list[dict], means: dict) -> str:
    class_names = list(rows[0].get("class_dice", {})) if rows else []
    headers = ["image", "mask", "IoU", "Dice"] + [f"Dice {name}" for name in class_names]
    lines = []
    for row in rows:
        lines.append([row["image"], row["mask"], f"{row['iou']:.4f}", f"{row['dice']:.4f}"]
                     + [f"{row['class_dice'][name]:.4f}" for name in class_names])
    lines.append([f"mean of {counted(len(rows), 'image')}", "", f"{means['iou']:.4f}", f"{means['dice']:.4f}"]
                 + [f"{means['class_dice'][name]:.4f}" for name in class_names])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    out = []
    for index, line in enumerate([headers] + lines):
        if index == len(lines):  # the mean row
            out.append("  ".join("-" * w for w in widths))
        out.append("  ".join(text.ljust(w) if i < 2 else text.rjust(w)
                             for i, (text, w) in enumerate(zip(line, widths))).rstrip())
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    from napari_lgms._atomic import atomic_write_text
    from napari_lgms.cli.segment_cmd import named_error, ensure_writable_file, load_model_for_cli
    from napari_lgms.inference.augment import resolve as resolve_tta

    json_path = ensure_writable_file(args.json_path) if args.json_path else None
    images = _list_folder(args.images, "images")
    masks = _list_folder(args.masks, "masks")
    if args.split_path:
        from napari_lgms.io.image import stem_of
        from napari_lgms.training.data import read_split

        wanted = set(read_split(args.split_path, "--split")["val"])
        images = [image for image in images if stem_of(image) in wanted]
        missing = wanted - {stem_of(image) for image in images}
        if missing:
            raise InputError(f"--split {args.split_path}: {counted(len(missing), 'validation image')} "
                             f"{plural(len(missing), 'is', 'are')} not in {args.images}, "
                             f"e.g. {sorted(missing)[0]!r}")
    pairs, lonely_images, lonely_masks = pair_files(images, masks)
    if args.split_path:
        lonely_masks = []  # the other masks belong to training images
    for image in lonely_images:
        print(f"napari-lgms evaluate: warning: no mask for image {image.name}", file=sys.stderr)
    for mask in lonely_masks:
        print(f"napari-lgms evaluate: warning: no image for mask {mask.name}", file=sys.stderr)
    if not pairs:
        raise InputError(
            f"no image in {args.images} has a mask in {args.masks} (pairing by file name stem, "
            f"optionally with a suffix like _mask/_seg/_segmentation on the mask)"
        )

    model, device = load_model_for_cli(args.model, args.device)
    tta = resolve_tta(args.tta, model.card)
    rows, failures = [], []
    for image_path, mask_path in pairs:
        try:
            rows.append(score_pair(image_path, mask_path, model, device, args.slice_axis, tta))
        except LgmsError as error:
            named = named_error(str(image_path), error)
            if len(pairs) == 1:
                raise named from None
            failures.append({"image": image_path.name, "mask": mask_path.name, "error": str(named)})
            print(f"napari-lgms evaluate: error: {named}", file=sys.stderr)
    if not rows:
        raise InputError(f"none of the {counted(len(pairs), 'image/mask pair')} could be evaluated")
    means = summarize(rows)
    print(f"model {model.card.name} on {counted(len(rows), 'image')}, test-time augmentation: {tta}")
    print(format_report(rows, means))
    if json_path is not None:
        report = {
            "model": model.card.name,
            "model_path": str(model.path) if model.path else None,
            "images": str(Path(args.images)),
            "masks": str(Path(args.masks)),
            "split": str(Path(args.split_path)) if args.split_path else None,
            "class_names": list(model.card.class_names),
            "test_time_augmentation": tta,
            "per_image": rows,
            "mean": means,
            "count": len(rows),
            "failed": failures,
            "unpaired_images": [p.name for p in lonely_images],
            "unpaired_masks": [p.name for p in lonely_masks],
        }
        atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    return 2 if failures else 0
