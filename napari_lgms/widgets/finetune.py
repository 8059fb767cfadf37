"""The Fine-tune widget: improve a model on the user's corrections, then keep it or roll back.

Runs :func:`napari_lgms.training.finetuning.finetune_steps` in a napari thread
worker. While it runs: a live loss / validation Dice plot and a steady time
estimate (from the budget, shown at once). At the end, the verdict in words:
"better on your corrections: IoU a → b" (a new version was saved), "no
evidence either way: nothing saved" or "worse: nothing saved". "Use new model"
is offered only when a version was saved; "Roll back" deletes it, before or
after "Use new model", and returns every Segment widget to the parent model.

The base model defaults to the model the corrections were made with; a store
that mixes models or modalities gets a warning. With "Learn from the project's
other images", the viewer's other image layers that fit the model go to the
engine as unlabelled images. **Review on open images** (:mod:`._review`) then shows the open
images the new model changes most, with its mask and the current one's as "A" and "B" in a hidden
order; the answers can save a model the check could not vouch for, or withdraw a saved one. Every
run, review and roll back goes to the session log.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_lgms._words import counted
from napari_lgms.training.finetune_card import model_family
from napari_lgms.training.finetuning import PRESETS, failures_caution, metric_name, too_few_corrections
from napari_lgms.widgets import _layer_geometry as geo
from napari_lgms.widgets._layout import (
    DockBody,
    button_row,
    compact_form,
    narrow_combo,
    scrolling_dock,
    wrapping_label,
)
from napari_lgms.widgets._plot import TrainingPlot
from napari_lgms.training.review import reviewable
from napari_lgms.widgets._review import ReviewSession
from napari_lgms.widgets._session_log import append_record
from napari_lgms.widgets._shared import (
    DEVICE_CHOICES,
    connect_while_alive,
    hub,
    image_kind,
    list_models_then,
    suggested_for_layer,
)
from napari_lgms.widgets._workers import notify_error, one_line, start_engine_task
from napari_lgms.widgets.corrections import _short_path

FAST_MINUTES = PRESETS["fast"]["time_budget"] / 60.0  # the engine's presets, one figure for both
DEFAULT_MINUTES = PRESETS["default"]["time_budget"] / 60.0
MAX_UNLABELLED = 50
BUDGET_MINUTES, BUDGET_STEPS = "Minutes", "Steps"
SOURCE_STORE, SOURCE_BOTH, SOURCE_FOLDER = (
    "Saved corrections", "Saved corrections + a folder of pairs", "A folder of image / mask pairs"
)


def _clock(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(float(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _score_of(metrics: dict[str, float] | None, metric: str) -> float | None:
    """``metric`` of an engine's metrics, None when there is none."""
    return None if not metrics or metric not in metrics else float(metrics[metric])


