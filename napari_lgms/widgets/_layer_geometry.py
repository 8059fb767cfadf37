"""Between napari layers and the engine: spatial axes, geometry, slices, boxes, merging.

No Qt here, only napari layer objects and numpy, so it is testable with a
``napari.components.ViewerModel`` offscreen. Vocabulary:

* *layer axes*: the axes of ``layer.data`` as napari counts them (an RGB layer
  has its colour axis outside ``layer.ndim``);
* *spatial axes*: the layer axes that are not a channel axis, in order; the
  engine's ``roi``, ``slice_axis`` and result labels use them;
* *region*: a tuple of slices over the spatial axes, where a run's result applies.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_lgms.errors import InputError


def image_array(layer) -> np.ndarray:
    """The full-resolution pixels of an Image layer (level 0 of a multiscale layer)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return np.asarray(data)


def channel_axis_for(layer, model_channels: int) -> int | None:
    """Which axis of ``layer.data`` holds channels: the colour axis of an RGB layer, else
    None for a one-channel model, else the engine's automatic choice (data axis index)."""
    data_ndim = len(image_array(layer).shape)
    if getattr(layer, "rgb", False):
        return data_ndim - 1
    if model_channels == 1:
        return None
    from napari_lgms.inference.geometry import find_channel_axis

    return find_channel_axis(tuple(image_array(layer).shape), "auto", 2, model_channels)


def spatial_layer_axes(layer, channel_axis: int | None) -> list[int]:
    """The layer axes (0..layer.ndim-1) that are spatial, given the data's channel axis."""
    axes = list(range(layer.ndim))
    if channel_axis is not None and not getattr(layer, "rgb", False):
        axes.remove(channel_axis)
    return axes


def spatial_geometry(layer, axes: list[int]) -> dict:
    """Layer keyword arguments (scale, translate, rotate, shear, affine, units, axis_labels)
    for a layer over ``axes`` of ``layer`` that lies exactly on top of it."""
    every_axis = list(axes) == list(range(layer.ndim))
    geometry = {
        "scale": tuple(float(layer.scale[a]) for a in axes),
        "translate": tuple(float(layer.translate[a]) for a in axes),
        "units": tuple(str(layer.units[a]) for a in axes),
        "axis_labels": tuple(layer.axis_labels[a] for a in axes),
    }
    rotate = np.asarray(layer.rotate)[np.ix_(axes, axes)]
    if not np.allclose(rotate, np.eye(len(axes))):
        geometry["rotate"] = rotate
    if every_axis and not np.allclose(layer.shear, 0):
        geometry["shear"] = np.asarray(layer.shear)
    affine = layer.affine.set_slice(axes).affine_matrix
    if not np.allclose(affine, np.eye(len(axes) + 1)):
        geometry["affine"] = affine
    return geometry


def spacing_in_mm(layer, axes: list[int]) -> tuple[float, ...] | None:
    """The pixel size of ``layer`` along ``axes`` in millimetres (the models' unit), or None when
    an axis has no length unit (napari's default "pixel"): then the engine does not resample."""
    from pint import DimensionalityError

    try:
        return tuple(abs(float((layer.scale[a] * layer.units[a]).to("mm").magnitude)) for a in axes)
    except (DimensionalityError, AttributeError):  # "pixel" is no length; a layer without units
        return None


def _world_point_on_layer(viewer, layer, axes: list[int]) -> np.ndarray:
    """The viewer's current point in ``layer``'s data coordinates, restricted to ``axes``."""
    data_point = np.asarray(layer.world_to_data(viewer.dims.point), dtype=float)
    return data_point[axes]


def current_slice_axis(viewer, layer, axes: list[int]) -> int:
    """The spatial axis the viewer steps through (the last one not displayed); 0 in 3D view."""
    if len(axes) < 3 or viewer.dims.ndisplay == 3:
        return 0
    offset = viewer.dims.ndim - layer.ndim
    hidden = [world - offset for world in viewer.dims.not_displayed if world - offset in axes]
    return axes.index(hidden[-1]) if hidden else 0


def current_slice_index(viewer, layer, axes: list[int], slice_axis: int, spatial_shape) -> int:
    """The viewer's current position on ``slice_axis`` as a data index, clipped to the volume."""
    position = _world_point_on_layer(viewer, layer, axes)[slice_axis]
    return int(np.clip(np.round(position), 0, spatial_shape[slice_axis] - 1))


@dataclass
class Box:
    """A box prompt over the spatial axes: ``roi`` ((start, stop), ...) and the axes it is flat on."""

    roi: tuple[tuple[int, int], ...]
    flat_axes: tuple[int, ...]


