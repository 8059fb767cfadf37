"""Scoring a model against reference masks: pairing images with masks, per-image scores, means.

One pairing rule for every place that pairs files (``napari-lgms evaluate``, training folders,
the benchmarks), by file name stem (``.nii.gz`` counts as one suffix), in this order:

1. the same stem (``case1.png`` with ``case1.png`` / ``case1.nii.gz``);
2. the mask stem minus one of :data:`MASK_NAME_SUFFIXES` (``case1_mask.png``,
   ``ISIC_001_segmentation.png``, ``case1_seg.nii.gz``...), case-insensitive;
3. the image stem minus an nnU-Net channel suffix ``_0000`` (``case1_0000.nii.gz``
   with ``case1.nii.gz``).

A file never pairs with itself (images and masks may share a folder). A mask claimed by two
images, or an image with two candidate masks at the same step, stays unpaired.

Scores per image as in :mod:`napari_lgms.metrics`: foreground (> 0) IoU and Dice (= F1) with the
model's threshold; for multi-class models also Dice per class (label values 1..K-1 of the mask).
Means are over images.
"""
from __future__ import annotations

import re
from pathlib import Path

from napari_lgms.errors import InputError

MASK_NAME_SUFFIXES = (
    "_mask", "-mask", "_masks", "_seg", "-seg", "_segmentation", "_label", "_labels",
    "_gt", "_groundtruth", "_annotation", "_anno",
)
NNUNET_CHANNEL = re.compile(r"_\d{4}$")


def strip_mask_suffix(stem: str) -> str | None:
    """``stem`` without its mask suffix (``case1_mask`` -> ``case1``), or None when it has none."""
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
        (stem_of, lambda mask: strip_mask_suffix(stem_of(mask))),
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
    """Mean IoU and Dice over the rows of :func:`score_pair` (and mean Dice per class)."""
    from napari_lgms.metrics import mean_scores

    means = mean_scores([{"iou": row["iou"], "dice": row["dice"]} for row in rows])
    if rows and "class_dice" in rows[0]:
        names = list(rows[0]["class_dice"])
        means["class_dice"] = {name: float(sum(r["class_dice"][name] for r in rows) / len(rows)) for name in names}
    return means
