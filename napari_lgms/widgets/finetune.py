"""The Fine-tune widget: improve a model on the user's corrections, then keep it or roll back.

Runs :func:`napari_lgms.training.finetune_steps` in a napari thread
worker. While it runs: a live loss / validation Dice plot, elapsed and
remaining time. Cancel stops it and keeps the previous model. At the end:
validation Dice before and after on held-out corrections, then "Use new
model" (selects it in every Segment widget) or "Roll back" (deletes the new
version). The new version is saved in the user's model folder with its card
and lineage by the engine; the model lists refresh at once.
"""
from __future__ import annotations

import inspect
from pathlib import Path

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_lgms.widgets._plot import TrainingPlot
from napari_lgms.widgets.corrections import _short_path
from napari_lgms.widgets._shared import DEVICE_CHOICES, connect_while_alive, default_index, hub, model_choices
from napari_lgms.widgets._workers import notify_error, one_line, start_engine_task

FAST_MINUTES = 2.0
BUDGET_MINUTES, BUDGET_STEPS = "Minutes", "Steps"
SOURCE_STORE, SOURCE_BOTH, SOURCE_FOLDER = (
    "Saved corrections", "Saved corrections + a folder of pairs", "A folder of image / mask pairs"
)


def _clock(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(float(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _dice_of(metrics) -> float | None:
    """The Dice figure from a metrics dict or number, whatever its key is called."""
    if metrics is None:
        return None
    if isinstance(metrics, (int, float)):
        return float(metrics)
    for key in ("dice", "val_dice", "Dice", "mean_dice"):
        if key in metrics and metrics[key] is not None:
            return float(metrics[key])
    return None


def _supported(function, options: dict) -> dict:
    """The options ``function`` accepts (the engine's keyword names decide)."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return options
    return {k: v for k, v in options.items() if k in parameters}


class FinetuneWidget(QWidget):
    """Dock widget: fine-tune a model on saved corrections (npe2 widget, ``napari_viewer`` first)."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.task = None
        self.result = None
        self._choices = []
        self.store_root: Path | None = None
        self._build()
        self.refresh_models()
        self._use_default_store()
        connect_while_alive(hub.models_changed, self, self.refresh_models)
        connect_while_alive(hub.store_changed, self, self.set_store_root)

    def _build(self) -> None:
        self.model_combo = QComboBox()
        self.store_label = QLabel()
        self.store_label.setWordWrap(True)
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
        self.minutes_spin.setValue(5.0)
        self.minutes_spin.setSuffix(" min")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1_000_000)
        self.steps_spin.setValue(200)
        self.steps_spin.setVisible(False)
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICE_CHOICES)
        self.fast_check = QCheckBox(f"Fast (about {FAST_MINUTES:.0f} min on a laptop CPU)")
        self.start_button = QPushButton("Fine-tune")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.plot = TrainingPlot()
        self.time_label = QLabel("")
        self.time_label.setWordWrap(True)
        self.status_label = QLabel("Save a few corrections with the Segment widget, then fine-tune.")
        self.status_label.setWordWrap(True)
        self.use_button = QPushButton("Use new model")
        self.rollback_button = QPushButton("Roll back")
        for button in (self.use_button, self.rollback_button):
            button.setEnabled(False)

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
        form = QFormLayout()
        form.addRow("Base model", self.model_combo)
        form.addRow("Train on", self.source_combo)
        form.addRow("Corrections", store_row)
        form.addRow("Folder", extra_row)
        form.addRow("Stop after", budget_row)
        form.addRow("Device", self.device_combo)
        form.addRow(self.fast_check)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        decision = QHBoxLayout()
        decision.addWidget(self.use_button)
        decision.addWidget(self.rollback_button)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.plot)
        layout.addWidget(self.time_label)
        layout.addWidget(self.status_label)
        layout.addLayout(decision)
        layout.addStretch(1)

        self.store_button.clicked.connect(self._pick_store)
        self.extra_button.clicked.connect(self._pick_extra)
        self.budget_combo.currentIndexChanged.connect(self._budget_changed)
        self.fast_check.toggled.connect(self._fast_toggled)
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.use_button.clicked.connect(self.use_new_model)
        self.rollback_button.clicked.connect(self.roll_back)

    # -- inputs ---------------------------------------------------------------------------
    def refresh_models(self) -> None:
        current = self.model_combo.currentText()
        try:
            self._choices = model_choices()
        except Exception as error:
            notify_error(error)
            self._choices = []
        self.model_combo.clear()
        self.model_combo.addItems([c.label for c in self._choices])
        if current:
            self.model_combo.setCurrentText(current)
        elif self._choices:
            self.model_combo.setCurrentIndex(default_index(self._choices))

    def _use_default_store(self) -> None:
        from napari_lgms.corrections import default_store_root

        self.set_store_root(hub.store_root or str(default_store_root("default")))

    def set_store_root(self, root: str) -> None:
        from napari_lgms.corrections import CorrectionsStore

        self.store_root = Path(root)
        try:
            count = len(CorrectionsStore(self.store_root))
        except Exception:
            count = 0
        self.store_label.setText(f"{count} in {_short_path(self.store_root)}")
        self.store_label.setToolTip(str(self.store_root))

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
        if checked:
            self.budget_combo.setCurrentText(BUDGET_MINUTES)
            self.minutes_spin.setValue(FAST_MINUTES)

    def options(self) -> dict:
        """The keyword arguments of ``finetune_steps`` from the widget's fields."""
        from napari_lgms.errors import InputError

        index = self.model_combo.currentIndex()
        if not 0 <= index < len(self._choices):
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
            "model": self._choices[index].source,
            **data,
            "time_budget": self.minutes_spin.value() * 60.0 if by_time else None,
            "steps": None if by_time else self.steps_spin.value(),
            "device": self.device_combo.currentText(),
            "preset": "fast" if self.fast_check.isChecked() else "default",
        }

    # -- running --------------------------------------------------------------------------
    def start(self) -> None:
        if self.task is not None and not self.task.finished:
            return
        try:
            options = self.options()
            from napari_lgms.training import finetune_steps

            call = _supported(finetune_steps, options)
            model = call.pop("model")
        except Exception as error:
            self._fail(error)
            return
        self.result = None
        self.plot.clear()
        self.use_button.setEnabled(False)
        self.rollback_button.setEnabled(False)
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status_label.setText("Fine-tuning…")
        self._saving_to = None
        self.task = start_engine_task(
            # no should_stop for the engine: on Cancel the worker closes the generator at its
            # next report, so it never reaches "save" and the previous model stays as it was
            lambda should_stop: finetune_steps(model, **call),
            description="Fine-tuning",
            always=lambda record: getattr(record, "val_metrics", None) is not None,
            on_progress=self._show_progress,
            on_done=self._show_result,
            on_error=self._fail,
            on_finished=self._finished,
        )

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _show_progress(self, record) -> None:
        if getattr(record, "phase", "") == "saving":
            self._saving_to = getattr(record, "output", "") or None
        step = int(getattr(record, "step", 0))
        total = int(getattr(record, "total_steps", 0) or 0)
        if total:
            self.plot.total_steps = total
        if getattr(record, "loss", None) is not None:
            self.plot.add_loss(step, record.loss)
        dice = _dice_of(getattr(record, "val_metrics", None))
        if dice is not None and (not self.plot.dice or self.plot.dice[-1] != (float(step), dice)):
            self.plot.add_dice(step, dice)
        elapsed = getattr(record, "elapsed", None)
        remaining = getattr(record, "remaining", None)
        if remaining is None and elapsed and step and total > step:
            remaining = elapsed / step * (total - step)
        phase = getattr(record, "phase", "")
        message = getattr(record, "message", "")
        text = f"{phase} · elapsed {_clock(elapsed)} · about {_clock(remaining)} left · step {step}"
        text += (f" of {total}" if total else "") + (f"\n{message}" if message else "")
        self.time_label.setText(text)

    def _show_result(self, result) -> None:
        """Main thread: show Dice before/after and offer to keep the new version or roll back."""
        self.result = result
        before = _dice_of(getattr(result, "metrics_before", None))
        after = _dice_of(getattr(result, "metrics_after", None))
        held_out = len((getattr(result, "split", None) or {}).get("val", []))
        if getattr(result, "validated_on_training", False):
            where = " on the training corrections (fewer than 3 saved, none held out)"
        else:
            where = f" on {held_out} held-out correction(s)"
        lines = []
        if before is not None and after is not None:
            verdict = "better" if after > before + 1e-9 else "no better: the weights are the starting model's"
            lines.append(f"Validation Dice{where}: before {before:.3f} → after {after:.3f} ({verdict}).")
        lines.append(f"New version {getattr(result, 'name', Path(result.card_path).stem)}: "
                     f"{getattr(result, 'steps', '?')} steps in {_clock(getattr(result, 'elapsed', None))}.")
        self.status_label.setText("\n".join(lines))
        self.use_button.setEnabled(True)
        self.rollback_button.setEnabled(True)
        hub.models_changed.emit()

    def use_new_model(self) -> None:
        """Select the new version in every Segment widget."""
        if self.result is not None and getattr(self.result, "card_path", None):
            hub.model_chosen.emit(str(self.result.card_path))
            self.status_label.setText(self.status_label.text() + "\nIn use in the Segment widget.")
        self.use_button.setEnabled(False)
        self.rollback_button.setEnabled(False)

    def roll_back(self) -> None:
        """Delete the new version (card and weights); the previous model stays selected."""
        card = getattr(self.result, "card_path", None)
        if card:
            card = Path(card)
            for path in (card.with_suffix(".safetensors"), card):
                path.unlink(missing_ok=True)
            hub.models_changed.emit()
            self.status_label.setText(f"Rolled back: {card.stem} deleted; the previous model is kept.")
        self.result = None
        self.use_button.setEnabled(False)
        self.rollback_button.setEnabled(False)

    def _fail(self, error: BaseException) -> None:
        notify_error(error)
        self.status_label.setText(f"Error: {one_line(error)}")

    def _finished(self, cancelled: bool) -> None:
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if cancelled:
            if getattr(self, "_saving_to", None):
                # Cancel landed while the engine was saving: remove that unwanted new version
                card = Path(self._saving_to)
                for path in (card, card.with_suffix(".safetensors")):
                    path.unlink(missing_ok=True)
                hub.models_changed.emit()
            self.status_label.setText("Cancelled; the previous model is kept.")
