"""Segmentation metrics, computed per image as the LGMSNet paper does.

Binary: prediction and target are foreground where > 0. IoU = (|P∩G| + eps) /
(|P∪G| + eps) with eps = 1e-5, so two empty masks score 1; Dice (= F1 for
binary masks) = 2·IoU / (1 + IoU), the paper's formula, equal to
2|P∩G| / (|P| + |G|) up to eps. Averages are over images.
"""
from __future__ import annotations

import numpy as np

from napari_lgms.errors import InputError

EPS = 1e-5


def _same_shape(prediction: np.ndarray, target: np.ndarray) -> None:
    if prediction.shape != target.shape:
        raise InputError(
            f"prediction shape {prediction.shape} does not match mask shape {target.shape}"
        )


def binary_scores(prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """IoU and Dice of two masks of equal shape (any dims); foreground is > 0."""
    _same_shape(prediction, target)
    pred = np.asarray(prediction) > 0
    true = np.asarray(target) > 0
    intersection = float(np.logical_and(pred, true).sum())
    union = float(np.logical_or(pred, true).sum())
    iou = (intersection + EPS) / (union + EPS)
    return {"iou": iou, "dice": 2 * iou / (1 + iou)}


def class_dice(prediction: np.ndarray, target: np.ndarray, labels: list[int]) -> dict[int, float]:
    """Dice per label value; a label absent from both masks scores 1."""
    _same_shape(prediction, target)
    scores = {}
    for label in labels:
        pred = prediction == label
        true = target == label
        denominator = float(pred.sum() + true.sum())
        scores[int(label)] = 1.0 if denominator == 0 else 2.0 * float(np.logical_and(pred, true).sum()) / denominator
    return scores


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    """Average every numeric key over rows (per-image means)."""
    if not rows:
        return {}
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float))]
    return {k: float(np.mean([row[k] for row in rows])) for k in keys}
