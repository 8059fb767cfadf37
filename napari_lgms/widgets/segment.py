"""The Segment widget: pick an image and a model, choose where to segment, get a Labels layer.

Three parts: :class:`SegmentLayout` (the controls; fields scroll, the Segment
button and the status stay in view), :class:`~napari_lgms.widgets._segment_layers.LayerControls`
(which image, which model for it, which output layer) and :class:`SegmentSession`
(the runs); the "Clicks" section is :mod:`~napari_lgms.widgets._click_mode`.
Listing the models the first time, importing the engine, loading
the model and running it happen in napari thread workers; so does everything
about the result that does not touch the viewer (the labels in the image's
shape, the copy kept as the prediction, the count for the log and, on the
first run, napari's first-Labels-layer work). The result lands in the viewer
in the worker's ``returned`` handler, on the main thread: a new Labels layer,
or the chosen one's ``data`` replaced; the view moves to the image when it is
out of view.
The labels layer remembers the model's original prediction in
``layer.metadata["napari_lgms"]`` so a later "Save correction" can store the
pair (prediction, corrected mask) for fine-tuning. The status says which model
ran, one pass or averaged over flips, and how long it took; every run is a line
in the session log.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_lgms.errors import InputError
from napari_lgms.widgets import _layer_geometry as geo
from napari_lgms.widgets._click_mode import ClickControls, ClickMode
from napari_lgms.widgets._layout import (
    DockBody,
    Section,
    button_row,
    compact_form,
    narrow_combo,
    scrolling_dock,
    wrapping_label,
)
from napari_lgms.widgets._segment_layers import NEW_LAYER, LayerControls, first_run_setup
from napari_lgms.widgets._session_log import append_record
from napari_lgms.widgets._shared import (
    DEVICE_CHOICES,
    ModelChoice,
    choice_for_file,
    connect_while_alive,
    hub,
    list_models_then,
    load_choice,
)
from napari_lgms.widgets._workers import notify_error, one_line, start_engine_task

METADATA_KEY = "napari_lgms"
REPLACE, FILL_EMPTY = "Replace the region", "Fill only where empty"

MODE_WHOLE = "Whole image"
MODE_SLICE = "Current slice"
MODE_SLICES = "Whole volume, slice by slice (2D model)"
MODE_VOLUME = "Whole volume (3D model)"
MODE_BOX = "Inside the box (Shapes layer)"
MODE_ALL_BOXES = "Every box of a Shapes layer"
MODES = (MODE_WHOLE, MODE_SLICE, MODE_SLICES, MODE_VOLUME, MODE_BOX, MODE_ALL_BOXES)
# Prediction choices -> the engine's test_time_augmentation. One pass first: the interactive default
# (flips cost 4x in 2D, 8x in 3D for +0.5 to +2 IoU points on the shipped 2D models' validation).
PREDICTIONS = {
    "One pass (fastest)": "none",
    "Average over flips (4x in 2D, 8x in 3D)": "flips",
    "As the model card says": "auto",
}


@dataclass
class Job:
    """One engine call: an optional ROI and an optional slice (spatial index coordinates)."""

    roi: tuple | None = None
    slice_index: int | None = None


@dataclass
class RunPlan:
    """Everything a run needs, decided on the main thread before the worker starts."""

    image_name: str
    image: np.ndarray
    choice: ModelChoice
    device: str
    channel_axis: int | None
    spatial_axes: list[int]
    spatial_shape: tuple[int, ...]
    slice_axis: int
    jobs: list[Job]
    target_name: str | None
    fill_only_empty: bool
    geometry: dict = field(default_factory=dict)
    test_time_augmentation: str = "auto"
    spacing: tuple[float, ...] | None = None  # mm per spatial axis, when the layer says


@dataclass
class RunOutcome:
    plan: RunPlan
    results: list
    model_name: str
    untrained: bool
    combined: np.ndarray | None = None  # every job's labels in the image's spatial shape
    regions: list = field(default_factory=list)  # where each job applies
    prediction: np.ndarray | None = None  # for a new layer: a copy of ``combined`` (never painted)
    labelled: int = 0  # labelled pixels or voxels in ``combined``


def _scaled_progress(steps, part: int, parts: int):
    """Re-yield one engine run's Progress as part ``part`` of ``parts``; return its result."""
    from napari_lgms.inference import Progress

    scale = 1000
    while True:
        try:
            record = next(steps)
        except StopIteration as stop:
            return stop.value
        fraction = record.done / record.total if record.total else 0.0
        message = record.message if parts == 1 else f"{record.message} (box {part + 1} of {parts})"
        yield Progress(int(scale * (part + fraction)), scale * parts, message)




