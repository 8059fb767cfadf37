"""``napari-lgms evaluate``: segment a folder of images and score them against their masks.

Pairing by file name stem (``.nii.gz`` counts as one suffix), in this order:

1. the same stem (``case1.png`` with ``case1.png`` / ``case1.nii.gz``);
2. the mask stem minus one of :data:`MASK_NAME_SUFFIXES` (``case1_mask.png``,
   ``ISIC_001_segmentation.png``, ``case1_seg.nii.gz``...), case-insensitive;
3. the image stem minus an nnU-Net channel suffix ``_0000`` (``case1_0000.nii.gz``
   with ``case1.nii.gz``).

A file never pairs with itself (images and masks may share a folder). A mask claimed by two images, or an image with two candidate masks at the
same step, stays unpaired; unpaired files are listed on stderr.

Scores per image as in :mod:`napari_lgms.metrics`: foreground (> 0) IoU and
Dice (= F1) with the model's threshold; for multi-class models also Dice per
class (label values 1..K-1 of the mask). Means are over images. ``--json``
writes the same numbers atomically.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from napari_lgms.errors import InputError, LgmsError

MASK_NAME_SUFFIXES = (
    "_mask", "-mask", "_masks", "_seg", "-seg", "_segmentation", "_label", "_labels",
    "_gt", "_groundtruth", "_annotation", "_anno",
)
NNUNET_CHANNEL = re.compile(r"_\d{4}$")


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


def _strip_mask_suffix(stem: str) -> str | None:
    lower = stem.lower()
    for suffix in MASK_NAME_SUFFIXES:
        if lower.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return None


def pair_files(images: list[Path], masks: list[Path]):
    """Returns ([(image, mask), ...] sorted by image name, unpaired images, unpaired masks)."""
    from napari_lgms.io.image import stem_of

    pairs: dict[Path, Path] = {}
    free_masks = list(masks)
    steps = (
        (stem_of, stem_of),
        (stem_of, lambda mask: _strip_mask_suffix(stem_of(mask))),
        (lambda image: NNUNET_CHANNEL.sub("", stem_of(image)), stem_of),
    )
    for image_key, mask_key in steps:
        wanted: dict[str, list[Path]] = {}
        for image in images:
            if image not in pairs:
                wanted.setdefault(image_key(image), []).append(image)
        offered: dict[str, list[Path]] = {}
        for mask in free_masks:
            key = mask_key(mask)
            if key is not None:
                offered.setdefault(key, []).append(mask)
        for key, candidates in offered.items():
            claimants = wanted.get(key, [])
            if len(candidates) == 1 and len(claimants) == 1 and candidates[0] != claimants[0]:
                pairs[claimants[0]] = candidates[0]
                free_masks.remove(candidates[0])
    ordered = sorted(pairs.items(), key=lambda item: item[0].name)
    unpaired_images = sorted((image for image in images if image not in pairs), key=lambda p: p.name)
    return ordered, unpaired_images, sorted(free_masks, key=lambda p: p.name)


def _list_folder(folder: str, what: str) -> list[Path]:
    from napari_lgms.io import is_supported

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise InputError(f"--{what} {path} is not a folder")
    return sorted(child for child in path.iterdir() if not child.name.startswith(".") and is_supported(child))


def score_pair(image_path: Path, mask_path: Path, model, device, slice_axis: int,
               test_time_augmentation: str | None = None) -> dict:
    """Segment one image and score it against its mask; one row of the report."""
    import numpy as np

    from napari_lgms.inference import segment
    from napari_lgms.io import read_image, read_mask
    from napari_lgms.metrics import binary_scores, class_dice

    image = read_image(image_path)
    truth = read_mask(mask_path)
    result = segment(image.array, model, channel_axis=image.channel_axis, spacing=image.spacing,
                     slice_axis=slice_axis, device=device, test_time_augmentation=test_time_augmentation)
    prediction = result.labels
    if prediction.shape != truth.shape:
        raise InputError(
            f"{mask_path.name}: mask shape {truth.shape} does not match image {image_path.name} "
            f"spatial shape {prediction.shape}"
        )
    row = {"image": image_path.name, "mask": mask_path.name, **binary_scores(prediction, truth)}
    class_names = list(model.card.class_names)
    if model.card.num_classes > 1:
        labels = list(range(1, len(class_names)))
        per_class = class_dice(prediction, np.asarray(truth), labels)
        row["class_dice"] = {class_names[label]: per_class[label] for label in labels}
    row["seconds"] = result.seconds
    return row


def summarize(rows: list[dict]) -> dict:
    from napari_lgms.metrics import mean_scores

    means = mean_scores([{"iou": row["iou"], "dice": row["dice"]} for row in rows])
    if rows and "class_dice" in rows[0]:
        names = list(rows[0]["class_dice"])
        means["class_dice"] = {name: float(sum(r["class_dice"][name] for r in rows) / len(rows)) for name in names}
    return means


def format_report(rows: list[dict], means: dict) -> str:
    class_names = list(rows[0].get("class_dice", {})) if rows else []
    headers = ["image", "mask", "IoU", "Dice"] + [f"Dice {name}" for name in class_names]
    lines = []
    for row in rows:
        lines.append([row["image"], row["mask"], f"{row['iou']:.4f}", f"{row['dice']:.4f}"]
                     + [f"{row['class_dice'][name]:.4f}" for name in class_names])
    lines.append([f"mean of {len(rows)} image(s)", "", f"{means['iou']:.4f}", f"{means['dice']:.4f}"]
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
            raise InputError(f"--split {args.split_path}: {len(missing)} validation image(s) are not in "
                             f"{args.images}, e.g. {sorted(missing)[0]!r}")
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
        raise InputError(f"none of the {len(pairs)} image/mask pair(s) could be evaluated")
    means = summarize(rows)
    print(f"model {model.card.name} on {len(rows)} image(s), test-time augmentation: {tta}")
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
