"""Input checks, channel handling, ROI crop/paste and resampling for inference.

Conventions: an image is split into a channel-first array (C, *spatial); the
ROI and the spacing are given per *spatial* axis (the channel axis excluded),
in image index order.
"""
from __future__ import annotations

import math

import numpy as np

from napari_lgms._words import counted
from napari_lgms.errors import InputError
from napari_lgms.inference.normalize import check_finite

# ITU-R BT.601 luma, as OpenCV's grey conversion (the training pipelines read with OpenCV).
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
ACCEPTED_SHAPES = "2D (Y, X), 2D with a channel axis, 3D (Z, Y, X) or 3D with a channel axis"


def check_image(image) -> np.ndarray:
    """Refuse what no model can take: non-numeric, empty, 1D or >4D, NaN/inf. Returns an ndarray."""
    array = np.asarray(image)
    if array.dtype.kind not in "buif":
        raise InputError(
            f"image dtype {array.dtype} is not a real number type; give an integer, float or boolean array"
        )
    if array.ndim < 2 or array.ndim > 4:
        raise InputError(f"image has {counted(array.ndim, 'dimension')} (shape {array.shape}); "
                         f"accepted: {ACCEPTED_SHAPES}")
    if array.size == 0:
        raise InputError(f"image is empty (shape {array.shape}); every axis needs at least one pixel")
    check_finite(array)
    return array


def find_channel_axis(shape: tuple[int, ...], channel_axis, model_dims: int, model_channels: int) -> int | None:
    """Which axis of an array of ``shape`` holds channels (None: no channel axis).

    ``channel_axis="auto"``: a 2D array has none; a 3D array has a trailing RGB(A)
    axis when its last size is 3 or 4 (2D models only: for a 3D model a 3D array
    is a volume), else a leading or trailing axis equal to the model's channel
    count (2D models with more than one channel); a 4D array is a 3D volume with
    its channel axis last (size <= 4 or the model's count) or else first.
    """
    ndim = len(shape)
    if channel_axis is None:
        return None
    if channel_axis != "auto":
        try:
            axis = int(channel_axis)
        except (TypeError, ValueError):
            raise InputError(f"channel_axis must be 'auto', None or an axis number, got {channel_axis!r}") from None
        if not -ndim <= axis < ndim:
            raise InputError(f"channel_axis {axis} is out of range for an image of shape {shape}")
        return axis % ndim
    if ndim == 2:
        return None
    if ndim == 3:
        if model_dims == 3:
            return None
        if shape[-1] in (3, 4) or (model_channels > 1 and shape[-1] == model_channels):
            return 2
        if model_channels > 1 and shape[0] == model_channels:
            return 0
        return None
    if shape[-1] <= 4 or shape[-1] == model_channels:
        return 3
    if shape[0] <= 4 or shape[0] == model_channels:
        return 0
    raise InputError(
        f"4D image of shape {shape} is not a 3D volume with channels (no channel axis of size <= 4 "
        f"or {model_channels} first or last); accepted: {ACCEPTED_SHAPES}"
    )