class SegmentLayout(DockBody):
    """The Segment widget's controls: fields that scroll, the Segment button and status always in view."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.image_combo = QComboBox()
        self.image_pin = QCheckBox("Keep")
        self.image_pin.setToolTip("Keep this image chosen; otherwise the box follows the image "
                                  "you add or select")
        self.model_combo = QComboBox()
        self.model_combo.addItem("listing models…")
        self.model_pin = QCheckBox("Keep")
        self.model_pin.setToolTip("Use this model for every image; otherwise each image has its own model")
        self.model_file_button = QPushButton("File…")
        self.model_file_button.setToolTip("A model file: a .json card or a .safetensors beside its card")
        self.card_label = wrapping_label(selectable=True)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(MODES)
        self.shapes_combo = QComboBox()
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICE_CHOICES)
        self.prediction_combo = QComboBox()
        self.prediction_combo.addItems(list(PREDICTIONS))
        self.prediction_combo.setToolTip("Averaging over flipped copies is usually a little more accurate "
                                         "and takes that many more passes of the network")
        self.output_combo = QComboBox()
        self.merge_combo = QComboBox()
        self.merge_combo.addItems([REPLACE, FILL_EMPTY])
        self.merge_combo.setToolTip("Fill only where empty keeps what you already painted")
        self.run_button = QPushButton("Segment")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.status_label = wrapping_label("Ready.", lines=2)
        self.click_controls = ClickControls()
        for combo in (self.image_combo, self.model_combo, self.mode_combo, self.shapes_combo,
                      self.output_combo, self.prediction_combo, self.merge_combo, self.device_combo):
            narrow_combo(combo)

    def lay_out(self, corrections: QWidget) -> None:
        image_row = QHBoxLayout()
        image_row.addWidget(self.image_combo, 1)
        image_row.addWidget(self.image_pin)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.model_pin)
        form = compact_form()
        form.addRow("Image", image_row)
        form.addRow("Model", model_row)
        form.addRow(self.card_label)
        form.addRow("Prediction", self.prediction_combo)
        form.addRow("Where", self.mode_combo)
        more = compact_form()
        more.addRow("Boxes from", self.shapes_combo)
        more.addRow("Output", self.output_combo)
        more.addRow("Existing layer", self.merge_combo)
        more.addRow("Device", self.device_combo)
        more.addRow("Model file", self.model_file_button)
        more_box = QWidget()
        more_box.setLayout(more)
        self.more_section = Section("More options", more_box)
        body = QVBoxLayout()
        body.addLayout(form)
        body.addWidget(self.click_controls)
        body.addWidget(self.more_section)
        body.addWidget(corrections)
        footer = QVBoxLayout()
        footer.addLayout(button_row(self.run_button, self.cancel_button))
        footer.addWidget(self.status_label)
        self.scroll = scrolling_dock(self, body, footer)


class SegmentWidget(SegmentLayout):
    """Dock widget: segment an image layer with a model (npe2 widget, ``napari_viewer`` first)."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        from napari_lgms.widgets.corrections import CorrectionsPanel

        self.viewer = napari_viewer
        self._choices: list[ModelChoice] = []
        self._extra_choices: list[ModelChoice] = []
        self._pending_source: str | None = None  # a model asked for before the list was ready
        self.models_ready = False
        self.corrections = CorrectionsPanel(self.viewer, lambda: self.session.last_output)
        self.lay_out(self.corrections)
        self.layers = LayerControls(napari_viewer, self, self._model_changed)
        self.session = SegmentSession(self)
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        self.click_mode = ClickMode(self, self.click_controls)
        self.prediction_combo.currentIndexChanged.connect(self._show_card)
        self.layers.refresh()
        self.refresh_models()
        self.model_file_button.clicked.connect(self._pick_model_file)
        self.mode_combo.currentIndexChanged.connect(self._update_enabled)
        self.output_combo.currentIndexChanged.connect(self._update_enabled)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        connect_while_alive(hub.models_changed, self, self.refresh_models)
        connect_while_alive(hub.model_chosen, self, self.select_model)
        self._update_enabled()

    # what tests and other widgets read
    task = property(lambda self: self.session.task)
    last_output = property(lambda self: self.session.last_output)
    last_outcome = property(lambda self: self.session.last_outcome)

    def refresh_layers(self, event=None) -> None:
        self.layers.refresh()

    # -- the model list ------------------------------------------------------------------------
    @property
    def choices(self) -> tuple[ModelChoice, ...]:
        """The models offered, in the order of the model list."""
        return tuple(self._choices)

    def refresh_models(self) -> None:
        """Re-read the model folders (a fine-tuned version appears at once; the first time, in a worker)."""
        list_models_then(self, self._set_choices)

    def _set_choices(self, listed) -> None:
        if isinstance(listed, Exception):
            notify_error(listed)
            listed = []
        current = self.current_choice() if self.models_ready else None
        self._choices = list(listed) + self._extra_choices
        self.layers.choices = self._choices
        self.models_ready = True
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItems([choice.label for choice in self._choices])
        self.model_combo.setCurrentIndex(-1)
        self.model_combo.blockSignals(False)
        wanted = self._pending_source or (current.source if current is not None else None)
        self._pending_source = None
        if wanted is None or not self._select(wanted):
            self.layers.apply_model_for_image()  # the model it had is gone: the image's own model
        self.session.forget_models()

    def select_model(self, source: str) -> None:
        """Select a model deliberately (``hub.model_chosen``): the current image's model from now on."""
        if not self.models_ready:
            self._pending_source = str(source)
            return
        if self._select(source):
            self.layers.remember_choice(self.model_combo.currentIndex())

    def _select(self, source: str) -> bool:
        index = self.layers.index_of(source)
        if index is None:
            return False
        if index == self.model_combo.currentIndex():
            self._model_changed()
        self.model_combo.setCurrentIndex(index)
        return True

    def current_choice(self) -> ModelChoice | None:
        index = self.model_combo.currentIndex()
        return self._choices[index] if 0 <= index < len(self._choices) else None

    def _model_changed(self, *_) -> None:
        """Show the card; the status names the model now selected (and warns on another modality)."""
        self._show_card()
        choice = self.current_choice()
        if choice is not None and not self.session.running:
            warning = self.layers.modality_warning()
            self.status_label.setText(warning or f"Model: {choice.label}.")

    def _show_card(self, *_) -> None:
        choice = self.current_choice()
        prediction = PREDICTIONS[self.prediction_combo.currentText()]
        self.card_label.setText(choice.text(prediction) if choice else "No model available.")
        self.card_label.setToolTip(choice.details if choice else "")
        self._update_enabled()

    def _pick_model_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a model", "",
                                              "Model (*.json *.safetensors);;All files (*)")
        if path:
            self.add_model_file(path)

    def add_model_file(self, path: str) -> None:
        """Add a model file to the list and select it (errors become a notification)."""
        try:
            choice = choice_for_file(path)
        except Exception as error:
            notify_error(error)
            return
        self._extra_choices = [c for c in self._extra_choices if c.source != choice.source] + [choice]
        self._pending_source = None if self.models_ready else choice.source
        self.refresh_models()
        self.select_model(choice.source)

    def _update_enabled(self, *_) -> None:
        mode = self.mode_combo.currentText()
        self.shapes_combo.setEnabled(mode in (MODE_BOX, MODE_ALL_BOXES))
        self.merge_combo.setEnabled(self.output_combo.currentText() != NEW_LAYER)
        self.run_button.setEnabled(self.models_ready and not self.session.running)

    # -- the plan -------------------------------------------------------------------------------
    def plan(self) -> RunPlan:
        """Turn the widget's choices into a :class:`RunPlan`; InputError says what is missing."""
        image_layer = self.layers.image_layer()
        if image_layer is None:
            raise InputError("no image layer chosen; open an image or a sample (File > Open Sample)")
        choice = self.current_choice()
        if choice is None:
            raise InputError("no model chosen; pick one in the list or open a model file")
        image_name = image_layer.name
        image = geo.image_array(image_layer)
        channel_axis = geo.channel_axis_for(image_layer, choice.in_channels)
        axes = geo.spatial_layer_axes(image_layer, channel_axis)
        spatial_shape = tuple(image.shape[a] for a in range(image.ndim) if a != channel_axis)
        if len(spatial_shape) not in (2, 3):
            raise InputError(f"image {image_name!r} has {len(spatial_shape)} spatial axes; "
                             "accepted: 2D or 3D")
        volume = len(spatial_shape) == 3
        if choice.spatial_dims == 3 and not volume:
            raise InputError(f"{choice.label} is a 3D model; "
                             f"choose a 2D model for the 2D image {image_name!r}")
        slice_axis = geo.current_slice_axis(self.viewer, image_layer, axes) if volume else 0
        jobs = self._jobs(image_layer, axes, spatial_shape, slice_axis, choice.spatial_dims)
        return RunPlan(
            image_name=image_name, image=image, choice=choice, device=self.device_combo.currentText(),
            channel_axis=channel_axis, spatial_axes=axes, spatial_shape=spatial_shape, slice_axis=slice_axis,
            jobs=jobs, target_name=self._target(spatial_shape),
            fill_only_empty=self.merge_combo.currentText() == FILL_EMPTY,
            geometry=geo.spatial_geometry(image_layer, axes),
            test_time_augmentation=PREDICTIONS[self.prediction_combo.currentText()],
            spacing=geo.spacing_in_mm(image_layer, axes),
        )

    def _jobs(self, image_layer, axes, spatial_shape, slice_axis, dims) -> list[Job]:
        volume = len(spatial_shape) == 3
        mode = self.mode_combo.currentText()
        if mode == MODE_WHOLE or (not volume and mode in (MODE_SLICE, MODE_SLICES)):
            return [Job()]
        if mode == MODE_SLICE:
            if dims == 3:
                raise InputError("a 3D model segments volumes, not single slices; "
                                 "choose 'Whole volume (3D model)'")
            return [Job(slice_index=geo.current_slice_index(self.viewer, image_layer, axes, slice_axis,
                                                            spatial_shape))]
        if mode == MODE_SLICES:
            if dims == 3:
                raise InputError("slice by slice needs a 2D model; "
                                 "with a 3D model choose 'Whole volume (3D model)'")
            return [Job()]
        if mode == MODE_VOLUME:
            if dims != 3 or not volume:
                raise InputError("'Whole volume (3D model)' needs a 3D model and a 3D image; "
                                 "for a 2D model choose 'Whole volume, slice by slice'")
            return [Job()]
        shapes_name = self.shapes_combo.currentText()
        if shapes_name not in self.viewer.layers:
            raise InputError("no Shapes layer for the box; "
                             "add one (Layers > New Shapes) and draw a rectangle")
        boxes = geo.boxes_from_shapes(self.viewer, self.viewer.layers[shapes_name], image_layer, axes,
                                      spatial_shape, only_selected=(mode == MODE_BOX))
        return [_job_for_box(box, volume, dims, slice_axis, spatial_shape) for box in boxes]

    def _target(self, spatial_shape) -> str | None:
        target = self.output_combo.currentText()
        if target == NEW_LAYER:
            return None
        existing_shape = tuple(np.shape(self.viewer.layers[target].data))
        if existing_shape != spatial_shape:
            raise InputError(f"labels layer {target!r} has shape {existing_shape}, the image "
                             f"{spatial_shape}; choose '{NEW_LAYER}' or a layer of the same shape")
        return target

    # -- running --------------------------------------------------------------------------------
    def run(self) -> None:
        """Start segmenting (Segment button); one run at a time."""
        if self.session.running:
            return
        try:
            plan = self.plan()
        except Exception as error:
            self.session.fail(error)
            return
        self.session.start(plan)

    def cancel(self) -> None:
        self.session.cancel()


