"""Window layouts for tiled / sliding-window inference, and their blending weights.

A layout covers an item of spatial shape ``S`` with windows of shape
``min(patch, S)`` per axis; neighbouring windows overlap by at least
``overlap`` of the window and are spread evenly, the last one flush with the
far edge. Predictions are blended with a Gaussian that peaks at the window
centre, so voxels near a window's border (where the network sees the least
context) count least.
"""
from __future__ import annotations

import math
from itertools import product

import numpy as np

DEFAULT_OVERLAP = 0.25  # share of a window its neighbours overlap (inference and validation)


def window_shape(item_shape: tuple[int, ...], patch_size: tuple[int, ...]) -> tuple[int, ...]:
    """The window size per axis: the patch, or the whole axis where the item is smaller."""
    return tuple(min(int(p), int(s)) for p, s in zip(patch_size, item_shape))


def axis_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets of windows of length ``window`` covering ``range(size)``.

    Consecutive windows overlap by at least ``overlap * window`` samples; the
    first starts at 0 and the last ends at ``size``.
    """
    if window >= size:
        return [0]
    step = max(1, int(window * (1.0 - overlap)))
    count = math.ceil((size - window) / step) + 1
    return [round(i * (size - window) / (count - 1)) for i in range(count)]


def window_slices(item_shape: tuple[int, ...], patch_size: tuple[int, ...],
                  overlap: float) -> list[tuple[slice, ...]]:
    """Every window of the layout, as one tuple of slices per spatial axis (C order)."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    shape = window_shape(item_shape, patch_size)
    per_axis = [axis_starts(s, w, overlap) for s, w in zip(item_shape, shape)]
    return [tuple(slice(start, start + w) for start, w in zip(starts, shape))
            for starts in product(*per_axis)]


def gaussian_weights(shape: tuple[int, ...], sigma_fraction: float = 0.125) -> np.ndarray:
    """Separable Gaussian of ``shape`` (float32), peak 1 at the centre, sigma = fraction of each side.

    Strictly positive everywhere, so every covered voxel has a non-zero weight.
    """
    weights = np.ones((), dtype=np.float64)
    for length in shape:
        centre = (length - 1) / 2.0
        sigma = max(length * sigma_fraction, 1e-3)
        profile = np.exp(-0.5 * ((np.arange(length) - centre) / sigma) ** 2)
        weights = np.multiply.outer(weights, profile)
    weights /= weights.max()
    return np.maximum(weights, 1e-12).astype(np.float32)


def weight_map(item_shape: tuple[int, ...], windows: list[tuple[slice, ...]],
               window_weights: np.ndarray) -> np.ndarray:
    """Sum of ``window_weights`` over every window: the normaliser of a blended item (float32)."""
    total = np.zeros(item_shape, dtype=np.float32)
    for window in windows:
        total[window] += window_weights
    return total