def verdict_text(result) -> str:
    """The run's verdict (a :class:`~napari_lgms.training.finetuning.FinetuneResult`) in words."""
    if "review" in (result.evidence or {}):
        said = result.message[0].upper() + result.message[1:]
        return f"{said}. New model: {result.name}." if offered(result) else f"{said}."
    if offered(result):
        metric = (result.evidence or {}).get("metric", "dice")  # what the verdict judged: IoU, or Dice
        before, after = _score_of(result.metrics_before, metric), _score_of(result.metrics_after, metric)
        known = before is not None and after is not None
        scores = f": {metric_name(metric)} {before:.3f} → {after:.3f}" if known else ""
        caution = failures_caution(result.evidence or {})
        saved = f"Better on your corrections{scores}. Saved as {result.name}."  # how: in the tooltip
        return f"{saved} {caution[0].upper()}{caution[1:]}." if caution else saved
    evidence = result.evidence or {}
    spread = _spread(evidence)
    if result.verdict == "worse":
        return f"Worse on your corrections{spread}: nothing saved; the previous model is kept."
    hint = " Review on open images can still show if the new one is better." if reviewable(result) else ""
    name = metric_name(evidence.get("metric", "dice"))
    if evidence.get("hurt_successes") and evidence["successes_change"] >= 0:  # their failures fell further
        count, change = evidence["failures"], 100 * evidence["failures_change"]
        return (f"No evidence either way{spread}: nothing saved; the checks were better overall but "
                f"{change:+.1f} {name} points on the {count} corrections the current model had failed on, "
                "more than they gained where it was right. Save more corrections of images it fails on, "
                f"then try again.{hint}")
    if evidence.get("hurt_successes"):
        count, change = evidence["successes"], 100 * evidence["successes_change"]
        return (f"No evidence either way{spread}: nothing saved; the checks were better overall but "
                f"{change:+.1f} {name} points on the {count} corrections the current model had right: too "
                "much if most of your images are like those. Save corrections of images it gets right too, "
                f"then try again.{hint}")
    if evidence.get("unfit"):
        return ("No evidence either way: nothing saved; the checks were better, but the final model fits "
                f"your corrections worse than the current one. Try again.{hint}")
    count, minimum = int(evidence.get("corrections", 0)), int(evidence.get("minimum", 2))
    if count < minimum:
        return (f"No evidence either way: nothing saved; {counted(count, 'correction')} "
                f"cannot show it (the check needs {minimum}). Add corrections.{hint}")
    return f"No evidence either way{spread}: nothing saved; the previous model is kept.{hint}"


def _announce(label, text: str) -> None:
    """A run's outcome in the dock and as a napari notification: two docks stacked on a laptop screen
    can leave the dock too short for the whole text."""
    from napari.utils.notifications import show_info

    label.setText(text)
    show_info(f"Fine-tune: {text}")


def _spread(evidence: dict) -> str:
    """' (+2.1 ± 3.0 IoU points over 12 corrections, 9 better)': the check's mean change, its standard
    error and how many corrections gained."""
    mean, error, count = (evidence.get(k) for k in ("mean_difference", "standard_error", "held_out"))
    if mean is None or error is None or not count:
        return ""
    name = metric_name(evidence.get("metric", "dice"))
    gained = f", {evidence['gained']} better" if "gained" in evidence else ""
    return f" ({100 * mean:+.1f} ± {100 * error:.1f} {name} points over {count} corrections{gained})"


def offered(result) -> bool:
    """A run offers a new model only when it saved one (the engine saves only a better one)."""
    return result is not None and result.saved and result.card_path is not None


def _always_shown(record) -> bool:
    """Reports that pass the throttle: validation scores (the plot) and "saving" (Cancel then deletes)."""
    return record.val_metrics is not None or record.phase == "saving"


def _delete_version(card_path) -> Path | None:
    """Delete a model version (card and weights); returns the card's path."""
    from napari_lgms.zoo import delete_model

    return delete_model(card_path) if card_path else None


class TimeEstimate:
    """Elapsed and remaining time, steady: from the budget when there is one (shown at once),
    else from the smoothed time per step; it only ever counts down between reports."""

    def __init__(self, budget_seconds: float | None, total_steps: int | None):
        self.started = time.monotonic()
        self.budget = budget_seconds
        self.total_steps = total_steps
        self.step = 0
        self._per_step: float | None = None
        self._left: float | None = budget_seconds
        self._at = self.started

    def update(self, step: int) -> None:
        now = time.monotonic()
        if self.budget is None and self.total_steps and step > self.step:
            per_step = (now - self._at) / (step - self.step) if self.step else (now - self.started) / step
            self._per_step = per_step if self._per_step is None else 0.8 * self._per_step + 0.2 * per_step
            self._left = self._per_step * max(self.total_steps - step, 0)
            self._at = now
        if step > self.step:
            self.step = step

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float | None:
        if self.budget is not None:
            return max(self.budget - self.elapsed(), 0.0)
        if self._left is None:
            return None
        return max(self._left - (time.monotonic() - self._at), 0.0)