def _job_for_box(box, volume: bool, dims: int, slice_axis: int, spatial_shape) -> Job:
    roi = list(box.roi)
    if not volume:
        return Job(roi=tuple(roi))
    if dims == 2 and slice_axis in box.flat_axes:
        return Job(roi=tuple(roi), slice_index=roi[slice_axis][0])
    for axis in box.flat_axes:  # a box drawn on one slice spans the whole depth for a 3D model
        roi[axis] = (0, spatial_shape[axis])
    return Job(roi=tuple(roi))


def _combined_labels(plan: RunPlan, results) -> tuple[np.ndarray, list]:
    """Every job's labels placed in one array of the image's spatial shape, and each job's region."""
    combined, regions = None, []
    for job, result in zip(plan.jobs, results):
        region = geo.region_slices(plan.spatial_shape, job.roi, plan.slice_axis, job.slice_index)
        full = geo.place(result.labels, plan.spatial_shape, region, plan.slice_axis, job.slice_index)
        if combined is None:
            combined = full
        else:
            combined[region] = np.maximum(combined[region], full[region])
        regions.append(region)
    return combined, regions


def _prediction_note(results) -> str:
    flipped = any(result.test_time_augmentation == "flips" for result in results)
    return "averaged over flips" if flipped else "one pass"