def boxes_from_shapes(viewer, shapes_layer, image_layer, axes: list[int], spatial_shape,
                      only_selected: bool) -> list[Box]:
    """Bounding boxes of a Shapes layer's shapes in the image's spatial index coordinates.

    ``only_selected``: the selected shapes, or the last drawn one when none is
    selected. A shape drawn on one slice of a volume is flat on that axis
    (``flat_axes``); the caller decides whether that means one slice or the
    whole depth.
    """
    count = len(shapes_layer.data)
    if count == 0:
        raise InputError(f"Shapes layer {shapes_layer.name!r} has no shapes; "
                         "draw a rectangle around the target first")
    if only_selected:
        chosen = sorted(shapes_layer.selected_data) or [count - 1]
    else:
        chosen = list(range(count))
    world_now = np.asarray(viewer.dims.point, dtype=float)
    boxes = []
    for index in chosen:
        vertices = np.asarray(shapes_layer.data[index], dtype=float)
        points = []
        for vertex in vertices:
            world = world_now.copy()
            world_vertex = np.asarray(shapes_layer.data_to_world(vertex), dtype=float)
            world[len(world) - len(world_vertex):] = world_vertex
            points.append(np.asarray(image_layer.world_to_data(world), dtype=float)[axes])
        points = np.array(points)
        low, high = points.min(axis=0), points.max(axis=0)
        roi, flat = [], []
        for axis, size in enumerate(spatial_shape):
            start = int(np.clip(np.floor(low[axis] + 0.5), 0, size - 1))
            stop = int(np.clip(np.floor(high[axis] + 0.5) + 1, start + 1, size))
            if high[axis] - low[axis] < 0.5:
                flat.append(axis)
            roi.append((start, stop))
        if any(stop - start < 2 for axis, (start, stop) in enumerate(roi) if axis not in flat):
            raise InputError("the box is less than 2 pixels wide; draw a larger rectangle")
        boxes.append(Box(tuple(roi), tuple(flat)))
    return boxes


def region_slices(spatial_shape, roi=None, slice_axis=None, slice_index=None) -> tuple[slice, ...]:
    """Slices over the spatial axes covered by a run (whole, one slice, a box, or a box on a slice)."""
    region = [slice(0, size) for size in spatial_shape]
    if roi is not None:
        region = [slice(start, stop) for start, stop in roi]
    if slice_index is not None:
        region[slice_axis] = slice(slice_index, slice_index + 1)
    return tuple(region)


def place(result_labels: np.ndarray, spatial_shape, region: tuple[slice, ...],
          slice_axis=None, slice_index=None) -> np.ndarray:
    """A full-shape label array holding the result inside ``region`` and zeros elsewhere.

    ``result_labels`` is either full-shape (whole image, ROI runs) or the 2D
    slice a ``slice_index`` run returns.
    """
    full = np.zeros(spatial_shape, dtype=result_labels.dtype)
    if slice_index is not None and result_labels.ndim == len(spatial_shape) - 1:
        result_labels = np.expand_dims(result_labels, slice_axis)
        target = list(region)
        target[slice_axis] = slice(slice_index, slice_index + 1)
        source = list(region)
        source[slice_axis] = slice(0, 1)
        full[tuple(target)] = result_labels[tuple(source)]
        return full
    full[region] = result_labels[region]
    return full


def merge_into(existing: np.ndarray, new_full: np.ndarray, region: tuple[slice, ...],
               fill_only_empty: bool) -> np.ndarray:
    """``existing`` with ``region`` replaced by ``new_full`` (or only its empty pixels filled)."""
    merged = np.array(existing, copy=True)
    merge_in_place(merged, new_full, region, fill_only_empty)
    return merged


def merge_in_place(target: np.ndarray, new_full: np.ndarray, region: tuple[slice, ...],
                   fill_only_empty: bool) -> None:
    """:func:`merge_into` writing into ``target`` itself (one copy for many regions)."""
    new_part = new_full[region].astype(target.dtype, copy=False)
    if fill_only_empty:
        old_part = target[region]
        target[region] = np.where(old_part == 0, new_part, old_part)
    else:
        target[region] = new_part


def view_coverage(viewer, layer) -> tuple[float, float]:
    """(share of ``layer`` that the 2D view shows, share of the view that ``layer`` fills); (1, 1) in 3D."""
    if viewer.dims.ndisplay != 2:
        return 1.0, 1.0
    offset = viewer.dims.ndim - layer.ndim
    dims = [d - offset for d in list(viewer.dims.displayed)[-2:]]
    if min(dims) < 0:
        return 1.0, 1.0
    extent = np.asarray(layer.extent.world, dtype=float)[:, dims]
    low, high = extent[0], np.maximum(extent[1], extent[0] + 1e-9)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9 / older
    centre = np.asarray(camera.center, dtype=float)[-2:]
    half = np.asarray(viewer.canvas.size, dtype=float) / max(float(camera.zoom), 1e-12) / 2
    overlap = np.clip(np.minimum(high, centre + half) - np.maximum(low, centre - half), 0, None).prod()
    return float(overlap / (high - low).prod()), float(overlap / (2 * half).prod())


def wholly_in_view(viewer, layer, share: float = 0.9) -> bool:
    """Whether at least ``share`` of ``layer`` is on screen and it is not a speck in a corner
    (under 2 % of the screen): what a newly opened image needs, or the view is fitted to it."""
    shown, filled = view_coverage(viewer, layer)
    return shown >= share and filled >= 0.02


def in_view(viewer, layer) -> bool:
    """Whether the user can see ``layer``: it fills half the screen, or at least half of it is on
    screen and it is not a speck in a corner (under 2 % of the screen)."""
    shown, filled = view_coverage(viewer, layer)
    return filled >= 0.5 or (shown >= 0.5 and filled >= 0.02)
