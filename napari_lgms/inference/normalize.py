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

import math

import numpy as np

from napari_lgms._words import counted
from napari_lgms.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINDS = ("percentile_zscore", "zscore", "imagenet", "range", "window", "minmax")
STATISTICS_SAMPLE = 1 << 24  # voxels per channel the statistics are computed from, at most


def check_finite(array: np.ndarray) -> None:
    """Refuse NaN or infinite intensities with one clear line."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(
            f"image has {counted(bad, 'NaN or infinite value')}; replace them (e.g. with 0) before segmenting"
        )


def normalize(image: np.ndarray, spec: dict | None) -> np.ndarray:
    """Normalise ``image`` (C, *spatial), any real dtype, to float32 per ``spec``."""
    return fit_normalizer(image, spec)(image)


def fit_normalizer(image: np.ndarray, spec: dict | None):
    """The normalisation ``spec`` gives ``image`` (C, *spatial), as a function that applies it to any
    block of ``image`` (C, *block) -> float32: a large image is normalised window by window.

    Statistics (percentiles, mean, spread, range) come from the whole image, or from an even grid of
    at most :data:`STATISTICS_SAMPLE` voxels per channel when it is larger.
    """
    spec = dict(spec or {"kind": "percentile_zscore"})
    kind = spec.get("kind", "percentile_zscore")
    if kind not in KINDS:
        raise InputError(f"unknown normalisation {kind!r}; accepted: {', '.join(KINDS)}")
    check_finite(image)
    if np.ndim(image) < 2:
        raise InputError(f"expected a (C, *spatial) array, got shape {np.shape(image)}")
    if kind == "range":
        scale = np.float32(spec.get("max_value", 255.0))
        return lambda block: np.asarray(block, dtype=np.float32) / scale
    if kind == "window":
        low, high = float(spec["low"]), float(spec["high"])
        return lambda block: (np.clip(np.asarray(block, dtype=np.float32), low, high) - low) / np.float32(high - low)
    if kind == "imagenet":
        mean = np.asarray(spec.get("mean", IMAGENET_MEAN), np.float32)
        std = np.asarray(spec.get("std", IMAGENET_STD), np.float32)
        if image.shape[0] != mean.size:
            raise InputError(f"imagenet normalisation needs {mean.size} channels, got {image.shape[0]}")
        scale = np.float32(spec.get("max_value", 255.0))
        shape = (-1,) + (1,) * (image.ndim - 1)
        return lambda block: (np.asarray(block, dtype=np.float32) / scale - mean.reshape(shape)) / std.reshape(shape)
    channels = [_channel_transform(_sample(channel), kind, spec) for channel in image]

    def apply(block: np.ndarray) -> np.ndarray:
        data = np.asarray(block, dtype=np.float32)
        out = np.empty_like(data)
        for c, (channel, transform) in enumerate(zip(data, channels)):
            out[c] = transform(channel)
        return out

    return apply


def _sample(channel: np.ndarray) -> np.ndarray:
    """``channel`` as float32, or an even grid of about :data:`STATISTICS_SAMPLE` of its voxels."""
    stride = math.ceil((channel.size / STATISTICS_SAMPLE) ** (1.0 / channel.ndim)) if channel.size else 1
    if stride > 1:
        channel = channel[(slice(None, None, stride),) * channel.ndim]
    return np.asarray(channel, dtype=np.float32)


def _channel_transform(channel: np.ndarray, kind: str, spec: dict):
    """The per-channel transform of ``kind`` with statistics from ``channel`` (float32)."""
    if kind == "minmax":
        low, high = float(channel.min()), float(channel.max())
        return lambda values: (values - low) / max(high - low, 1e-8)
    if kind == "percentile_zscore":
        low, high = np.percentile(channel, [spec.get("lower", 0.5), spec.get("upper", 99.5)])
        channel = np.clip(channel, low, high)
        mean, std = float(channel.mean()), float(channel.std())
        return lambda values: (np.clip(values, low, high) - mean) / max(std, 1e-8)
    mean, std = float(channel.mean()), float(channel.std())
    return lambda values: (values - mean) / max(std, 1e-8)
