"""Click mode's work without Qt: where it clicks (:class:`ClickTarget`), the objects and their
clicks, one prediction (:func:`predict`, run in a worker) and writing it into a Labels layer
(:func:`write_object`). The controller is :mod:`._click_mode`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from napari_lgms.widgets._shared import ModelChoice


@dataclass
class ClickTarget:
    """Where click mode works, decided on the main thread when it is turned on."""

    image_name: str
    image: np.ndarray  # the image layer's pixels, data axes
    choice: ModelChoice  # the click model
    device: str
    channel_axis: int | None  # data axis
    spatial_axes: list[int]  # layer axes
    spatial_shape: tuple[int, ...]
    slice_axis: int | None  # the spatial axis a 2D model on a volume holds fixed, else None
    geometry: dict
    automatic: ModelChoice  # the model the user selected (named in the layer's metadata)
    model: object = None  # the loaded click model (set once loaded)
    labels: object = None  # the Labels layer written
    points: object = None  # the "clicks" Points layer
    spacing: tuple[float, ...] | None = None  # mm per spatial axis, when the layer says

    def plane_of(self, position) -> int | None:
        """The slice a click at ``position`` (spatial index coordinates) is on; None: whole image."""
        return None if self.slice_axis is None else int(position[self.slice_axis])

    def on_plane(self, position) -> tuple[float, ...]:
        """``position`` as the session sees it (without the slice coordinate)."""
        return tuple(p for axis, p in enumerate(position) if axis != self.slice_axis)

    def plane_image(self, plane: int | None) -> tuple[np.ndarray, int | None]:
        """(pixels of ``plane``, their channel axis) for a session."""
        if plane is None:
            return self.image, self.channel_axis
        axis = self.spatial_axes[self.slice_axis]
        channel = self.channel_axis
        if channel is not None and channel > axis:
            channel -= 1
        return np.take(self.image, plane, axis=axis), channel

    def plane_region(self, plane: int | None) -> tuple[slice | int, ...]:
        """Index of ``plane`` in the labels array."""
        region = [slice(None)] * len(self.spatial_shape)
        if plane is not None:
            region[self.slice_axis] = plane
        return tuple(region)

    def full_indices(self, plane: int | None, indices: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        """Indices into a plane -> indices into the labels array."""
        if plane is None:
            return indices
        count = len(indices[0]) if indices else 0
        full = list(indices)
        full.insert(self.slice_axis, np.full(count, plane, dtype=np.intp))
        return tuple(full)


@dataclass
class Click:
    """One click as the widget keeps it: image spatial index coordinates, sign, when."""

    position: tuple[int, ...]
    positive: bool
    at: float  # time.monotonic() of the click


@dataclass
class PlaneObject:
    """One object on one plane (the whole image, or one slice of a volume under a 2D model)."""

    label: int
    plane: int | None
    clicks: list[Click] = field(default_factory=list)
    session: object = None  # the ClickSession, made by the first prediction
    shown: np.ndarray | None = None  # the object's mask as last written (None: as the layer had it)


@dataclass
class ObjectClicks:
    """The object being clicked: its label, its planes, the order of its clicks (for Undo)."""

    label: int
    planes: dict = field(default_factory=dict)  # plane index (None: whole image) -> PlaneObject
    history: list[PlaneObject] = field(default_factory=list)

    def plane(self, index: int | None) -> PlaneObject:
        if index not in self.planes:
            self.planes[index] = PlaneObject(self.label, index)
        return self.planes[index]

    def clicks(self) -> list[Click]:
        return [click for plane in self.planes.values() for click in plane.clicks]


@dataclass
class Job:
    """Work for one prediction: undo ``undos`` clicks of ``plane``, then add ``clicks``."""

    target: ClickTarget
    plane: PlaneObject
    undos: int = 0
    clicks: list[Click] = field(default_factory=list)
    shown: np.ndarray | None = None  # what was on screen when the job started
    labels_data: np.ndarray | None = None


@dataclass
class JobResult:
    job: Job
    session: object
    mask: np.ndarray
    turned_on: tuple[np.ndarray, ...]
    turned_off: tuple[np.ndarray, ...]
    seconds: float
    ignored: bool = False  # the mask disagrees with the job's last click at its own pixel


def predict(job: Job) -> JobResult:
    """Worker thread: run ``job`` on its plane's session (made here on the plane's first job, from
    the pixels its label already has) and say which pixels turned on and off."""
    from napari_lgms.clicks import Click as EngineClick
    from napari_lgms.clicks import ClickSession

    started = time.perf_counter()
    target, plane = job.target, job.plane
    shown = job.shown
    if shown is None:
        shown = np.asarray(job.labels_data[target.plane_region(plane.plane)]) == plane.label
    session = plane.session
    if session is None:
        image, channel_axis = target.plane_image(plane.plane)
        session = ClickSession(image, target.model, channel_axis=channel_axis, mask=shown,
                               spacing=target.on_plane(target.spacing) if target.spacing else None,
                               device=target.device)
    for _ in range(job.undos):
        session.undo()
    clicks = [EngineClick(tuple(map(float, target.on_plane(c.position))), c.positive) for c in job.clicks]
    mask = session.add_clicks(clicks)
    ignored = bool(clicks) and bool(mask[tuple(int(p) for p in clicks[-1].position)]) != clicks[-1].positive
    return JobResult(job, session, mask, np.nonzero(mask & ~shown), np.nonzero(shown & ~mask),
                     time.perf_counter() - started, ignored)


def write_object(labels, target: ClickTarget, result: JobResult) -> int:
    """Write a prediction into ``labels``: the object's label where it turned on over 0 or that
    label, 0 where it turned off; other labels untouched. Returns the pixels changed."""
    label = result.job.plane.label
    plane = result.job.plane.plane
    turned_on = target.full_indices(plane, result.turned_on)
    turned_off = target.full_indices(plane, result.turned_off)
    data = labels.data
    free = np.isin(data[turned_on], (0, label))
    mine = data[turned_off] == label
    indices = tuple(np.concatenate([on[free], off[mine]]) for on, off in zip(turned_on, turned_off))
    if not indices or indices[0].size == 0:
        return 0
    values = np.concatenate([np.full(int(free.sum()), label), np.zeros(int(mine.sum()), int)])
    labels.data_setitem(indices, values.astype(data.dtype))
    return int(indices[0].size)


def click_records(clicks, label: int) -> list[dict]:
    """Clicks as the layer's metadata keeps them."""
    return [{"position": [int(p) for p in c.position], "positive": bool(c.positive), "label": int(label)}
            for c in clicks]
