"""Click mode of the Segment widget: segment one object at a time by clicking on it (issue #20).

* :class:`ClickControls`: the "Clicks" section (Click mode, Undo click, Next object, a status line);
* :func:`click_model_for`: which click model serves the selected model (itself when it takes
  clicks, else the click model whose card names it, or one of its ancestors, as lineage parent);
* :class:`ClickMode`: the sessions, the "clicks" Points layer, the mouse, the worker; the work
  without Qt (the objects, one prediction, writing it) is :mod:`._click_jobs`.

Turning click mode on loads the click model in a worker, then adds (or reuses) the image's Labels
layer (the one Segment writes) and a Points layer "clicks" on top, made the active layer. A left
click on it adds a positive point (green), a Shift-click or a right click a negative one (red); a
drag pans as usual. The GUI thread only records the click, redraws the points and starts a worker
when none runs; the worker (a :class:`~napari_lgms.clicks.ClickSession`, made on the first click of
each object and plane) predicts and returns which pixels of the object turned on and off. Clicks
that arrive while a prediction runs are queued and go into one ``add_clicks`` call; a prediction
whose plane has queued work when it returns is stale and never shown. Results are written with
``Labels.data_setitem`` (napari's undo history, a partial redraw) into the object's label only
where the layer holds 0 or that label: other labels' pixels are never touched.

An object starts from the pixels its label already has (clicks correct Segment's mask in label
1); its label is the Labels layer's selected label, "Next object" sets that to the largest label
+ 1 (choosing a label in the layer's controls starts an object with it). "Undo click" removes
the last point at once and undoes it in the session (a click predicted together with others
returns to the mask before all of them, as :meth:`ClickSession.undo` does).

A 2D click model on a volume works on the displayed slice (one session per slice of the object,
points carry the slice coordinate); a 3D click model on a volume gets the 3D point of the click.
The layer's ``metadata["napari_lgms"]["clicks"]`` records every click (image index coordinates,
sign, label); "Save correction" stores those on the saved image, slice or box with the example.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone

import numpy as np
from qtpy.QtWidgets import QPushButton, QVBoxLayout, QWidget

from napari_lgms._words import counted
from napari_lgms.widgets import _layer_geometry as geo
from napari_lgms.widgets._click_jobs import (Click, ClickTarget, Job, JobResult, ObjectClicks, click_records,
                                             predict, write_object)
from napari_lgms.widgets._layout import Section, button_row, wrapping_label
from napari_lgms.widgets._shared import ModelChoice, connect_while_alive, load_choice, takes_clicks
from napari_lgms.widgets._workers import (Failure, notify_error, one_line, returning_failures,
                                          start_engine_task)

METADATA_KEY = "napari_lgms"
CLICKS_LAYER = "clicks"
POSITIVE_COLOUR, NEGATIVE_COLOUR = (0.0, 1.0, 0.0, 1.0), (1.0, 0.0, 0.0, 1.0)  # green, red (RGBA)
DRAG_PIXELS = 4  # a press that moves further is a pan, not a click
HELP = ("Click mode: click on an object to segment it; Shift-click (or right click) where it "
        "should not be. Drag to pan. Undo click takes back the last click, Next object starts "
        "a new label. Clicks go to the 'clicks' layer while it is the selected layer.")


# -------------------------------------------------------------------------------- which model
def lineage_of(choice: ModelChoice, choices) -> list[str]:
    """``choice``'s name and its ancestors' names (card ``lineage.parent``), nearest first."""
    cards = {}
    for row in choices:
        if row.card is not None:
            cards.setdefault(row.name, row.card)
    names, card = [choice.name], choice.card
    while card is not None and card.lineage.get("parent") and card.lineage["parent"] not in names:
        names.append(str(card.lineage["parent"]))
        card = cards.get(names[-1])
    return names


def click_model_for(choices, selected: ModelChoice | None) -> ModelChoice | None:
    """The click model for ``selected``: itself if it takes clicks, else the first listed click
    model whose lineage parent is ``selected`` or, for a fine-tuned version, one of its ancestors."""
    if selected is None or takes_clicks(selected):
        return selected
    for name in lineage_of(selected, choices):
        for choice in choices:
            if takes_clicks(choice) and choice.card.lineage.get("parent") == name:
                return choice
    return None


def unavailable_reason(selected: ModelChoice | None, models_ready: bool) -> str:
    """Why click mode cannot start for ``selected`` (it has no click model)."""
    if not models_ready:
        return "Listing the models…"
    if selected is None:
        return "Choose a model first."
    return (f"No click model for {selected.name}: click mode needs a model that takes clicks "
            f"(such as {selected.name}-clicks, made from it); none is installed.")


# -------------------------------------------------------------------------------- the section
class ClickControls(Section):
    """The "Clicks" section: Click mode (a toggle), Undo click, Next object, one status line."""

    def __init__(self, parent=None):
        self.mode_button = QPushButton("Click mode")
        self.mode_button.setCheckable(True)
        self.undo_button = QPushButton("Undo click")
        self.next_button = QPushButton("Next object")
        self.status_label = wrapping_label("Off.", lines=2)  # room kept: the panel does not jump per click
        self.undo_button.setToolTip("Take back the last click (its point and its effect on the mask)")
        self.next_button.setToolTip("Keep this object; the next clicks make a new one with a new label")
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(button_row(self.mode_button, self.undo_button, self.next_button))
        layout.addWidget(self.status_label)
        super().__init__("Clicks", body, expanded=True, parent=parent)
        self.toggle.setToolTip(HELP)
        self.show_session(False, False)

    def show_session(self, active: bool, has_clicks: bool) -> None:
        self.undo_button.setEnabled(active and has_clicks)
        self.next_button.setEnabled(active)

    def set_status(self, text: str) -> None:
        """The status (at most two lines; in its tooltip with the help)."""
        self.status_label.setText(text)
        self.status_label.setToolTip(f"{text}\n\n{HELP}")


def layer_named(layers, name: str):
    """The layer called ``name``, or None. By iteration: napari hands plugins a viewer whose
    ``layers[name]`` is a proxy object, whose ``type()`` is not the layer's class."""
    return next((layer for layer in layers if layer.name == name), None)