REVIEW_KEYS = {"a_button": "A", "b_button": "B", "same_button": "S", "flip_button": "F"}


class FinetuneLayout(DockBody):
    """The Fine-tune widget's controls: options that scroll; buttons, time, verdict and decision in view."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.model_combo = QComboBox()
        self.model_combo.addItem("listing models…")
        self.store_label = wrapping_label(wrap=False)
        self.store_button = QPushButton("Folder…")
        self.source_combo = QComboBox()
        self.source_combo.addItems([SOURCE_STORE, SOURCE_BOTH, SOURCE_FOLDER])
        self.extra_edit = QLineEdit()
        self.extra_edit.setPlaceholderText("a folder with images/ and masks/ (or imagesTr/ + labelsTr/)")
        self.extra_button = QPushButton("Browse…")
        self.budget_combo = QComboBox()
        self.budget_combo.addItems([BUDGET_MINUTES, BUDGET_STEPS])
        self.minutes_spin = QDoubleSpinBox()
        self.minutes_spin.setRange(0.1, 24 * 60)
        self.minutes_spin.setValue(DEFAULT_MINUTES)
        self.minutes_spin.setSuffix(" min")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1_000_000)
        self.steps_spin.setValue(200)
        self.steps_spin.setVisible(False)
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICE_CHOICES)
        self.fast_check = QCheckBox(f"Fast (about {FAST_MINUTES:.0f} min on a laptop CPU)")
        self.unlabelled_check = QCheckBox("Learn from the project's other\nimages (unlabelled)")
        self.unlabelled_check.setChecked(True)
        self.unlabelled_check.setToolTip("The other image layers open in napari that fit the model "
                                         f"(at most {MAX_UNLABELLED}) join the run without masks")
        self.start_button = QPushButton("Fine-tune")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.plot = TrainingPlot()
        self.plot.setMinimumHeight(110)
        self.warning_label = wrapping_label()
        self.time_label = wrapping_label()
        self.status_label = wrapping_label("Save five corrections or more with the Segment widget, then "
                                           "fine-tune.",
                                           lines=4)
        self.use_button = QPushButton("Use new model")
        self.rollback_button = QPushButton("Roll back")
        self.review_button = QPushButton("Review on open images")
        self.review_button.setToolTip(
            "Compare the new model's masks with the current one's, without knowing which is which, on the "
            "open images it changes most: your answers can save a model the check could not vouch for, "
            "or withdraw one")
        for button in (self.use_button, self.rollback_button, self.review_button):
            button.setEnabled(False)
        self.a_button, self.b_button = QPushButton("A is better"), QPushButton("B is better")
        self.same_button, self.flip_button = QPushButton("Same"), QPushButton("Flip A/B")
        self.stop_review_button = QPushButton("Stop review")
        for button, key in REVIEW_KEYS.items():
            button = getattr(self, button)
            button.setShortcut(key)  # active only while the button is enabled: during a review
            button.setToolTip(f"Key {key}")
        for combo in (self.model_combo, self.source_combo, self.budget_combo, self.device_combo):
            narrow_combo(combo)

    def lay_out(self) -> None:
        store_row = QHBoxLayout()
        store_row.addWidget(self.store_label, 1)
        store_row.addWidget(self.store_button)
        extra_row = QHBoxLayout()
        extra_row.addWidget(self.extra_edit, 1)
        extra_row.addWidget(self.extra_button)
        budget_row = QHBoxLayout()
        budget_row.addWidget(self.budget_combo)
        budget_row.addWidget(self.minutes_spin, 1)
        budget_row.addWidget(self.steps_spin, 1)
        form = compact_form()
        form.addRow("Base model", self.model_combo)
        form.addRow("Train on", self.source_combo)
        form.addRow("Corrections", store_row)
        form.addRow("Folder", extra_row)
        form.addRow("Stop after", budget_row)
        form.addRow("Device", self.device_combo)
        form.addRow(self.fast_check)
        form.addRow(self.unlabelled_check)
        body = QVBoxLayout()
        body.addLayout(form)
        body.addWidget(self.warning_label)
        body.addWidget(self.plot, 1)
        footer = QVBoxLayout()
        footer.addLayout(button_row(self.start_button, self.cancel_button))
        footer.addWidget(self.time_label)
        footer.addWidget(self.status_label)
        footer.addLayout(button_row(self.use_button, self.rollback_button))
        footer.addWidget(self.review_button)
        self.review_panel = QWidget()
        review = QVBoxLayout(self.review_panel)
        review.setContentsMargins(0, 0, 0, 0)
        review.addLayout(button_row(self.a_button, self.b_button, self.same_button))
        review.addLayout(button_row(self.flip_button, self.stop_review_button))
        self.review_panel.setVisible(False)
        footer.addWidget(self.review_panel)
        self.scroll = scrolling_dock(self, body, footer, stretch=False)


class FinetuneWidget(FinetuneLayout):
    """Dock widget: fine-tune a model on saved corrections (npe2 widget, ``napari_viewer`` first)."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._choices = []
        self.models_ready = False
        self._base_by_hand = False
        self.store_root: Path | None = None
        self._entries: list = []  # the store's entries, read once per store change (set_store_root)
        self.lay_out()
        self.session = FinetuneSession(self)
        self.review = ReviewSession(self, self.session)
        self.review_button.clicked.connect(self.review.start)
        self.a_button.clicked.connect(lambda: self.review.answer("A"))
        self.b_button.clicked.connect(lambda: self.review.answer("B"))
        self.same_button.clicked.connect(lambda: self.review.answer("same"))
        self.flip_button.clicked.connect(self.review.flip)
        self.stop_review_button.clicked.connect(self.review.stop)
        self.store_button.clicked.connect(self._pick_store)
        self.extra_button.clicked.connect(self._pick_extra)
        self.budget_combo.currentIndexChanged.connect(self._budget_changed)
        self.source_combo.currentIndexChanged.connect(self._check_store)
        self.fast_check.toggled.connect(self._fast_toggled)
        self.model_combo.activated.connect(self._base_picked)
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.use_button.clicked.connect(self.use_new_model)
        self.rollback_button.clicked.connect(self.roll_back)
        self._use_default_store()
        self.refresh_models()
        connect_while_alive(hub.models_changed, self, self.refresh_models)
        connect_while_alive(hub.store_changed, self, self.set_store_root)
        connect_while_alive(napari_viewer.layers.events.inserted, self, self._image_added)

    def set_reviewing(self, on: bool, asking: bool = False) -> None:
        """The buttons during a review (``asking``: an image is shown), and as the run left them after it."""
        self.review_panel.setVisible(on)
        for button in (self.a_button, self.b_button, self.same_button, self.flip_button):
            button.setEnabled(asking)
        self.start_button.setEnabled(not on)
        result = self.session.result
        self.use_button.setEnabled(not on and offered(result))
        self.rollback_button.setEnabled(not on and offered(result))
        self.review_button.setEnabled(not on and reviewable(result))

    # what tests and other widgets read; the buttons' actions
    task = property(lambda self: self.session.task)
    result = property(lambda self: self.session.result)
    choices = property(lambda self: tuple(self._choices))  # the Base model rows

    def start(self) -> None:
        self.session.start()

    def cancel(self) -> None:
        self.session.cancel()

    def use_new_model(self) -> None:
        self.session.use_new_model()

    def roll_back(self) -> None:
        self.session.roll_back()

    # -- the base model ------------------------------------------------------------------------
    def refresh_models(self) -> None:
        list_models_then(self, self._set_choices)

    def _set_choices(self, listed) -> None:
        if isinstance(listed, Exception):
            notify_error(listed)
            listed = []
        current = self.model_combo.currentText() if self.models_ready else ""
        self._choices = list(listed)
        self.models_ready = True
        self.model_combo.clear()
        self.model_combo.addItems([c.label for c in self._choices])
        if current and self.model_combo.findText(current) >= 0:
            self.model_combo.setCurrentText(current)  # a new version in the list changes nothing here
        else:
            self._base_by_hand = False  # the model picked by hand is gone
            self._default_base()
        self._check_store()

    def _image_added(self, event) -> None:
        """A new image may call for another base model while no correction is saved."""
        if type(event.value).__name__ == "Image":
            self._default_base()

    def _base_picked(self, *_) -> None:
        self._base_by_hand = True

    def _store_entries(self) -> list:
        from napari_lgms.corrections import CorrectionsStore

        try:
            return CorrectionsStore(self.store_root).entries() if self.store_root is not None else []
        except Exception:
            return []

    def _default_base(self, *_) -> None:
        """The newest version of the model most of the corrections were made with (the corrections of
        a loop of segment, correct, fine-tune, use come from one model and its fine-tuned versions);
        else the one the Segment widget would suggest for the newest image of the project
        (:func:`suggested_for_layer`)."""
        if self._base_by_hand or not self.models_ready:
            return
        counts = Counter(model_family(entry.model) for entry in self._entries)
        for family, _ in counts.most_common():  # its newest version: user models are listed newest first
            index = next((i for i, c in enumerate(self._choices)
                          if model_family(c.name) == family and c.trained), None)
            if index is not None:
                self.model_combo.setCurrentIndex(index)
                return
        if self._choices:
            images = [layer for layer in self.viewer.layers if type(layer).__name__ == "Image"]
            newest = images[-1] if images else None
            self.model_combo.setCurrentIndex(suggested_for_layer(self._choices, newest))

    def _check_store(self, *_) -> None:
        """Warn when the store mixes corrections made with different models (a model and its
        fine-tuned versions count as one) or modalities, and say when it holds too few for a run
        to save anything."""
        counts = Counter(model_family(entry.model) for entry in self._entries)
        modality = {model_family(c.name): c.modality for c in reversed(self._choices)}
        modalities = sorted({modality.get(name) for name in counts} - {None, ""})
        text = ""
        if len(counts) > 1:
            listed = ", ".join(f"{name} ×{count}" for name, count in counts.most_common())
            mixed = f" and {len(modalities)} modalities ({', '.join(modalities)})" if modalities[1:] else ""
            text = (f"Warning: these corrections come from {len(counts)} models{mixed}: {listed}. "
                    "Fine-tuning learns from all of them; keep one project per model or modality.")
        count = sum(counts.values())
        too_few = too_few_corrections(count) if count else None  # none saved: the status line says what to do
        if too_few and self.source_combo.currentText() == SOURCE_STORE:
            text = f"{text}\n{too_few}.".strip()
        self.warning_label.setText(text)
        self.warning_label.setVisible(bool(text))

    def base_choice(self):
        index = self.model_combo.currentIndex()
        return self._choices[index] if 0 <= index < len(self._choices) else None

    # -- the data ------------------------------------------------------------------------------
    def _use_default_store(self) -> None:
        from napari_lgms.corrections import default_store_root

        self.set_store_root(hub.store_root or str(default_store_root("default")))

    def set_store_root(self, root: str) -> None:
        self.store_root = Path(root)
        self._entries = self._store_entries()
        count = len(self._entries)
        self.store_label.setText(f"{count} in {_short_path(self.store_root)}")
        self.store_label.setToolTip(str(self.store_root))
        if self.models_ready:
            self._default_base()
            self._check_store()

    def _pick_store(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Corrections folder", str(self.store_root or ""))
        if folder:
            self.set_store_root(folder)

    def _pick_extra(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of image / mask pairs")
        if folder:
            self.extra_edit.setText(folder)

    def _budget_changed(self, *_) -> None:
        by_time = self.budget_combo.currentText() == BUDGET_MINUTES
        self.minutes_spin.setVisible(by_time)
        self.steps_spin.setVisible(not by_time)

    def _fast_toggled(self, checked: bool) -> None:
        self.budget_combo.setCurrentText(BUDGET_MINUTES)
        self.minutes_spin.setValue(FAST_MINUTES if checked else DEFAULT_MINUTES)

    def unlabelled_layers(self, choice) -> list:
        """The viewer's image layers that fit ``choice`` (its dimensions and channels), not corrected
        ones; at most :data:`MAX_UNLABELLED`."""
        corrected = {(entry.geometry or {}).get("layer") for entry in self._store_entries()}
        layers = []
        for layer in self.viewer.layers:
            if type(layer).__name__ != "Image" or layer.name in corrected or len(layers) >= MAX_UNLABELLED:
                continue
            spatial_ndim, channels = image_kind(layer)
            if layer.ndim == choice.spatial_dims and channels == choice.in_channels:
                layers.append(layer)
        return layers

    def options(self) -> dict:
        """The keyword arguments of ``finetune_steps`` from the widget's fields (``model`` included)."""
        from napari_lgms.errors import InputError

        choice = self.base_choice()
        if choice is None:
            raise InputError("no base model chosen")
        source = self.source_combo.currentText()
        data: dict = {}
        if source in (SOURCE_STORE, SOURCE_BOTH):
            if self.store_root is None or not Path(self.store_root).is_dir():
                raise InputError("no corrections saved yet; save a few with the Segment widget (Shift-S)")
            data["corrections"] = str(self.store_root)
        if source in (SOURCE_BOTH, SOURCE_FOLDER):
            folder = self.extra_edit.text().strip()
            if not folder:
                raise InputError("choose a folder holding images/ and masks/ (paired by file name)")
            if source == SOURCE_FOLDER:
                data["corrections"] = folder  # the engine reads images/ + masks/ (or imagesTr/ + labelsTr/)
            else:
                data["images"], data["masks"] = str(Path(folder) / "images"), str(Path(folder) / "masks")
        by_time = self.budget_combo.currentText() == BUDGET_MINUTES
        return {
            "model": choice.source,
            **data,
            "time_budget": self.minutes_spin.value() * 60.0 if by_time else None,
            "steps": None if by_time else self.steps_spin.value(),
            "device": self.device_combo.currentText(),
            "preset": "fast" if self.fast_check.isChecked() else "default",
        }


def layer_image(layer, choice):
    """An image layer's pixels for a model of ``choice``: spatial axes first, channels last, a grey
    image stored as RGB as one channel; an ``ImageData`` with its spacing in mm where it has one."""
    from napari_lgms.io.image import ImageData

    spatial_ndim, channels = image_kind(layer)
    array = geo.image_array(layer)
    array = array[..., 0] if getattr(layer, "rgb", False) and choice.in_channels == 1 else array
    spacing = geo.spacing_in_mm(layer, list(range(spatial_ndim)))
    if spacing is None:
        return array
    axes = "ZYX"[-spatial_ndim:] + ("C" if array.ndim > spatial_ndim else "")
    return ImageData(array=array, axes=axes, spacing=spacing, units=("mm",) * spatial_ndim, affine=None,
                     source=None, format="napari")


class FinetuneSession:
    """One Fine-tune widget's runs: the worker, the clock, the verdict, Use / Roll back, the log."""

    def __init__(self, widget: FinetuneWidget):
        self.widget = widget
        self.task = None
        self.result = None
        self.estimate: TimeEstimate | None = None
        self._base = None  # the base model's ModelChoice of the last run (the parent to return to)
        self._settings: dict = {}
        self._saving_to: str | None = None
        self._phase = ""
        self._said = ""  # the engine's words for what it is doing while preparing or training, else ""
        self._clock = QTimer(widget)
        self._clock.setInterval(500)
        self._clock.timeout.connect(self._show_time)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.finished

    @property
    def base(self):
        """The base model (a ModelChoice) of the last run: the model a review compares with."""
        return self._base

    def _call(self):
        """(model source, keyword arguments, settings for the log) of the run the widget describes."""
        from napari_lgms.training.finetuning import finetune_steps

        ui = self.widget
        call = ui.options()
        model = call.pop("model")
        settings = dict(call)
        choice = ui.base_choice()
        others = ui.unlabelled_layers(choice)
        call["require_evidence"] = not others  # with other images, a review can decide for few corrections
        if ui.unlabelled_check.isChecked():
            call["unlabelled"] = [layer_image(layer, choice) for layer in others] or None
            settings["unlabelled_images"] = len(others)
        return finetune_steps, model, call, settings

    def start(self) -> None:
        if self.running:
            return
        ui = self.widget
        try:
            finetune_steps, model, call, self._settings = self._call()
        except Exception as error:
            self.fail(error)
            return
        self.result, self._base, self._saving_to, self._phase = None, ui.base_choice(), None, "starting"
        self._said = ""
        ui.plot.clear()
        for button in (ui.use_button, ui.rollback_button, ui.start_button, ui.review_button):
            button.setEnabled(False)
        ui.cancel_button.setEnabled(True)
        ui.status_label.setText(f"Fine-tuning {self._base.name}…")
        self.estimate = TimeEstimate(call.get("time_budget"), call.get("steps"))
        self._clock.start()
        self._show_time()
        self.task = start_engine_task(
            # no should_stop for the engine: on Cancel the worker closes the generator at its
            # next report, so it never reaches "save" and the previous model stays as it was
            lambda should_stop: finetune_steps(model, **call),
            description="Fine-tuning",
            always=_always_shown,
            on_progress=self._show_progress,
            on_done=self._show_result,
            on_error=self.fail,
            on_finished=self._finished,
        )

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _show_time(self) -> None:
        estimate = self.estimate
        if estimate is None or not self._clock.isActive():  # reports that arrive after the end change nothing
            return
        total = f" of {estimate.total_steps}" if estimate.total_steps else ""
        left = estimate.left()
        left_text = f"about {_clock(left)} left" if left is not None else "estimating the time left"
        doing = self._said or self._phase
        self.widget.time_label.setText(f"{doing} · elapsed {_clock(estimate.elapsed())} · {left_text}"
                                       f" · step {estimate.step}{total}")

    def _show_progress(self, record) -> None:
        plot = self.widget.plot
        self._phase = record.phase or self._phase
        self._said = record.message if record.phase in ("loading", "train") else ""
        if self._phase == "saving":
            self._saving_to = record.output or None
        step = int(record.step)
        if record.loss is not None:
            plot.add_loss(step, record.loss)
        total = int(record.total_steps or 0)
        if self.estimate is not None and total > (self.estimate.total_steps or 0):
            self.estimate.total_steps = total  # the engine's count (cross-fitting runs add steps)
        if self.estimate is not None and self.estimate.total_steps:
            plot.total_steps = self.estimate.total_steps
        metric = "iou" if record.val_metrics and "iou" in record.val_metrics else "dice"  # the verdict's
        score = _score_of(record.val_metrics, metric)
        if score is not None and (not plot.dice or plot.dice[-1] != (float(step), score)):
            plot.score_label = f"held-out {metric_name(metric)}"
            plot.add_dice(step, score)
        if self.estimate is not None:
            self.estimate.update(step)
        self._show_time()

    def _show_result(self, result) -> None:
        """Main thread: the verdict in words; a new model is offered only when one was saved."""
        ui = self.widget
        self.result = result
        if self.estimate is not None:
            self.estimate.update(result.steps)  # the last step's report may have been throttled away
        _announce(ui.status_label, verdict_text(result))
        ui.status_label.setToolTip(result.message)  # the engine's evidence, on demand
        ui.use_button.setEnabled(offered(result))
        ui.rollback_button.setEnabled(offered(result))
        ui.review_button.setEnabled(reviewable(result))
        self._log("fine-tune", self._base.name, self.estimate.elapsed(), {
            "outcome": "done", "verdict": result.verdict, "saved": result.saved,
            "new_model": result.name if offered(result) else None,
            "card_path": str(result.card_path) if offered(result) else None,
            "dice_before": _score_of(result.metrics_before, "dice"),
            "dice_after": _score_of(result.metrics_after, "dice"),
            "steps": result.steps, "evidence": result.evidence,
        })
        if result.saved:
            hub.models_changed.emit()

    def reviewed(self, result) -> None:
        """Main thread: the run's outcome after the user's review."""
        ui = self.widget
        self.result = result
        _announce(ui.status_label, verdict_text(result))
        ui.status_label.setToolTip(result.message)
        ui.use_button.setEnabled(offered(result))
        ui.rollback_button.setEnabled(offered(result))
        ui.review_button.setEnabled(False)  # one review per run: answers are not taken back

    def _log(self, action: str, model: str, seconds, result: dict) -> None:
        settings = {**self._settings, "base_source": self._base.source if self._base else None}
        append_record(self.widget.store_root, action, model=model, settings=settings, seconds=seconds,
                      result=result)

    def use_new_model(self) -> None:
        """Select the new version in every Segment widget (Roll back stays available)."""
        if offered(self.result):
            hub.model_chosen.emit(str(self.result.card_path))
            self.widget.status_label.setText(f"{verdict_text(self.result)}\nIn use in the Segment widget; "
                                             "Roll back returns to " + self._base.name + ".")
        self.widget.use_button.setEnabled(False)

    def roll_back(self) -> None:
        """Delete the new version (card and weights) and return the Segment widgets to the parent."""
        if not offered(self.result):
            return
        started = time.monotonic()
        card = _delete_version(self.result.card_path)
        hub.models_changed.emit()
        hub.model_chosen.emit(self._base.source)
        self.widget.status_label.setText(f"Rolled back: {card.stem} deleted; the Segment widget uses "
                                         f"{self._base.name} again.")
        self._log("roll back", card.stem, time.monotonic() - started,
                  {"deleted": str(card), "back_to": self._base.name})
        self.result = None
        for button in (self.widget.use_button, self.widget.rollback_button, self.widget.review_button):
            button.setEnabled(False)

    def fail(self, error: BaseException) -> None:
        notify_error(error)
        self.widget.status_label.setText(f"Error: {one_line(error)}")
        if self.running:  # the engine failed (not the options: nothing ran then)
            self._log("fine-tune", self._base.name, self.estimate.elapsed(),
                      {"outcome": "error", "message": one_line(error)})
            self.estimate = None  # no "took" line for a run that failed
            self.widget.time_label.setText("")

    def _finished(self, cancelled: bool) -> None:
        if cancelled and self.estimate is not None:
            self._log("fine-tune", self._base.name, self.estimate.elapsed(), {"outcome": "cancelled"})
        self._clock.stop()
        if self.estimate is not None:
            took, steps = _clock(self.estimate.elapsed()), self.estimate.step
            self.widget.time_label.setText(f"took {took} · {steps} steps")
        self.widget.start_button.setEnabled(True)
        self.widget.cancel_button.setEnabled(False)
        if cancelled:
            if self._saving_to:
                # Cancel landed while the engine was saving: remove that unwanted new version
                _delete_version(self._saving_to)
                hub.models_changed.emit()
            self.widget.status_label.setText("Cancelled; the previous model is kept.")
