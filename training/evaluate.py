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
                          batch_size: int = 4, autocast=contextlib.nullcontext, flips=((),)):
    """(N, C, *S) tensor -> (N, K, *S) float32 logits, blended over windows of ``window`` (clipped to S)
    as the inference engine blends them (:func:`napari_lgms.inference.sliding.sliding_window_inference`)."""
    from napari_lgms.inference.sliding import network_predictor, sliding_window_inference

    return sliding_window_inference(image, window, network_predictor(network, flips=flips, autocast=autocast),
                                    overlap=overlap, batch_size=batch_size)


def score_samples(network, samples: Sequence, device, num_classes: int, *, batch_size: int = 8,
                  autocast=contextlib.nullcontext, window: tuple[int, ...] | None = None,
                  flips: Sequence[tuple[int, ...]] = ((),)) -> list[dict[str, float]]:
    """Per-sample metrics (``metric_keys``), in the order of ``samples``; the network is left in eval mode.

    ``window``: predict each sample by sliding windows of this size (see the module docstring);
    ``flips``: average the logits over these flips (:func:`napari_lgms.inference.augment.flip_sets`).
    """
    import torch

    from napari_lgms.inference.sliding import network_predictor
    from napari_lgms.training.losses import segmentation_loss

    predict = network_predictor(network, flips=flips, autocast=autocast)

    def forward(images):
        if window is None:
            return predict(images)
        return sliding_window_logits(network, images, window, batch_size=batch_size, autocast=autocast,
                                     flips=flips)

    network.eval()
    by_shape: dict[tuple, list[int]] = {}
    for index, sample in enumerate(samples):
        by_shape.setdefault(tuple(sample.image.shape), []).append(index)
    rows: list[dict[str, float]] = [{} for _ in samples]
    with torch.no_grad():
        for indices in by_shape.values():
            for start in range(0, len(indices), batch_size):
                chosen = indices[start:start + batch_size]
                batch = [samples[i] for i in chosen]
                images = torch.from_numpy(np.stack([s.image for s in batch])).to(device)
                masks = torch.from_numpy(np.stack([s.mask.astype(np.int64) for s in batch])).to(device)
                logits = forward(images)
                for i, (index, sample) in enumerate(zip(chosen, batch)):
                    row = {"loss": float(segmentation_loss(logits[i:i + 1], masks[i:i + 1]))}
                    if num_classes == 1:
                        row.update(binary_scores((logits[i, 0] > 0).cpu().numpy(), sample.mask))
                    else:
                        per_class = class_dice(logits[i].argmax(0).cpu().numpy(), sample.mask,
                                               list(range(1, num_classes)))
                        row["dice"] = float(np.mean(list(per_class.values())))
                        row.update({f"dice_class_{label}": value for label, value in per_class.items()})
                    rows[index] = {key: row[key] for key in metric_keys(num_classes)}
    return rows


def evaluate_sums(network, samples: Sequence, device, num_classes: int, *, batch_size: int = 8,
                  autocast=contextlib.nullcontext, window: tuple[int, ...] | None = None) -> dict[str, float]:
    """Sum of per-image metrics over ``samples`` (plus ``count``), from :func:`score_samples`."""
    rows = score_samples(network, samples, device, num_classes, batch_size=batch_size, autocast=autocast,
                         window=window)
    totals = {key: float(sum(row[key] for row in rows)) for key in metric_keys(num_classes)}
    totals["count"] = float(len(rows))
    return totals


def means(totals: dict[str, float]) -> dict[str, float]:
    count = max(totals.get("count", 0.0), 1.0)
    return {k: v / count for k, v in totals.items() if k != "count"}