# -------------------------------------------------------------------------------- the controller
class ClickMode:
    """Click mode of one Segment widget (``widget``: a SegmentWidget; ``controls``: its section)."""

    def __init__(self, widget, controls: ClickControls):
        self.widget, self.viewer, self.controls = widget, widget.viewer, controls
        self.target: ClickTarget | None = None
        self.object: ObjectClicks | None = None
        self.pending: list[Job] = []
        self.running: Job | None = None
        self.gui_ms: list[float] = []  # GUI-thread time of each click (recording it, points, worker start)
        self.write_ms: list[float] = []  # GUI-thread time of each result written
        self._loading = None  # the target being loaded
        self._models: dict[tuple[str, str], object] = {}
        self._recorded: list[dict] = []  # clicks of finished objects on the target's layer
        self._last_latency: float | None = None
        self._last_ignored = False  # the last prediction left its click's pixel as it was
        controls.mode_button.toggled.connect(self._toggled)
        controls.undo_button.clicked.connect(self.undo)
        controls.next_button.clicked.connect(self.next_object)
        widget.image_combo.currentIndexChanged.connect(self._selection_changed)
        widget.model_combo.currentIndexChanged.connect(self._selection_changed)
        connect_while_alive(self.viewer.layers.events.removed, controls, self._layer_removed)
        self.update_availability()

    # -- availability -------------------------------------------------------------------------
    def click_choice(self) -> ModelChoice | None:
        return click_model_for(self.widget.choices, self.widget.current_choice())

    def update_availability(self) -> None:
        """Enable the toggle when the selected model has a click model; else say why."""
        choice, selected = self.click_choice(), self.widget.current_choice()
        button = self.controls.mode_button
        button.setEnabled(choice is not None or button.isChecked())
        if choice is None:
            button.setToolTip(unavailable_reason(selected, self.widget.models_ready))
        else:
            button.setToolTip(f"Segment by clicking, with {choice.name}. {HELP}")
        if not (self.active or self._loading):
            missing = choice is None and selected is not None
            self.controls.set_status(f"Off: no click model for {selected.name}." if missing else "Off.")

    def _selection_changed(self, *_) -> None:
        """Another image or model ends the session (a refreshed list with the same ones does not)."""
        busy = self.target or self._loading
        if busy is not None:
            image = self.widget.image_combo.currentText()
            choice = self.click_choice()
            if image != busy.image_name or choice is None or choice.source != busy.choice.source:
                self.stop()
        self.update_availability()

    def _layer_removed(self, event) -> None:
        target = self.target
        if target is not None and (event.value in (target.labels, target.points)
                                   or getattr(event.value, "name", None) == target.image_name):
            self.stop()

    # -- on and off -----------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.target is not None

    def _toggled(self, checked: bool) -> None:
        if checked:
            self.start()
        else:
            self.stop()

    def start(self) -> None:
        """Load the click model in a worker; the layers come when it is loaded."""
        try:
            target = self._new_target()
        except Exception as error:
            self._refuse(error)
            return
        self._loading = target
        self.controls.set_status(f"Loading {target.choice.name}…")
        start_engine_task(lambda should_stop: self._load_steps(target), description="Loading the click model",
                          on_done=lambda model: self._loaded(target, model), on_error=self._refuse)

    def _new_target(self) -> ClickTarget:
        from napari_lgms.errors import InputError

        widget = self.widget
        image_layer = widget.layers.image_layer()
        if image_layer is None:
            raise InputError("no image layer chosen; open an image first")
        choice = self.click_choice()
        if choice is None:
            raise InputError(unavailable_reason(widget.current_choice(), widget.models_ready))
        channel_axis = geo.channel_axis_for(image_layer, choice.in_channels)
        axes = geo.spatial_layer_axes(image_layer, channel_axis)
        image = geo.image_array(image_layer)
        shape = tuple(image.shape[a] for a in range(image.ndim) if a != channel_axis)
        if len(shape) not in (2, 3) or choice.spatial_dims > len(shape):
            raise InputError(f"{choice.name} is a {choice.spatial_dims}D model; the image "
                             f"{image_layer.name!r} has {len(shape)} spatial axes")
        slice_axis = None
        if len(shape) == 3 and choice.spatial_dims == 2:
            slice_axis = geo.current_slice_axis(self.viewer, image_layer, axes)
        return ClickTarget(image_layer.name, image, choice, widget.device_combo.currentText(), channel_axis,
                           axes, shape, slice_axis, geo.spatial_geometry(image_layer, axes),
                           widget.current_choice(), spacing=geo.spacing_in_mm(image_layer, axes))

    def _load_steps(self, target: ClickTarget):
        """Worker thread: load (or reuse) the click model; napari's first-Labels-layer work too."""
        from napari_lgms._device import select_device
        from napari_lgms.widgets._segment_layers import first_run_setup

        yield from ()
        key = (target.choice.source, target.device)
        with first_run_setup():
            if key not in self._models:
                self._models[key] = load_choice(target.choice.source, target.choice.trained, target.device)
        target.device = str(select_device(target.device))
        return self._models[key]

    def _loaded(self, target: ClickTarget, model) -> None:
        if self._loading is not target:
            return  # turned off (or another image chosen) while loading
        self._loading = None
        if target.image_name not in self.viewer.layers:
            self._refuse(RuntimeError(f"the image {target.image_name!r} is no longer open"))
            return
        target.model = model
        target.labels = self._labels_layer(target)
        target.points = self._points_layer(target)
        self.target = target
        self._recorded = list(target.labels.metadata[METADATA_KEY].get("clicks") or [])
        self.object = ObjectClicks(int(target.labels.selected_label))
        self.widget.session.last_output = target.labels  # "Save correction" falls back on it
        self.viewer.layers.selection.active = target.points
        self._show_state()

    def _refuse(self, error: BaseException) -> None:
        self._loading = None
        notify_error(error)
        self._set_checked(False)
        self.update_availability()
        self.controls.set_status(f"Error: {one_line(error)}")

    def stop(self) -> None:
        """End click mode: the masks stay, the points go; queued clicks are still predicted."""
        self._loading = None
        target, self.target, self.object = self.target, None, None
        if target is not None:
            _remove_callback(target.points, self._on_mouse)
            if target.points in self.viewer.layers:
                set_points(target.points, np.empty((0, len(target.spatial_shape))), np.empty((0, 4)))
        self._set_checked(False)
        self.controls.show_session(False, False)
        self.update_availability()

    def _set_checked(self, checked: bool) -> None:
        button = self.controls.mode_button
        button.blockSignals(True)
        button.setChecked(checked)
        button.blockSignals(False)

    # -- the layers -----------------------------------------------------------------------------
    def _labels_layer(self, target: ClickTarget):
        """The image's Labels layer (Segment's output choice, else "<image> segmentation"), made if absent."""
        layers = self.viewer.layers
        name = f"{target.image_name} segmentation"
        for candidate in (self.widget.output_combo.currentText(), name):
            layer = layer_named(layers, candidate)
            if type(layer).__name__ == "Labels" and tuple(np.shape(layer.data)) == target.spatial_shape:
                break
        else:
            empty = np.zeros(target.spatial_shape, np.uint8)
            layer = self.viewer.add_labels(empty, name=name, **target.geometry)
        if METADATA_KEY not in layer.metadata:
            layer.metadata[METADATA_KEY] = self._new_metadata(target, np.array(layer.data, copy=True))
        return layer

    def _new_metadata(self, target: ClickTarget, prediction: np.ndarray) -> dict:
        """What "Save correction" needs of a layer click mode made: what it held before the clicks
        as the prediction, the automatic model as the model corrected."""
        automatic = target.automatic if not takes_clicks(target.automatic) else None
        parent = target.choice.card.lineage.get("parent") if target.choice.card is not None else None
        return {
            "prediction": prediction,
            "model": automatic.name if automatic is not None else (parent or target.choice.name),
            "model_source": automatic.source if automatic is not None else target.choice.source,
            "model_dims": target.choice.spatial_dims,
            "image_layer": target.image_name,
            "channel_axis": target.channel_axis,
            "spatial_axes": target.spatial_axes,
            "slice_axis": target.slice_axis or 0,
            "roi": None,
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def _points_layer(self, target: ClickTarget):
        """The "clicks" Points layer over the image (reused when it has the image's dimensions)."""
        layers = self.viewer.layers
        ndim = len(target.spatial_shape)
        layer = layer_named(layers, CLICKS_LAYER)
        if layer is not None and (type(layer).__name__ != "Points" or layer.ndim != ndim):
            layers.remove(layer)
            layer = None
        size = max(3.0, 0.015 * max(target.spatial_shape[-2:]))
        if layer is None:
            layer = self.viewer.add_points(np.empty((0, ndim)), name=CLICKS_LAYER, ndim=ndim, size=size,
                                           face_color=np.array(POSITIVE_COLOUR), border_color="white",
                                           out_of_slice_display=False, **target.geometry)
        else:
            layer.scale, layer.translate = target.geometry["scale"], target.geometry["translate"]
            layer.data = np.empty((0, ndim))
            layer.current_size = size
            layer.out_of_slice_display = False
            position = next(i for i, candidate in enumerate(layers) if candidate is layer)
            layers.move(position, len(layers))  # over the image opened since it was made
        layer.mode = "pan_zoom"
        _remove_callback(layer, self._on_mouse)
        layer.mouse_drag_callbacks.append(self._on_mouse)
        return layer

    # -- clicks ---------------------------------------------------------------------------------
    def _on_mouse(self, layer, event):
        """Points layer mouse callback: a press and release without a drag is a click."""
        if not _alive(self.controls):
            _remove_callback(layer, self._on_mouse)
            return
        if event.button not in (1, 2):
            return
        pressed_at = np.asarray(getattr(event, "pos", (0, 0)), float)
        position = tuple(event.position)
        negative = event.button == 2 or "Shift" in event.modifiers
        yield
        while event.type == "mouse_move":
            if np.abs(np.asarray(getattr(event, "pos", pressed_at), float) - pressed_at).max() > DRAG_PIXELS:
                return
            yield
        self.click(position, positive=not negative)

    def click(self, world_position, positive: bool = True) -> bool:
        """A click at ``world_position`` (viewer world coordinates, as a mouse event gives them);
        False when it was not taken (click mode off, 3D view, outside the image)."""
        started = time.perf_counter()
        position = self._index_position(world_position)
        if position is None:
            return False
        if int(self.target.labels.selected_label) != self.object.label:  # the user chose another label
            self._new_object(int(self.target.labels.selected_label))
        obj = self.object
        plane = obj.plane(self.target.plane_of(position))
        click = Click(position, bool(positive), time.monotonic())
        plane.clicks.append(click)
        obj.history.append(plane)
        last = self.pending[-1] if self.pending else None
        if last is not None and last.plane is plane:
            last.clicks.append(click)
        else:
            self.pending.append(Job(self.target, plane, clicks=[click]))
        self._after_change()
        self.gui_ms.append((time.perf_counter() - started) * 1000)
        return True

    def _index_position(self, world_position) -> tuple[int, ...] | None:
        """Image spatial index coordinates of a click, or None (with a status) when it is not usable."""
        target = self.target
        if target is None:
            return None
        if self.viewer.dims.ndisplay != 2:
            self.controls.set_status("Clicks work in the 2D view.")
            return None
        image_layer = self.viewer.layers[target.image_name]
        data = np.asarray(image_layer.world_to_data(np.asarray(world_position, float)), float)
        index = np.round(data[target.spatial_axes]).astype(int)
        if np.any(index < 0) or np.any(index >= np.asarray(target.spatial_shape)):
            self.controls.set_status("That click is outside the image.")
            return None
        return tuple(int(i) for i in index)

    def undo(self) -> None:
        """Take back the last click of the object: its point now, its effect when predicted."""
        obj = self.object
        if obj is None or not obj.history:
            return
        plane = obj.history.pop()
        click = plane.clicks.pop()
        last = self.pending[-1] if self.pending else None
        if last is not None and last.plane is plane and last.clicks and last.clicks[-1] is click:
            last.clicks.pop()
            if not last.clicks and not last.undos:
                self.pending.pop()
        elif last is not None and last.plane is plane and not last.clicks:
            last.undos += 1
        else:
            self.pending.append(Job(self.target, plane, undos=1))
        self._after_change()

    def next_object(self) -> None:
        """Keep the object; the next clicks make a new one, labelled one more than the layer's largest."""
        target, obj = self.target, self.object
        if target is None:
            return
        mine = obj.label if obj.clicks() else 0
        label = max(int(np.max(target.labels.data)), mine) + 1
        if label > np.iinfo(target.labels.data.dtype).max:
            target.labels.data = target.labels.data.astype(np.uint32)
        self._new_object(label)
        target.labels.selected_label = label
        self._after_change()

    def _new_object(self, label: int) -> None:
        """Keep the current object's clicks in the record and start an object labelled ``label``."""
        self._recorded += click_records(self.object.clicks(), self.object.label)
        self.object = ObjectClicks(label)

    def _after_change(self) -> None:
        self._show_points()
        self._record()
        self._start_next()
        self._show_state()

    def _show_points(self) -> None:
        clicks = self.object.clicks()
        positions = np.array([c.position for c in clicks], float).reshape(-1, len(self.target.spatial_shape))
        colours = np.array([POSITIVE_COLOUR if c.positive else NEGATIVE_COLOUR for c in clicks])
        set_points(self.target.points, positions, colours.reshape(-1, 4))

    def _record(self) -> None:
        """The layer's clicks metadata: finished objects' clicks and the current object's."""
        meta = self.target.labels.metadata.get(METADATA_KEY)
        if meta is not None:
            meta["clicks"] = self._recorded + click_records(self.object.clicks(), self.object.label)
            meta["click_model"] = self.target.choice.name

    # -- the worker -----------------------------------------------------------------------------
    def _start_next(self) -> None:
        """Start the oldest queued job unless a prediction runs (one at a time)."""
        if self.running is not None or not self.pending:
            return
        from napari.qt.threading import create_worker

        job = self.pending.pop(0)
        job.shown, job.labels_data = job.plane.shown, job.target.labels.data
        self.running = job
        worker = create_worker(returning_failures(predict), job, _start_thread=False)
        connect_while_alive(worker.returned, self.controls, self._predicted)  # failures too: see _workers
        worker.start()
        self._show_state()

    def _predicted(self, result: JobResult | Failure) -> None:
        """Main thread: keep the session; write the mask unless newer work for its plane is queued."""
        if isinstance(result, Failure):
            self._failed(result.error)
            return
        started = time.perf_counter()
        job, self.running = result.job, None
        job.plane.session = result.session
        stale = any(queued.plane is job.plane for queued in self.pending)
        labels = job.target.labels
        if not stale and labels in self.viewer.layers and np.shape(labels.data) == job.target.spatial_shape:
            write_object(labels, job.target, result)
            job.plane.shown = result.mask
            if job.clicks:
                self._last_latency = time.monotonic() - job.clicks[-1].at
            self._last_ignored = result.ignored
            self.write_ms.append((time.perf_counter() - started) * 1000)
        self._start_next()
        self._show_state()

    def _failed(self, error: BaseException) -> None:
        """A prediction failed: the queued work of that session is dropped and click mode ends."""
        self.running = None
        self.pending.clear()
        notify_error(error)
        self.stop()
        self.controls.set_status(f"Error: {one_line(error)}")

    @property
    def busy(self) -> bool:
        """Whether a prediction runs or waits."""
        return self.running is not None or bool(self.pending)

    # -- status ---------------------------------------------------------------------------------
    def _show_state(self) -> None:
        obj = self.object
        if self.target is None or obj is None:
            return
        self._set_checked(True)
        clicks = obj.clicks()
        self.controls.show_session(True, bool(clicks))
        positive = sum(c.positive for c in clicks)
        count = counted(len(clicks), "click")
        text = f"Label {obj.label}: {count} ({positive}+ {len(clicks) - positive}−)"
        if self.busy:
            text += ", predicting…"
        elif not clicks:
            text = f"Label {obj.label}: click the object (Shift-click: not the object)"
        elif self._last_ignored:
            text += ": the model did not follow the last one; click nearby, or paint that spot"
        elif self._last_latency is not None:
            text += f", last {self._last_latency * 1000:.0f} ms"
        self.controls.set_status(text)


def set_points(points, positions: np.ndarray, colours: np.ndarray) -> None:
    """Show ``positions`` (inside the image) with ``colours`` (RGBA rows) on the Points layer.

    The layer's ``data`` and ``affine`` events are held back: napari answers each by recomputing
    the viewer's dimensions from every layer (``ViewerModel._on_layers_change``), which made a
    click's points update 10-35 ms instead of 5-8 ms (512x512 image, 2 busy cores). Clicks are
    always inside the image, so the viewer's extent cannot change; the layer still redraws.
    """
    with points.events.data.blocker(), points.events.affine.blocker():
        points.data = positions
    if len(colours):
        points.face_color = colours


def _remove_callback(layer, callback) -> None:
    if layer is not None and callback in layer.mouse_drag_callbacks:
        layer.mouse_drag_callbacks.remove(callback)


def _alive(widget) -> bool:
    try:
        widget.objectName()
    except RuntimeError:
        return False
    return True
