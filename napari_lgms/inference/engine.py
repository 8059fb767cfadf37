"""The segmentation engine: one generator serves the CLI, the Python API and napari workers.

:func:`segment_steps` does the work in small steps (normalising one item,
running one batch of windows) and yields :class:`Progress` after each of them
(consumers throttle: :func:`napari_lgms._generators.throttled`). It
returns the :class:`SegmentationResult` through ``StopIteration.value``, or
``None`` when ``should_stop()`` said to stop; ``gen.close()`` also stops it,
since no work happens unless the generator is resumed. :func:`segment` runs it
to the end.

Pipeline, for an image with spatial shape S (channel axis removed):

1. checks and channel handling (:mod:`napari_lgms.inference.geometry`);
2. optional ROI crop, with a margin of context;
3. *items*: a 2D image or a 3D volume for a model of its dimension is one item;
   a volume under a 2D model is one item per slice along ``slice_axis``;
4. per-item normalisation as the model card says;
5. resampling to the card's spacing (window modes, when both spacings are known);
6. prediction through :mod:`napari_lgms.inference.sliding`: "resize" (whole item
   resized to the patch, logits resized back) or windows of the patch size
   blended with Gaussian weights into one (N, K, *grid) float32 logit sum
   ("tile" / "sliding_window"; "resize" falls back to tiling when the item
   exceeds twice the patch in some axis); with test-time augmentation each
   batch is run once per flip set and averaged. Items whose float32 inputs and
   logits would exceed :data:`STREAM_BYTES` (a 20000 x 20000 slide) are
   streamed instead: each window is normalised as it is cut, and rows are
   activated as soon as no later window overlaps them, so memory holds the
   image, its labels and a band of logits;
7. logits resampled back to the item grid, activation, labels, ROI paste.
"""
from __future__ import annotations

import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Generator

import numpy as np

from napari_lgms.errors import InputError, LgmsError
from napari_lgms.inference import augment, geometry, windows
from napari_lgms.inference.normalize import normalize

MAX_GRID_BYTES = 8 * 2**30  # inputs plus logits on the model's grid, float32
STREAM_BYTES = 2**30  # float32 inputs plus logits beyond which items are predicted window by window
RESIZE_LIMIT = 2.0  # "resize" mode tiles instead when an axis exceeds this many patches
# (unless the card's input.max_resize_factor, from the sizes the model was trained on, says more)
# Voxels per forward batch, by device type: the batch holds about this many input voxels.
BATCH_VOXELS = {"cpu": 4 * 256 * 256, "mps": 8 * 256 * 256, "cuda": 32 * 256 * 256}
MAX_BATCH = 64


@dataclass
class Progress:
    """``done`` of ``total`` steps finished; ``message`` says what is being done."""

    done: int
    total: int
    message: str = ""


