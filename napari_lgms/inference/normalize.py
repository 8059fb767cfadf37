"""Intensity normalisation, as a model card's ``normalization`` entry says.

Shared by inference and training so both see the same numbers. Every function
takes a float array (C, *spatial) and returns float32 of the same shape.

Kinds (``spec["kind"]``):

``percentile_zscore`` (default)
    per channel, clip to the ``lower``/``upper`` percentiles (0.5/99.5), then
    subtract the mean and divide by the standard deviation.
``zscore``
    per channel mean/std, no clipping.
``imagenet``
    divide by ``max_value`` (255) then ImageNet mean/std per channel
    (3 channels; a single channel is repeated by the caller beforehand).
``range``
    divide by ``max_value``: 8-bit photographs to [0, 1].
``window``
    CT windowing: clip to [``low``, ``high``] (Hounsfield units), rescale to [0, 1].
``minmax``
    per channel rescale of the image's own range to [0, 1].
"""
from __future__ import annotations

import numpy as np

from napari_lgms.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINDS = ("percentile_zscore", "zscore", "imagenet", "range", "window", "minmax")


def check_finite(array: np.ndarray) -> None:
    """Refuse NaN or infinite intensities with one clear line."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(
            f"image has {bad} NaN or infinite value(s); replace them (e.g. with 0) before segmenting"
        )


def normalize(image: np.ndarray, spec: dict | None) -> np.ndarray:
    """Normalise ``image`` (C, *spatial), any real dtype, to float32 per ``spec``."""
    spec = dict(spec or {"kind": "percentile_zscore"})
    kind = spec.get("kind", "percentile_zscore")
    if kind not in KINDS:
        raise InputError(f"unknown normalisation {kind!r}; accepted: {', '.join(KINDS)}")
    check_finite(image)
    data = np.asarray(image, dtype=np.float32)
    if data.ndim < 2:
        raise InputError(f"expected a (C, *spatial) array, got shape {data.shape}")
    if kind == "range":
        return data / np.float32(spec.get("max_value", 255.0))
    if kind == "window":
        low, high = float(spec["low"]), float(spec["high"])
        return (np.clip(data, low, high) - low) / np.float32(high - low)
    if kind == "imagenet":
        mean = np.asarray(spec.get("mean", IMAGENET_MEAN), np.float32)
        std = np.asarray(spec.get("std", IMAGENET_STD), np.float32)
        if data.shape[0] != mean.size:
            raise InputError(f"imagenet normalisation needs {mean.size} channels, got {data.shape[0]}")
        scaled = data / np.float32(spec.get("max_value", 255.0))
        shape = (-1,) + (1,) * (data.ndim - 1)
        return (scaled - mean.reshape(shape)) / std.reshape(shape)
    out = np.empty_like(data)
    for c, channel in enumerate(data):
        if kind == "minmax":
            low, high = float(channel.min()), float(channel.max())
            out[c] = (channel - low) / max(high - low, 1e-8)
            continue
        if kind == "percentile_zscore":
            low, high = np.percentile(channel, [spec.get("lower", 0.5), spec.get("upper", 99.5)])
            channel = np.clip(channel, low, high)
        mean, std = float(channel.mean()), float(channel.std())
        out[c] = (channel - mean) / max(std, 1e-8)
    return out
