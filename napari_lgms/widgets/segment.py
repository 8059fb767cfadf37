"""The Segment widget: pick an image and a model, choose where to segment, get a Labels layer.

The run happens in a napari thread worker (model loading included); the
result lands in the viewer in the worker's ``returned`` handler, on the main
thread. The labels layer remembers the model's original prediction in
``layer.metadata["napari_lgms"]`` so a later "Save correction" can store the
pair (prediction, corrected mask) for fine-tuning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_lgms.errors import InputError
from napari_lgms.samples import MODEL_HINT_KEY
from napari_lgms.widgets import _layer_geometry as geo
from napari_lgms.widgets._shared import (
    DEVICE_CHOICES,
    ModelChoice,
    choice_for_file,
    connect_while_alive,
    default_index,
    hub,
    load_choice,
    model_choices,
    suggested_index,
)
from napari_lgms.widgets._workers import notify_error, one_line, start_engine_task

METADATA_KEY = "napari_lgms"
NEW_LAYER = "New Labels layer"
REPLACE, FILL_EMPTY = "Replace the region", "Fill only where empty"

MODE_WHOLE = "Whole image"
MODE_SLICE = "Current slice"
MODE_SLICES = "Whole volume, slice by slice (2D model)"
MODE_VOLUME = "Whole volume (3D model)"
MODE_BOX = "Inside the box (Shapes layer)"
MODE_ALL_BOXES = "Every box of a Shapes layer"
MODES = (MODE_WHOLE, MODE_SLICE, MODE_SLICES, MODE_VOLUME, MODE_BOX, MODE_ALL_BOXES)
# Prediction choices -> the engine's test_time_augmentation.
PREDICTIONS = {
    "As the model card says": "auto",
    "One pass (fastest)": "none",
    "Average over flips (4x in 2D, 8x in 3D)": "flips",
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


@dataclass
class RunOutcome:
    plan: RunPlan
    results: list
    model_name: str
    untrained: bool


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


class SegmentWidget(QWidget):
    """Dock widget: segment an image layer with a model (npe2 widget, ``napari_viewer`` first)."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._choices: list[ModelChoice] = []
        self._extra_choices: list[ModelChoice] = []
        self._models: dict[tuple[str, str], object] = {}
        self.task = None
        self.last_output = None  # the Labels layer the last run wrote
        self.last_outcome: RunOutcome | None = None
        self._model_chosen = False  # once the user picks a model, images no longer suggest one
        self._build()
        self.refresh_layers()
        self.refresh_models()
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed,
                      napari_viewer.layers.events.reordered):
            connect_while_alive(event, self, self._on_layers_changed)
        connect_while_alive(hub.models_changed, self, self.refresh_models)
        connect_while_alive(hub.model_chosen, self, self.select_model)

    # -- layout ---------------------------------------------------------------------------
    def _build(self) -> None:
        from napari_lgms.widgets.corrections import CorrectionsPanel

        self.image_combo = QComboBox()
        self.model_combo = QComboBox()
        self.model_file_button = QPushButton("File…")
        self.model_file_button.setToolTip("A model file: a .json card or a .safetensors beside its card")
        self.card_label = QLabel()
        self.card_label.setWordWrap(True)
        self.card_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
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
        self.status_label = QLabel("Ready.")
        self.status_label.setWordWrap(True)

        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.model_file_button)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)

        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Model", model_row)
        form.addRow(self.card_label)
        form.addRow("Where", self.mode_combo)
        form.addRow("Boxes from", self.shapes_combo)
        form.addRow("Device", self.device_combo)
        form.addRow("Prediction", self.prediction_combo)
        form.addRow("Output", self.output_combo)
        form.addRow("Existing layer", self.merge_combo)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.status_label)
        self.corrections = CorrectionsPanel(self.viewer, lambda: self.last_output)
        layout.addWidget(self.corrections)
        layout.addStretch(1)

        self.model_combo.currentIndexChanged.connect(self._show_card)
        self.model_combo.activated.connect(self._remember_model_choice)
        self.image_combo.currentIndexChanged.connect(self._suggest_model)
        self.model_file_button.clicked.connect(self._pick_model_file)
        self.mode_combo.currentIndexChanged.connect(self._update_enabled)
        self.output_combo.currentIndexChanged.connect(self._update_enabled)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)

    # -- lists ------------------------------------------------------------------------------
    def _layers_of(self, kind: str) -> list[str]:
        return [layer.name for layer in self.viewer.layers if type(layer).__name__ == kind]

    @staticmethod
    def _refill(combo: QComboBox, names: list[str], keep_first: list[str] = ()) -> None:
        current = combo.currentText()
        combo.blockSignals(True)
        combo.clear()
        combo.addItems(list(keep_first) + names)
        if current in list(keep_first) + names:
            combo.setCurrentText(current)
        combo.blockSignals(False)

    def _on_layers_changed(self, event=None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None and hasattr(layer, "events"):
            connect_while_alive(layer.events.name, self, self.refresh_layers)
        self.refresh_layers()

    def refresh_layers(self, event=None) -> None:
        images = self._layers_of("Image")
        previous = self.image_combo.currentText()
        self._refill(self.image_combo, images)
        if previous not in images and images:
            self.image_combo.setCurrentIndex(len(images) - 1)  # the newest image
        self._refill(self.shapes_combo, self._layers_of("Shapes"))
        self._refill(self.output_combo, self._layers_of("Labels"), [NEW_LAYER])
        self._suggest_model()
        self._update_enabled()

    def refresh_models(self) -> None:
        """Re-read the model folders (a fine-tuned version appears at once)."""
        current = self.current_choice()
        try:
            self._choices = model_choices() + self._extra_choices
        except Exception as error:  # a broken model folder must not break the widget
            notify_error(error)
            self._choices = list(self._extra_choices)
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItems([choice.label for choice in self._choices])
        if current is not None:
            self._select(current.source)
        elif self._choices:
            self.model_combo.setCurrentIndex(self._suggestion())
        self.model_combo.blockSignals(False)
        self._models.clear()
        self._show_card()

    def select_model(self, source: str) -> None:
        """Select a model deliberately (it then stays, whatever image is chosen)."""
        if self._select(source):
            self._model_chosen = True

    def _remember_model_choice(self, *_) -> None:
        self._model_chosen = True

    def _suggestion(self) -> int:
        """The model row that suits the chosen image (see :func:`suggested_index`)."""
        name = self.image_combo.currentText()
        if name not in self.viewer.layers:
            return default_index(self._choices)
        layer = self.viewer.layers[name]
        rgb = bool(getattr(layer, "rgb", False))
        spatial_ndim = min(3, max(2, layer.ndim))
        hint = (getattr(layer, "metadata", None) or {}).get(MODEL_HINT_KEY)
        return suggested_index(self._choices, spatial_ndim=spatial_ndim, channels=3 if rgb else 1, hint=hint)

    def _suggest_model(self, *_) -> None:
        if not self._model_chosen and self._choices:
            self.model_combo.setCurrentIndex(self._suggestion())

    def _select(self, source: str) -> bool:
        for index, choice in enumerate(self._choices):
            if choice.source == str(source):
                self.model_combo.setCurrentIndex(index)
                return True
        return False

    def current_choice(self) -> ModelChoice | None:
        index = self.model_combo.currentIndex() if hasattr(self, "model_combo") else -1
        return self._choices[index] if 0 <= index < len(self._choices) else None

    def _show_card(self, *_) -> None:
        choice = self.current_choice()
        self.card_label.setText(choice.summary if choice else "No model available.")
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
        self.refresh_models()
        self.select_model(choice.source)

    def _update_enabled(self, *_) -> None:
        mode = self.mode_combo.currentText()
        self.shapes_combo.setEnabled(mode in (MODE_BOX, MODE_ALL_BOXES))
        self.merge_combo.setEnabled(self.output_combo.currentText() != NEW_LAYER)

    # -- running --------------------------------------------------------------------------
    def plan(self) -> RunPlan:
        """Turn the widget's choices into a :class:`RunPlan`; InputError says what is missing."""
        layers = self.viewer.layers
        image_name = self.image_combo.currentText()
        if image_name not in layers:
            raise InputError("no image layer chosen; open an image or a sample (File > Open Sample)")
        choice = self.current_choice()
        if choice is None:
            raise InputError("no model chosen; pick one in the list or open a model file")
        image_layer = layers[image_name]
        image = geo.image_array(image_layer)
        channel_axis = geo.channel_axis_for(image_layer, choice.in_channels)
        axes = geo.spatial_layer_axes(image_layer, channel_axis)
        data_axes = [a for a in range(image.ndim) if a != channel_axis]
        spatial_shape = tuple(image.shape[a] for a in data_axes)
        if len(spatial_shape) not in (2, 3):
            raise InputError(f"image {image_name!r} has {len(spatial_shape)} spatial axes; "
                             "accepted: 2D or 3D")
        volume = len(spatial_shape) == 3
        dims = choice.spatial_dims
        mode = self.mode_combo.currentText()
        slice_axis = geo.current_slice_axis(self.viewer, image_layer, axes) if volume else 0
        if dims == 3 and not volume:
            raise InputError(f"{choice.label} is a 3D model; "
                             f"choose a 2D model for the 2D image {image_name!r}")

        if mode == MODE_WHOLE or (not volume and mode in (MODE_SLICE, MODE_SLICES)):
            jobs = [Job()]
        elif mode == MODE_SLICE:
            if dims == 3:
                raise InputError("a 3D model segments volumes, not single slices; "
                                 "choose 'Whole volume (3D model)'")
            index = geo.current_slice_index(self.viewer, image_layer, axes, slice_axis, spatial_shape)
            jobs = [Job(slice_index=index)]
        elif mode == MODE_SLICES:
            if dims == 3:
                raise InputError("slice by slice needs a 2D model; "
                                 "with a 3D model choose 'Whole volume (3D model)'")
            jobs = [Job()]
        elif mode == MODE_VOLUME:
            if dims != 3 or not volume:
                raise InputError("'Whole volume (3D model)' needs a 3D model and a 3D image; "
                                 "for a 2D model choose 'Whole volume, slice by slice'")
            jobs = [Job()]
        else:
            shapes_name = self.shapes_combo.currentText()
            if shapes_name not in layers:
                raise InputError("no Shapes layer for the box; "
                                 "add one (Layers > New Shapes) and draw a rectangle")
            boxes = geo.boxes_from_shapes(self.viewer, layers[shapes_name], image_layer, axes, spatial_shape,
                                          only_selected=(mode == MODE_BOX))
            jobs = [self._job_for_box(box, volume, dims, slice_axis, spatial_shape) for box in boxes]

        target = self.output_combo.currentText()
        target_name = None if target == NEW_LAYER else target
        if target_name is not None:
            existing_shape = tuple(np.shape(layers[target_name].data))
            if existing_shape != spatial_shape:
                raise InputError(f"labels layer {target_name!r} has shape {existing_shape}, the image "
                                 f"{spatial_shape}; choose '{NEW_LAYER}' or a layer of the same shape")
        return RunPlan(
            image_name=image_name, image=image, choice=choice, device=self.device_combo.currentText(),
            channel_axis=channel_axis, spatial_axes=axes, spatial_shape=spatial_shape, slice_axis=slice_axis,
            jobs=jobs, target_name=target_name, fill_only_empty=self.merge_combo.currentText() == FILL_EMPTY,
            geometry=geo.spatial_geometry(image_layer, axes),
            test_time_augmentation=PREDICTIONS[self.prediction_combo.currentText()],
        )

    @staticmethod
    def _job_for_box(box, volume: bool, dims: int, slice_axis: int, spatial_shape) -> Job:
        roi = list(box.roi)
        if not volume:
            return Job(roi=tuple(roi))
        if dims == 2 and slice_axis in box.flat_axes:
            return Job(roi=tuple(roi), slice_index=roi[slice_axis][0])
        for axis in box.flat_axes:  # a box drawn on one slice spans the whole depth for a 3D model
            roi[axis] = (0, spatial_shape[axis])
        return Job(roi=tuple(roi))

    def run(self) -> None:
        """Start segmenting (Segment button); one run at a time."""
        if self.task is not None and not self.task.finished:
            return
        try:
            plan = self.plan()
        except Exception as error:
            self._fail(error)
            return
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status_label.setText(f"Segmenting {plan.image_name} with {plan.choice.label}…")
        self.task = start_engine_task(
            lambda should_stop: self._steps(plan, should_stop),
            description=f"Segmenting {plan.image_name}",
            on_done=self._show_result,
            on_error=self._fail,
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
        """Worker thread: load the model and run the engine once per job."""
        from napari_lgms.inference import Progress, segment_steps

        yield Progress(0, 1, "loading the model")
        model = self._model_for(plan.choice, plan.device)
        results = []
        for part, job in enumerate(plan.jobs):
            steps = segment_steps(plan.image, model, channel_axis=plan.channel_axis, roi=job.roi,
                                  slice_axis=plan.slice_axis, slice_index=job.slice_index,
                                  test_time_augmentation=plan.test_time_augmentation, should_stop=should_stop)
            result = yield from _scaled_progress(steps, part, len(plan.jobs))
            if result is None:
                return None
            results.append(result)
        return RunOutcome(plan, results, model.card.name, not plan.choice.trained)

    def _show_result(self, outcome: RunOutcome) -> None:
        """Main thread: write the labels into the viewer and remember the prediction."""
        plan = outcome.plan
        combined = None
        regions = []
        for job, result in zip(plan.jobs, outcome.results):
            region = geo.region_slices(plan.spatial_shape, job.roi, plan.slice_axis, job.slice_index)
            full = geo.place(result.labels, plan.spatial_shape, region, plan.slice_axis, job.slice_index)
            if combined is None:
                combined = full
            else:
                combined[region] = np.maximum(combined[region], full[region])
            regions.append(region)

        layers = self.viewer.layers
        if plan.target_name is not None and plan.target_name in layers:
            layer = layers[plan.target_name]
            data = np.asarray(layer.data)
            for region in regions:
                data = geo.merge_into(data, combined, region, plan.fill_only_empty)
            layer.data = data
        else:
            layer = self.viewer.add_labels(combined, name=f"{plan.image_name} segmentation", **plan.geometry)
        previous = layer.metadata.get(METADATA_KEY, {})
        prediction = previous.get("prediction")
        if prediction is None or np.shape(prediction) != plan.spatial_shape:
            prediction = np.zeros(plan.spatial_shape, dtype=combined.dtype)
        for region in regions:
            prediction[region] = combined[region]
        last = plan.jobs[-1]
        layer.metadata[METADATA_KEY] = {
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
        self.last_output = layer
        self.last_outcome = outcome
        seconds = sum(result.seconds for result in outcome.results)
        devices = sorted({result.device for result in outcome.results})
        flipped = any(result.test_time_augmentation == "flips" for result in outcome.results)
        note = ", averaged over flips" if flipped else ""
        note += " — untrained model, random output" if outcome.untrained else ""
        self.status_label.setText(f"{outcome.model_name}: {seconds:.2f} s on {', '.join(devices)}{note}")
        self.refresh_layers()

    def _fail(self, error: BaseException) -> None:
        notify_error(error)
        self.status_label.setText(f"Error: {one_line(error)}")

    def _finished(self, cancelled: bool) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if cancelled:
            self.status_label.setText("Cancelled; nothing was changed.")