class SegmentSession:
    """One Segment widget's runs: the worker (model loading and the engine), writing the result, the log."""

    def __init__(self, widget: SegmentWidget):
        self.widget = widget
        self.viewer = widget.viewer
        self.task = None
        self.last_output = None  # the Labels layer the last run wrote
        self.last_outcome: RunOutcome | None = None
        self._models: dict[tuple[str, str], object] = {}
        self._started = 0.0
        self._plan: RunPlan | None = None  # the run under way (for the session log)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.finished

    def forget_models(self) -> None:
        self._models.clear()

    def start(self, plan: RunPlan) -> None:
        ui = self.widget
        ui.run_button.setEnabled(False)
        ui.cancel_button.setEnabled(True)
        ui.status_label.setText(f"Segmenting {plan.image_name} with {plan.choice.label}…")
        self._started, self._plan = time.monotonic(), plan
        self.task = start_engine_task(
            lambda should_stop: self._steps(plan, should_stop),
            description=f"Segmenting {plan.image_name}",
            on_done=self._show_result,
            on_error=self.fail,
            on_finished=self._finished,
        )

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _model_for(self, choice: ModelChoice, device: str):
        key = (choice.source, device)
        if key not in self._models:
            self._models[key] = load_choice(choice.source, choice.trained, device)
        return self._models[key]

    def _steps(self, plan: RunPlan, should_stop):
        """Worker thread: import the engine, load the model (with the first run's setup, see
        :func:`first_run_setup`) and run the engine once per job."""
        from napari_lgms.inference import Progress, segment_steps

        yield Progress(0, 1, "loading the model")
        with first_run_setup():
            model = self._model_for(plan.choice, plan.device)
        results = []
        for part, job in enumerate(plan.jobs):
            steps = segment_steps(plan.image, model, channel_axis=plan.channel_axis, roi=job.roi,
                                  spacing=plan.spacing, slice_axis=plan.slice_axis,
                                  slice_index=job.slice_index,
                                  test_time_augmentation=plan.test_time_augmentation, should_stop=should_stop)
            result = yield from _scaled_progress(steps, part, len(plan.jobs))
            if result is None:
                return None
            results.append(result)
        combined, regions = _combined_labels(plan, results)  # the array work, off the GUI thread
        return RunOutcome(plan, results, model.card.name, not plan.choice.trained, combined, regions,
                          prediction=combined.copy() if plan.target_name is None else None,
                          labelled=int(np.count_nonzero(combined)))

    def _output_layer(self, plan: RunPlan, combined, regions):
        """The labels layer to write: the chosen one when it still has the image's shape, else a new one."""
        layers = self.viewer.layers
        target = layers[plan.target_name] if plan.target_name in layers else None
        if target is not None and tuple(np.shape(target.data)) == plan.spatial_shape:
            # merged here, not in the worker: what the user painted during the run counts
            data = np.array(target.data, copy=True)
            for region in regions:
                geo.merge_in_place(data, combined, region, plan.fill_only_empty)
            target.data = data
            return target
        return self.viewer.add_labels(combined, name=f"{plan.image_name} segmentation", **plan.geometry)

    def _show_result(self, outcome: RunOutcome) -> None:
        """Main thread: write the labels into the viewer and remember the prediction."""
        plan = outcome.plan
        layer = self._output_layer(plan, outcome.combined, outcome.regions)
        layer.metadata[METADATA_KEY] = _metadata(layer, outcome)
        self.last_output, self.last_outcome = layer, outcome
        seconds = sum(result.seconds for result in outcome.results)
        devices = ", ".join(sorted({result.device for result in outcome.results}))
        note = " — untrained model, random output" if outcome.untrained else ""
        self.widget.status_label.setText(f"{outcome.model_name}: {_prediction_note(outcome.results)}, "
                                         f"{seconds:.2f} s on {devices}{note}")
        image = self.viewer.layers[plan.image_name] if plan.image_name in self.viewer.layers else None
        if image is not None and not geo.in_view(self.viewer, image):
            self.viewer.reset_view(layers=[image])
        self._log(outcome.model_name, {"outcome": "done", "labels_layer": layer.name,
                                       "engine_seconds": round(seconds, 3),
                                       "test_time_augmentation": _prediction_note(outcome.results),
                                       "labelled_voxels": outcome.labelled})

    def _log(self, model: str, result: dict) -> None:
        """One session-log line for the run under way (done, cancelled or failed)."""
        plan, store = self._plan, self.widget.corrections.store
        append_record(
            store.root if store is not None else None, "segment", model=model,
            image=plan.image_name, shape=plan.image.shape,
            settings={"model_source": plan.choice.source, "where": self.widget.mode_combo.currentText(),
                      "prediction": plan.test_time_augmentation, "device": plan.device,
                      "boxes": len(plan.jobs) if plan.jobs[0].roi is not None else 0,
                      "fill_only_empty": plan.fill_only_empty},
            seconds=time.monotonic() - self._started, result=result,
        )

    def fail(self, error: BaseException) -> None:
        notify_error(error)
        self.widget.status_label.setText(f"Error: {one_line(error)}")
        if self.running:  # the worker failed (not the plan: nothing ran then)
            self._log(self._plan.choice.name, {"outcome": "error", "message": one_line(error)})

    def _finished(self, cancelled: bool) -> None:
        self.widget.cancel_button.setEnabled(False)
        self.widget._update_enabled()
        if cancelled:
            self.widget.status_label.setText("Cancelled; nothing was changed.")
            self._log(self._plan.choice.name, {"outcome": "cancelled"})


def _metadata(layer, outcome: RunOutcome) -> dict:
    """What a later "Save correction" needs: the prediction over the whole image, the model, the geometry."""
    plan = outcome.plan
    prediction = layer.metadata.get(METADATA_KEY, {}).get("prediction")
    if prediction is not None and np.shape(prediction) == plan.spatial_shape:
        for region in outcome.regions:
            prediction[region] = outcome.combined[region]
    else:  # combined is zero outside the regions: a copy of it is the whole prediction
        prediction = outcome.prediction if outcome.prediction is not None else outcome.combined.copy()
    last = plan.jobs[-1]
    return {
        "prediction": prediction,
        "model": outcome.model_name,
        "model_source": plan.choice.source,
        "model_dims": plan.choice.spatial_dims,
        "image_layer": plan.image_name,
        "channel_axis": plan.channel_axis,
        "spatial_axes": plan.spatial_axes,
        "slice_axis": plan.slice_axis,
        "roi": [list(r) for r in last.roi] if last.roi is not None and len(plan.jobs) == 1 else None,
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
