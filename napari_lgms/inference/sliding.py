"""The one windowed predictor: inference, validation, fine-tuning and teachers all predict through it.

:func:`sliding_window_steps` covers each item of a (N, C, *S) batch with the windows of
:func:`~napari_lgms.inference.windows.window_slices`, runs any *predictor* (a callable
(B, C, *w) -> (B, K, *w) logits: a network wrapped by :func:`network_predictor`, an ONNX session,
a resizing wrapper) on batches of windows, and blends the windows' logits with Gaussian weights.
As in MONAI's ``sliding_window_inference``, the windows run on the predictor's device and the
blended result is gathered on ``output_device``, so a volume larger than a GPU's memory only needs
its windows there.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from typing import Callable, Generator, Sequence

import numpy as np

from napari_lgms.inference.windows import (DEFAULT_OVERLAP, gaussian_weights, weight_map, window_shape,
                                           window_slices)


def network_predictor(network, *, flips: Sequence[tuple[int, ...]] = ((),), divisor: int | None = None,
                      autocast: Callable = contextlib.nullcontext) -> Callable:
    """A predictor for ``network``: (B, C, *w) -> (B, K, *w) float logits, without gradients,
    padded to the network's size divisor (or ``divisor``) and averaged over ``flips``
    (:func:`napari_lgms.inference.augment.flip_sets`)."""
    import torch

    from napari_lgms.inference.augment import average_over_flips
    from napari_lgms.models.padding import padded_forward

    def forward(batch):
        with autocast():
            return padded_forward(network, batch, divisor)

    def predict(batch):
        with torch.no_grad():
            return average_over_flips(forward, batch, list(flips))

    return predict


def sliding_window_steps(inputs, window: Sequence[int], predictor: Callable, *,
                         overlap: float = DEFAULT_OVERLAP, batch_size: int = 4, window_device=None,
                         output_device=None, should_stop: Callable[[], bool] | None = None,
                         ) -> Generator[tuple[int, int], None, object]:
    """Blend ``predictor``'s logits over the windows of every item of ``inputs``, step by step.

    ``inputs``: (N, C, *S) tensor. ``window``: the window shape (clipped to S per axis).
    ``batch_size``: windows per predictor call (windows of several items share a batch).
    ``window_device``: where the windows go (default: where ``inputs`` are); ``output_device``:
    where the result is gathered (default: where ``inputs`` are).
    Yields ``(batches done, batches in all)`` after each batch and returns the (N, K, *S) float32
    logits, or None when ``should_stop()`` said to stop. One window covering a whole item is
    returned as predicted, without blending weights.
    """
    import torch

    spatial = tuple(inputs.shape[2:])
    window_device = inputs.device if window_device is None else window_device
    output_device = inputs.device if output_device is None else output_device
    layout = window_slices(spatial, tuple(window), overlap)
    blend = len(layout) > 1
    gaussian = gaussian_weights(window_shape(spatial, tuple(window))) if blend else None
    weights = torch.from_numpy(gaussian).to(window_device) if blend else None
    work = [(n, w) for n in range(inputs.shape[0]) for w in layout]
    batches = [work[i:i + max(1, int(batch_size))] for i in range(0, len(work), max(1, int(batch_size)))]
    total = None
    for done, batch in enumerate(batches, 1):
        if should_stop is not None and should_stop():
            return None
        crops = torch.stack([inputs[n][(slice(None), *w)] for n, w in batch]).to(window_device)
        logits = predictor(crops).float()
        if blend:
            logits = logits * weights.to(logits.device)
        logits = logits.to(output_device)
        if total is None:
            total = torch.zeros((inputs.shape[0], logits.shape[1], *spatial), dtype=torch.float32,
                                device=output_device)
        for (n, w), piece in zip(batch, logits):
            total[(n, slice(None), *w)] += piece
        yield done, len(batches)
    if blend:
        total /= torch.from_numpy(weight_map(spatial, layout, gaussian)).to(output_device)
    return total


def sliding_window_inference(inputs, window: Sequence[int], predictor: Callable, **options):
    """:func:`sliding_window_steps` run to the end: the (N, K, *S) float32 logits."""
    from napari_lgms._generators import run_to_end

    return run_to_end(sliding_window_steps(inputs, window, predictor, **options))


def streamed_window_steps(item, window: Sequence[int], predictor: Callable, prepare: Callable,
                          finish: Callable, *, overlap: float = DEFAULT_OVERLAP, batch_size: int = 4,
                          window_device=None) -> Generator[tuple[int, int], None, None]:
    """:func:`sliding_window_steps` for one item too large to hold whole as float32 inputs and logits.

    ``item``: (C, *S) array in its own dtype; each window is cut from it and made a network input by
    ``prepare`` ((C, *w) array -> float32 array). The blended logits are kept only for the rows (of
    the first spatial axis) that windows still to come overlap: as soon as rows are complete they go
    to ``finish(rows, logits)`` (a slice of the first axis, a (K, len(rows), *S[1:]) float32 CPU
    tensor), in order. Yields ``(batches done, batches in all)``.
    """
    import torch

    spatial = tuple(item.shape[1:])
    shape = window_shape(spatial, tuple(window))
    layout = window_slices(spatial, tuple(window), overlap)
    gaussian = torch.from_numpy(gaussian_weights(shape))
    device_weights = gaussian.to(window_device) if window_device is not None else gaussian
    # The layout is in C order: consecutive windows share their first-axis start, row by row.
    groups = [list(row) for _, row in itertools.groupby(layout, key=lambda w: w[0].start)]
    starts = [group[0][0].start for group in groups]
    size = max(1, int(batch_size))
    total = sum(math.ceil(len(group) / size) for group in groups)
    done, low, logits_sum, weight_sum = 0, 0, None, None  # the sums cover rows low, low + 1, ...
    for index, group in enumerate(groups):
        for first in range(0, len(group), size):
            batch = group[first:first + size]
            crops = torch.from_numpy(np.stack([prepare(item[(slice(None), *w)]) for w in batch]))
            logits = predictor(crops.to(device_weights.device)).float()
            logits = (logits * device_weights.to(logits.device)).cpu()
            reach = max(w[0].stop for w in batch) - low
            logits_sum = _grown(logits_sum, (logits.shape[1], reach, *spatial[1:]), 1)
            weight_sum = _grown(weight_sum, (reach, *spatial[1:]), 0)
            for w, piece in zip(batch, logits):
                rows = slice(w[0].start - low, w[0].stop - low)
                logits_sum[(slice(None), rows, *w[1:])] += piece
                weight_sum[(rows, *w[1:])] += gaussian
            done += 1
            yield done, total
        complete = (starts[index + 1] if index + 1 < len(starts) else spatial[0]) - low
        if complete > 0:
            finish(slice(low, low + complete), logits_sum[:, :complete] / weight_sum[:complete])
            logits_sum, weight_sum = logits_sum[:, complete:].clone(), weight_sum[complete:].clone()
            low += complete


def _grown(buffer, shape: tuple[int, ...], axis: int):
    """``buffer`` (a float32 CPU tensor, or None) with zeros appended along ``axis`` up to ``shape``."""
    import torch

    if buffer is None:
        return torch.zeros(shape, dtype=torch.float32)
    missing = shape[axis] - buffer.shape[axis]
    if missing <= 0:
        return buffer
    extra = list(buffer.shape)
    extra[axis] = missing
    return torch.cat([buffer, torch.zeros(extra, dtype=torch.float32)], dim=axis)