def channels_first(array: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """(…) -> (C, *spatial); a missing channel axis becomes one of size 1 (a view, no copy)."""
    if channel_axis is None:
        return array[np.newaxis]
    return np.moveaxis(array, channel_axis, 0)


def match_channels(image: np.ndarray, model_channels: int) -> np.ndarray:
    """Map an image (M, *spatial) to the model's channel count: (model_channels, *spatial).

    RGBA drops alpha unless the model takes 4 channels; one channel is repeated
    for a multi-channel model; RGB becomes BT.601 luminance for a 1-channel model.
    Anything else is an InputError.
    """
    count = image.shape[0]
    if count == model_channels:
        return image
    if count == 4 and model_channels in (1, 3):
        image, count = image[:3], 3
        if model_channels == 3:
            return image
    if count == 1:
        return np.repeat(image, model_channels, axis=0)
    if count == 3 and model_channels == 1:
        luma = np.tensordot(LUMA_WEIGHTS, image.astype(np.float32, copy=False), axes=(0, 0))
        return luma[np.newaxis]
    accepted = {model_channels, 1} | ({3, 4} if model_channels in (1, 3) else set())
    raise InputError(
        f"model takes {counted(model_channels, 'channel')}, image has {count}; "
        f"accepted channel counts: {', '.join(str(c) for c in sorted(accepted))}"
    )


def check_roi(roi, spatial_shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """Validate ``roi`` (one (start, stop) per spatial axis); stops past the end are clipped."""
    try:
        pairs = tuple((int(start), int(stop)) for start, stop in roi)
    except (TypeError, ValueError):
        raise InputError(f"roi must be one (start, stop) pair per spatial axis, got {roi!r}") from None
    if len(pairs) != len(spatial_shape):
        raise InputError(
            f"roi has {counted(len(pairs), 'axis range')} but the image has {len(spatial_shape)} spatial axes "
            f"{spatial_shape}"
        )
    clipped = []
    for axis, ((start, stop), size) in enumerate(zip(pairs, spatial_shape)):
        stop = min(stop, size)
        if start < 0 or start >= stop:
            raise InputError(
                f"roi range {start}:{stop} on axis {axis} is empty or outside 0:{size}; give start < stop within the image"
            )
        clipped.append((start, stop))
    return tuple(clipped)


def roi_margin(length: int) -> int:
    """Context kept around a ROI on each side: 16 px or 10 % of the ROI, the larger."""
    return max(16, int(round(0.1 * length)))


def crop_box(roi: tuple[tuple[int, int], ...], spatial_shape: tuple[int, ...],
             no_margin_axes: tuple[int, ...] = ()) -> tuple[slice, ...]:
    """The ROI grown by :func:`roi_margin` on each side (not on ``no_margin_axes``), clipped to the image."""
    box = []
    for axis, ((start, stop), size) in enumerate(zip(roi, spatial_shape)):
        margin = 0 if axis in no_margin_axes else roi_margin(stop - start)
        box.append(slice(max(0, start - margin), min(size, stop + margin)))
    return tuple(box)


def roi_within_box(roi: tuple[tuple[int, int], ...], box: tuple[slice, ...]) -> tuple[slice, ...]:
    """The ROI in the coordinates of the cropped box."""
    return tuple(slice(start - b.start, stop - b.start) for (start, stop), b in zip(roi, box))


def check_spacing(spacing, spatial_shape) -> tuple[float, ...] | None:
    """``spacing`` (one positive number per spatial axis, or None) as floats; InputError otherwise."""
    if spacing is None:
        return None
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise InputError(f"spacing must be one number per spatial axis, got {spacing!r}") from None
    if len(values) != len(spatial_shape):
        raise InputError(f"spacing {values} has {len(values)} values; the image has {len(spatial_shape)} spatial axes")
    if any(not math.isfinite(v) or v <= 0 for v in values):
        raise InputError(f"spacing must be positive finite numbers, got {values}")
    return values


def resampled_shape(shape: tuple[int, ...], spacing, target_spacing) -> tuple[int, ...] | None:
    """Grid shape after resampling from ``spacing`` to ``target_spacing``; None if (nearly) the same."""
    if spacing is None or target_spacing is None:
        return None
    spacing = [float(s) for s in spacing]
    target_spacing = [float(s) for s in target_spacing]
    if len(spacing) != len(shape) or len(target_spacing) != len(shape):
        raise InputError(
            f"spacing {tuple(spacing)} / model spacing {tuple(target_spacing)} do not match the "
            f"{len(shape)} spatial axes being segmented"
        )
    if any(not np.isfinite(s) or s <= 0 for s in spacing + target_spacing):
        raise InputError(f"spacing must be positive numbers, got {tuple(spacing)}")
    new_shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing))
    if all(abs(s / t - 1.0) < 0.01 for s, t in zip(spacing, target_spacing)):
        return None
    return new_shape


def resize(tensor, shape: tuple[int, ...]):
    """Linear resampling of (N, C, *S) to (N, C, *shape) (bi/trilinear; antialiased when shrinking 2D)."""
    import torch.nn.functional as F

    if tuple(tensor.shape[2:]) == tuple(shape):
        return tensor
    spatial_dims = tensor.dim() - 2
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial_dims]
    shrinking = any(new < old for new, old in zip(shape, tensor.shape[2:]))
    antialias = spatial_dims == 2 and shrinking
    return F.interpolate(tensor, size=tuple(shape), mode=mode, align_corners=False, antialias=antialias)