@dataclass
class SegmentationResult:
    """What :func:`segment` returns.

    ``labels``: the spatial shape of the input (channel axis removed), uint8
    (uint16 beyond 255 labels); 0 is background. With ``slice_index`` on a
    volume it is that one 2D slice. With a ROI, zero outside the ROI.
    ``probabilities``: float32, (K, *spatial) for softmax (and multi-label
    sigmoid), (*spatial) foreground probability for a one-output sigmoid;
    None unless asked for. Outside a ROI: 0 (softmax background: 1).
    ``roi``: the ROI actually used (clipped to the image), or None.
    ``test_time_augmentation``: what was used ("none" | "flips"), the card's default resolved.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    seconds: float
    device: str
    roi: tuple[tuple[int, int], ...] | None
    test_time_augmentation: str = "none"


@dataclass
class _Plan:
    resize_to: tuple[int, ...] | None  # the patch size in "resize" mode, else None
    patch: tuple[int, ...]
    grid: tuple[int, ...]  # item shape after resampling to the model spacing
    windows: list[tuple[slice, ...]]
    batch_size: int


def segment(image, model, **kwargs) -> SegmentationResult | None:
    """Segment ``image`` with ``model`` (a LoadedModel or a model name); the arguments of :func:`segment_steps`.

    Returns None only when ``should_stop`` stopped it.
    """
    from napari_lgms._generators import run_to_end

    return run_to_end(segment_steps(image, model, **kwargs))


def loaded_model(model):
    """``model`` when it is a LoadedModel; a model name or card path is loaded; anything else is an InputError."""
    if isinstance(model, (str, os.PathLike)):
        from napari_lgms.zoo import load_model

        return load_model(model)
    if not (hasattr(model, "card") and hasattr(model, "network")):
        raise InputError(f"model must be a model name, a path to a model card, or a LoadedModel from "
                         f"napari_lgms.load_model; got {type(model).__name__}")
    return model


def segment_steps(
    image,
    model,
    *,
    channel_axis: int | str | None = "auto",
    spacing=None,
    roi=None,
    slice_axis: int = 0,
    slice_index: int | None = None,
    probabilities: bool = False,
    batch_size: int | None = None,
    device=None,
    overlap: float = windows.DEFAULT_OVERLAP,
    test_time_augmentation: str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[Progress, None, SegmentationResult | None]:
    """Segment ``image`` step by step, yielding :class:`Progress`; see the module docstring.

    ``image``: any real array, 2D, 2D + channels, 3D or 3D + channels.
    ``channel_axis``: "auto" (see :func:`geometry.find_channel_axis`), None or an axis.
    ``spacing``: per spatial axis (image order), used with the card's spacing.
    ``roi``: ((start, stop), ...) per spatial axis, image index coordinates.
    ``slice_axis``: the spatial axis a 2D model walks through a volume;
    ``slice_index``: segment that slice only (result is 2D; ignored for 2D images).
    ``device``: None (the network's device), "auto", "cpu", "cuda", "mps" or a torch.device.
    ``test_time_augmentation``: "none", "flips" (see :mod:`napari_lgms.inference.augment`),
    or None / "auto" for the model card's default.
    Returns the result, or None when ``should_stop()`` returned True.
    """
    started = time.perf_counter()
    model = loaded_model(model)
    card = model.card
    network = model.network
    if not 0.0 <= float(overlap) < 1.0:
        raise InputError(f"overlap must be in [0, 1), got {overlap}")
    test_time_augmentation = augment.resolve(test_time_augmentation, card)
    flips = augment.flip_sets(test_time_augmentation, card.spatial_dims)
    torch_device = _resolve_device(device, network)
    if _device_of(network) != torch_device:
        network.to(torch_device)
    network.eval()

    array = geometry.check_image(image)
    axis = geometry.find_channel_axis(array.shape, channel_axis, card.spatial_dims, card.image_channels)
    data = geometry.channels_first(array, axis)
    spatial_shape = tuple(data.shape[1:])
    spacing = geometry.check_spacing(spacing, spatial_shape)
    if len(spatial_shape) not in (2, 3):
        raise InputError(f"image has {len(spatial_shape)} spatial axis/axes (shape {array.shape}); accepted: "
                         f"{geometry.ACCEPTED_SHAPES}")
    if card.spatial_dims == 3 and len(spatial_shape) != 3:
        raise InputError(f"{card.name} is a 3D model and needs a 3D volume; the image has spatial shape {spatial_shape}")
    slicing = card.spatial_dims == 2 and len(spatial_shape) == 3
    if slicing:
        slice_axis = _check_axis(slice_axis, 3, "slice_axis")
    if slice_index is not None and len(spatial_shape) == 3:
        if card.spatial_dims == 3:
            raise InputError("slice_index applies to 2D models on volumes only; this is a 3D model")
        if not -spatial_shape[slice_axis] <= int(slice_index) < spatial_shape[slice_axis]:
            raise InputError(f"slice_index {slice_index} is outside 0:{spatial_shape[slice_axis]} on axis {slice_axis}")
        data = np.take(data, int(slice_index), axis=1 + slice_axis)
        if roi is not None and len(roi) == 3:
            roi = tuple(r for i, r in enumerate(roi) if i != slice_axis)
        if spacing is not None:
            spacing = tuple(s for i, s in enumerate(spacing) if i != slice_axis)
        spatial_shape, slicing = tuple(data.shape[1:]), False

    used_roi = geometry.check_roi(roi, spatial_shape) if roi is not None else None
    if used_roi is not None:
        box = geometry.crop_box(used_roi, spatial_shape, (slice_axis,) if slicing else ())
        data = data[(slice(None),) + box]
    data = geometry.match_channels(data, card.image_channels)

    if slicing:
        items = np.moveaxis(data, 1 + slice_axis, 0)
        item_spacing = None if spacing is None else tuple(s for i, s in enumerate(spacing) if i != slice_axis)
    else:
        items = data[np.newaxis]
        item_spacing = spacing
    plan = _plan(items, item_spacing, card, overlap, batch_size, torch_device)

    from napari_lgms.inference.fast import inference_network

    fast = inference_network(network, torch_device)
    if card.prompt is not None:  # a click model without clicks: its parent's prediction
        from napari_lgms.clicks.network import WithoutPrompts

        fast = WithoutPrompts(fast, len(card.prompt.channels))
    predictor = _BatchedForward(fast, _size_divisor(network, card), torch_device, flips)
    if _streams(items, plan, card):
        outcome = yield from _streamed(items, plan, card, predictor, overlap, probabilities, should_stop)
    else:
        outcome = yield from _whole(items, plan, card, predictor, overlap, probabilities, should_stop)
    if outcome is None:
        return None
    labels, probs, total = outcome

    if slicing:
        labels = np.moveaxis(labels, 0, slice_axis)
        if probs is not None:
            if probs.ndim == 3:  # (N, H, W) foreground probability
                probs = np.moveaxis(probs, 0, slice_axis)
            else:  # (N, K, H, W) -> (K, *spatial)
                probs = np.moveaxis(np.moveaxis(probs, 1, 0), 1, 1 + slice_axis)
    else:
        labels = labels[0]
        if probs is not None:
            probs = probs[0]
    if used_roi is not None:
        labels, probs = _paste(labels, probs, used_roi, box, spatial_shape, card)
    yield Progress(total, total, "done")
    return SegmentationResult(
        labels=np.ascontiguousarray(labels),
        probabilities=None if probs is None else np.ascontiguousarray(probs, dtype=np.float32),
        seconds=time.perf_counter() - started,
        device=str(torch_device),
        roi=used_roi,
        test_time_augmentation=test_time_augmentation,
    )


def _whole(items, plan: "_Plan", card, predictor, overlap: float, probabilities: bool, should_stop):
    """Predict every item at once: normalise all, resample, blend the windows, activate.

    Returns (labels (N, *item shape), probabilities or None, the reports' total), or None when stopped."""
    import torch

    from napari_lgms.inference.sliding import sliding_window_steps

    batches = math.ceil(items.shape[0] * len(plan.windows) / plan.batch_size)
    resampling = plan.grid != tuple(items.shape[2:])
    total = items.shape[0] + int(resampling) + batches
    done = 0
    yield Progress(0, total, "normalising")
    normalized = np.empty(items.shape, dtype=np.float32)
    for n in range(items.shape[0]):
        if should_stop is not None and should_stop():
            return None
        normalized[n] = normalize(items[n], card.normalization)
        done += 1
        yield Progress(done, total, "normalising")
    inputs = torch.from_numpy(normalized)
    if resampling:
        if should_stop is not None and should_stop():
            return None
        inputs = geometry.resize(inputs, plan.grid)
        done += 1
    window = plan.grid
    if plan.resize_to is not None:  # the whole item, resized to the patch and its logits back
        predictor = _Resized(predictor, plan.resize_to, plan.grid)
    else:
        window = windows.window_shape(plan.grid, plan.patch)
    steps = sliding_window_steps(inputs, window, predictor, overlap=overlap, batch_size=plan.batch_size,
                                 window_device=predictor.device, output_device=torch.device("cpu"),
                                 should_stop=should_stop)
    while True:
        try:
            batch, batches = next(steps)
        except StopIteration as finished:
            logit_sum = finished.value
            break
        yield Progress(done + batch, total, f"batch {batch} of {batches}")
    if logit_sum is None:
        return None
    del inputs, normalized
    if resampling:
        logit_sum = geometry.resize(logit_sum, tuple(items.shape[2:]))
    return (*_activate(logit_sum, card, probabilities), total)


def _streams(items, plan: "_Plan", card) -> bool:
    """Whether to predict item by item and window by window (:func:`_streamed`): windows, no
    resampling, and float32 inputs plus logits of all items over :data:`STREAM_BYTES`."""
    needed = 4 * items.shape[0] * (items.shape[1] + card.num_classes) * math.prod(items.shape[2:])
    return plan.resize_to is None and plan.grid == tuple(items.shape[2:]) and needed > STREAM_BYTES


def _streamed(items, plan: "_Plan", card, predictor, overlap: float, probabilities: bool, should_stop):
    """Predict one item at a time, normalising each window as it is cut and activating rows as soon
    as they are complete: memory holds the image, the labels, and a band of rows of logits.

    Returns (labels (N, *item shape), probabilities or None, the reports' total), or None when stopped."""
    from napari_lgms.inference.normalize import fit_normalizer
    from napari_lgms.inference.sliding import streamed_window_steps

    window = windows.window_shape(plan.grid, plan.patch)
    rows = Counter(w[0].start for w in plan.windows)  # the windows are batched row by row
    per_item = sum(math.ceil(count / plan.batch_size) for count in rows.values())
    total = items.shape[0] * (per_item + 1)
    outputs: dict[str, np.ndarray] = {}
    yield Progress(0, total, "normalising")
    for n in range(items.shape[0]):
        if should_stop is not None and should_stop():
            return None
        prepare = fit_normalizer(items[n], card.normalization)
        done = n * (per_item + 1) + 1

        def finish(rows, logits, n=n):
            labels, probs = _activate(logits[None], card, probabilities)
            if not outputs:
                outputs["labels"] = np.zeros(items.shape[:1] + items.shape[2:], dtype=labels.dtype)
                if probs is not None:
                    channels = probs.shape[1:2] if probs.ndim > labels.ndim else ()
                    outputs["probs"] = np.zeros(items.shape[:1] + channels + items.shape[2:], np.float32)
            outputs["labels"][n, rows] = labels[0]
            if probs is not None and probs.ndim == labels.ndim:  # (1, rows, ...) foreground probability
                outputs["probs"][n, rows] = probs[0]
            elif probs is not None:  # (1, K, rows, ...)
                outputs["probs"][n, :, rows] = probs[0]

        steps = streamed_window_steps(items[n], window, predictor, prepare, finish, overlap=overlap,
                                      batch_size=plan.batch_size, window_device=predictor.device)
        for batch, batches in steps:
            if should_stop is not None and should_stop():
                return None
            yield Progress(done + batch, total, f"batch {batch} of {batches}" +
                           (f", item {n + 1} of {items.shape[0]}" if items.shape[0] > 1 else ""))
    return outputs["labels"], outputs.get("probs"), total


class _BatchedForward:
    """The engine's predictor: (B, C, *w) -> logits (B, K, *w) float32, on the device.

    Averages the logits over ``flips`` (tuples of axes; () is the plain pass) and pads to the size
    divisor; a CUDA out-of-memory error splits the batch in halves (and keeps the smaller size)
    before giving up.
    """

    def __init__(self, network, divisor: int, device, flips=((),)) -> None:
        from napari_lgms.inference.sliding import network_predictor

        self.device = device
        self.predict = network_predictor(network, flips=flips, divisor=divisor)
        self.split = 1

    def __call__(self, crops):
        import torch

        chunks = torch.tensor_split(crops, min(self.split, crops.shape[0]))
        outputs = []
        for chunk in chunks:
            try:
                with torch.inference_mode():
                    outputs.append(self.predict(chunk.to(self.device)).float())
            except torch.OutOfMemoryError:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if chunk.shape[0] == 1:
                    raise LgmsError(
                        f"out of memory on {self.device} for one window of shape {tuple(chunk.shape[2:])}; "
                        "use the CPU (device='cpu') or a smaller ROI"
                    ) from None
                self.split *= 2
                outputs.append(self(chunk))
        return torch.cat(outputs)


class _Resized:
    """A predictor run on inputs resized to ``size``, its logits resized back to ``back``."""

    def __init__(self, predictor, size: tuple[int, ...], back: tuple[int, ...]) -> None:
        self.predictor, self.size, self.back = predictor, size, back
        self.device = predictor.device

    def __call__(self, crops):
        return geometry.resize(self.predictor(geometry.resize(crops, self.size)), self.back)


def _plan(items: np.ndarray, item_spacing, card, overlap: float, batch_size, device) -> "_Plan":
    item_shape = tuple(items.shape[2:])
    dims = len(item_shape)
    patch = card.input.patch_size
    patch = tuple(int(p) for p in patch) if patch else item_shape
    if len(patch) != dims:
        raise InputError(f"model card patch_size {patch} does not have {dims} axes")
    mode = card.input.mode or ("resize" if dims == 2 else "sliding_window")
    limit = float(card.input.max_resize_factor or RESIZE_LIMIT)
    if mode == "resize" and any(s > limit * p for s, p in zip(item_shape, patch)):
        mode = "tile"
    if mode == "resize":
        grid, layout, resize_to = item_shape, [tuple(slice(0, s) for s in item_shape)], patch
        window = patch
    else:
        grid = geometry.resampled_shape(item_shape, item_spacing, card.input.spacing) or item_shape
        layout, resize_to = windows.window_slices(grid, patch, overlap), None
        window = windows.window_shape(grid, patch)
    _check_memory(items.shape[0], items.shape[1] + card.num_classes, item_shape, grid)
    if batch_size is None:
        budget = BATCH_VOXELS.get(device.type, BATCH_VOXELS["cpu"])
        batch_size = int(min(MAX_BATCH, max(1, budget // math.prod(window))))
    elif int(batch_size) < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    return _Plan(resize_to, patch, grid, layout, int(batch_size))


def _check_memory(count: int, channels: int, item_shape: tuple[int, ...], grid: tuple[int, ...]) -> None:
    """Refuse a resampling grid whose float32 inputs and logits would exceed :data:`MAX_GRID_BYTES`."""
    needed = 4 * count * channels * math.prod(grid)
    if needed > MAX_GRID_BYTES:
        raise InputError(
            f"resampling {'x'.join(map(str, item_shape))} voxels to the model's spacing gives a "
            f"{'x'.join(map(str, grid))} grid that needs {needed / 2**30:.1f} GiB (at most "
            f"{MAX_GRID_BYTES / 2**30:.0f} GiB); check the image's voxel size"
        )


def _activate(logits, card, want_probabilities: bool):
    """(N, K, *S) logits -> labels (N, *S) and optional probabilities.

    Softmax: argmax; probabilities (N, K, *S). One-output sigmoid: probability >
    threshold; probabilities (N, *S). Multi-output sigmoid (multi-label): the
    most probable output above the threshold, labels 1..K; probabilities (N, K, *S).
    """
    import torch

    num_outputs = logits.shape[1]
    activation = card.output.activation_for(num_outputs)
    threshold = float(card.output.threshold)
    probs = None
    if num_outputs == 1:
        foreground = torch.sigmoid(logits[:, 0])
        labels = foreground > threshold
        probs = foreground if want_probabilities else None
        max_label = 1
    elif activation == "softmax":
        labels = logits.argmax(1)
        probs = torch.softmax(logits, 1) if want_probabilities else None
        max_label = num_outputs - 1
    else:
        scores = torch.sigmoid(logits)
        best, which = scores.max(1)
        labels = torch.where(best > threshold, which + 1, 0)
        probs = scores if want_probabilities else None
        max_label = num_outputs
    dtype = np.uint8 if max_label <= 255 else np.uint16
    labels = labels.numpy().astype(dtype)
    return labels, (None if probs is None else probs.numpy())


def _paste(labels, probs, roi, box, full_shape, card):
    """Put the ROI part of a crop's result into zero arrays of the full spatial shape."""
    inner = geometry.roi_within_box(roi, box)
    target = tuple(slice(start, stop) for start, stop in roi)
    full_labels = np.zeros(full_shape, dtype=labels.dtype)
    full_labels[target] = labels[inner]
    if probs is None:
        return full_labels, None
    if probs.ndim == len(full_shape):
        full_probs = np.zeros(full_shape, dtype=np.float32)
        full_probs[target] = probs[inner]
    else:
        full_probs = np.zeros((probs.shape[0],) + tuple(full_shape), dtype=np.float32)
        if card.output.activation_for(probs.shape[0]) == "softmax":
            full_probs[0] = 1.0
        full_probs[(slice(None),) + target] = probs[(slice(None),) + inner]
    return full_labels, full_probs


def _check_axis(axis, ndim: int, name: str) -> int:
    try:
        axis = int(axis)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be an integer, got {axis!r}") from None
    if not -ndim <= axis < ndim:
        raise InputError(f"{name} {axis} is out of range for {ndim} spatial axes")
    return axis % ndim


def _device_of(network):
    import torch

    for parameter in network.parameters():
        return parameter.device
    return torch.device("cpu")


def _resolve_device(device, network):
    import torch

    from napari_lgms._device import select_device

    if device is None:
        return _device_of(network)
    if isinstance(device, torch.device):
        return device
    try:
        return select_device(str(device))
    except ValueError as error:
        raise InputError(str(error)) from None


def _size_divisor(network, card) -> int:
    divisors = [int(getattr(network, "size_divisor", 1) or 1), int(card.input.size_divisor or 1)]
    return math.lcm(*divisors)
