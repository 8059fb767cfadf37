"""Clicks as network inputs: the view a click model sees and the prompt channels drawn in it.

Pure numpy, shared by the click session (:mod:`.session`), click training and the benchmark, so
all three feed the network the same way. Coordinates are image index coordinates per spatial axis
(a point ``(y, x)`` in 2D, ``(z, y, x)`` in 3D).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Click:
    """One click: where (image index coordinates per spatial axis) and whether it adds or removes."""

    position: tuple[float, ...]
    positive: bool = True


Box = tuple[tuple[int, int], ...]  # (start, stop) per spatial axis


def whole_box(shape: Sequence[int]) -> Box:
    return tuple((0, int(s)) for s in shape)


def window_box(shape: Sequence[int], centre: Sequence[float], size: Sequence[int]) -> Box:
    """A box of ``size`` pixels per axis (the whole axis where the image is smaller) centred on
    ``centre``, moved (not cut) to stay inside the image."""
    box = []
    for middle, length, extent in zip(centre, size, shape):
        length = min(int(length), int(extent))
        start = min(max(int(round(float(middle) + 0.5 - length / 2)), 0), int(extent) - length)
        box.append((start, start + length))
    return tuple(box)


def first_box(shape: Sequence[int], clicks: Sequence[Click], prompt, window: Sequence[int]) -> Box:
    """The view of the first clicks on an empty mask, as ``prompt.first_view`` says: the whole
    image, or a ``window`` (pixels per axis, see :func:`first_window`) centred on the clicks."""
    if prompt.first_view == "whole" or not clicks:
        return whole_box(shape)
    return window_box(shape, np.mean([c.position for c in clicks], axis=0), window)


def first_window(patch: Sequence[int], model_spacing: Sequence[float] | None,
                 spacing: Sequence[float] | None) -> tuple[int, ...]:
    """The image pixels per axis a "window" first view covers: the model's patch at the model's
    spacing (the same physical extent), or ``patch`` pixels when either spacing is unknown."""
    from napari_lgms.inference.geometry import resampled_shape

    patch = tuple(int(p) for p in patch)
    return resampled_shape(patch, model_spacing, spacing) or patch  # the patch, seen from the image's grid


def zoom_box(shape: Sequence[int], mask: np.ndarray | None, clicks: Sequence[Click], expansion: float,
             min_crop: float) -> Box:
    """The crop a click model predicts in after its first click (as FocalClick's zoom-in): the
    bounding box of the mask's foreground and of every click, ``expansion`` times larger around its
    centre, at least ``min_crop`` of the image per axis, moved (not cut) to stay inside the image."""
    points = [np.asarray(c.position, float) for c in clicks]
    if mask is not None and mask.any():
        nonzero = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
                   for axis in range(mask.ndim)]
        points += [np.array([n[0] for n in nonzero], float), np.array([n[-1] for n in nonzero], float)]
    if not points:
        return whole_box(shape)
    low, high = np.min(points, axis=0), np.max(points, axis=0) + 1
    box = []
    for lo, hi, size in zip(low, high, shape):
        length = min(float(size), max((hi - lo) * expansion, min_crop * size, 1.0))
        start = min(max((lo + hi - length) / 2, 0.0), size - length)
        box.append((int(np.floor(start)), int(min(size, np.ceil(start + length)))))
    return tuple(box)


def prompt_maps(box: Box, grid: Sequence[int], clicks: Sequence[Click], previous: np.ndarray | None,
                channels: Sequence[str], radius: float) -> np.ndarray:
    """The prompt channels (P, *grid) float32 of the view ``box`` resized to ``grid``.

    "positive" / "negative": 1 within ``radius`` grid pixels of a click of that kind inside the
    view; "previous": ``previous`` (the mask in image coordinates, any shape matching the image)
    cut to the box and resized to the grid (nearest), or 0 without one.
    """
    grid = tuple(int(g) for g in grid)
    scale = np.array([g / (b[1] - b[0]) for g, b in zip(grid, box)])
    start = np.array([b[0] for b in box], float)
    coordinates = np.stack(np.meshgrid(*[np.arange(g, dtype=np.float32) + 0.5 for g in grid], indexing="ij"))
    maps = np.zeros((len(channels), *grid), np.float32)
    for index, name in enumerate(channels):
        if name == "previous":
            if previous is not None:
                maps[index] = resize_nearest(previous[tuple(slice(a, b) for a, b in box)], grid)
            continue
        for click in clicks:
            if click.positive != (name == "positive"):
                continue
            centre = (np.asarray(click.position, float) + 0.5 - start) * scale
            distance = np.sqrt(sum((coordinates[a] - centre[a]) ** 2 for a in range(len(grid))))
            maps[index][distance <= radius] = 1.0
    return maps


def resize_nearest(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``array`` (*S) resampled to ``shape`` by nearest neighbour (pixel centres), as float32."""
    index = tuple(np.minimum(((np.arange(n) + 0.5) * s / n).astype(int), s - 1) for n, s in zip(shape, array.shape))
    return np.asarray(array[np.ix_(*index)], np.float32)
