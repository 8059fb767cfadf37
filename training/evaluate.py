"""Validation: run the network on prepared samples and score them per image, as the papers do.

Binary (one logit): sigmoid > 0.5, IoU and Dice per image
(:func:`napari_lgms.metrics.binary_scores`). Multi-class: argmax, Dice per
foreground class (:func:`napari_lgms.metrics.class_dice`), ``dice`` = their
mean. Returned as *sums* plus a count so ranks can add them up before dividing.

With ``window`` (patch-trained models, e.g. 3D), every sample is predicted the
way the inference engine predicts it: Gaussian-blended sliding windows of the
training patch size with the engine's default overlap, so the epoch chosen as
best is the one that is best for users (one forward over a whole padded volume
scores differently: normalisation layers then see the padding).
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np

from napari_lgms.inference.windows import DEFAULT_OVERLAP
from napari_lgms.metrics import binary_scores, class_dice


def metric_keys(num_classes: int) -> list[str]:
    if num_classes == 1:
        return ["loss", "iou", "dice"]
    return ["loss", "dice"] + [f"dice_class_{k}" for k in range(1, num_classes)]


def sliding_window_logits(network, image, window: tuple[int, ...], *, overlap: float = DEFAULT_OVERLAP,
                          batch_size: int = 4, autocast=contextlib.nullcontext):
    """(1, C, *S) tensor -> (1, K, *S) float32 logits, blended over windows of ``window`` (clipped to S)
    as the inference engine blends them (its window layout, Gaussian weights and default overlap)."""
    import torch

    from napari_lgms.inference.windows import gaussian_weights, weight_map, window_shape, window_slices
    from napari_lgms.models.padding import padded_forward

    spatial = tuple(image.shape[2:])
    windows = window_slices(spatial, window, overlap)
    gaussian = gaussian_weights(window_shape(spatial, window))
    weights = torch.from_numpy(gaussian).to(image.device)
    total = None
    for start in range(0, len(windows), batch_size):
        chosen = windows[start:start + batch_size]
        crops = torch.cat([image[(slice(None), slice(None), *w)] for w in chosen])
        with autocast():
            logits = padded_forward(network, crops)
        logits = logits.float() * weights
        if total is None:
            total = torch.zeros((1, logits.shape[1], *spatial), device=image.device)
        for w, piece in zip(chosen, logits):
            total[(0, slice(None), *w)] += piece
    return total / torch.from_numpy(weight_map(spatial, windows, gaussian)).to(image.device)


def evaluate_sums(network, samples: Sequence, device, num_classes: int, *, batch_size: int = 8,
                  autocast=contextlib.nullcontext, window: tuple[int, ...] | None = None) -> dict[str, float]:
    """Sum of per-image metrics over ``samples`` (plus ``count``); the network is left in eval mode.

    ``window``: predict each sample by sliding windows of this size (see the module docstring).
    """
    import torch

    from napari_lgms.models.padding import padded_forward
    from napari_lgms.training.losses import segmentation_loss

    keys = metric_keys(num_classes)
    totals = dict.fromkeys(keys, 0.0)
    totals["count"] = 0.0
    network.eval()
    by_shape: dict[tuple, list] = {}
    for sample in samples:
        by_shape.setdefault(tuple(sample.image.shape), []).append(sample)
    with torch.no_grad():
        for group in by_shape.values():
            for start in range(0, len(group), batch_size):
                batch = group[start:start + batch_size]
                images = torch.from_numpy(np.stack([s.image for s in batch])).to(device)
                masks = torch.from_numpy(np.stack([s.mask.astype(np.int64) for s in batch])).to(device)
                if window is None:
                    with autocast():
                        logits = padded_forward(network, images).float()
                else:
                    logits = torch.cat([sliding_window_logits(network, images[i:i + 1], window,
                                                              batch_size=batch_size, autocast=autocast)
                                        for i in range(len(batch))])
                for i, sample in enumerate(batch):
                    totals["loss"] += float(segmentation_loss(logits[i:i + 1], masks[i:i + 1]))
                    if num_classes == 1:
                        prediction = (logits[i, 0] > 0).cpu().numpy()
                        scores = binary_scores(prediction, sample.mask)
                        totals["iou"] += scores["iou"]
                        totals["dice"] += scores["dice"]
                    else:
                        prediction = logits[i].argmax(0).cpu().numpy()
                        per_class = class_dice(prediction, sample.mask, list(range(1, num_classes)))
                        totals["dice"] += float(np.mean(list(per_class.values())))
                        for label, value in per_class.items():
                            totals[f"dice_class_{label}"] += value
                    totals["count"] += 1
    return totals


def means(totals: dict[str, float]) -> dict[str, float]:
    count = max(totals.get("count", 0.0), 1.0)
    return {k: v / count for k, v in totals.items() if k != "count"}
