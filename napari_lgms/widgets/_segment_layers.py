"""The Segment widget's layer handling: which image, which model for it, which output layer.

* The Image box follows the image layer the user adds or selects, unless "Keep" pins it.
* The model follows the image: the one the user picked by hand *for that image*, else the
  one suggested by the image itself (a grey image stored as RGB counts as grey); "Keep"
  next to the model pins one model for every image.
* The Output box falls back to a new layer when the chosen Labels layer does not have the
  image's shape (a mask is never written onto a layer of another image).
* A warning, in the status, when the chosen model's card names another modality than the
  model the image suggests.
* :func:`first_run_setup`, around the run's model loading in its worker, does off the GUI thread
  what napari does the first time a Labels layer is made.
"""
from __future__ import annotations

import gc
import threading
from contextlib import contextmanager

import numpy as np

from napari_lgms.widgets import _layer_geometry as geo
from napari_lgms.widgets._shared import connect_while_alive, suggested_for_layer

NEW_LAYER = "New Labels layer"


_first_setup = threading.Lock()
_labels_ready = False


@contextmanager
def first_run_setup():
    """Worker thread, around a run's setup (model loading): napari's first-Labels-layer work
    before it and, once per session, a full garbage collection after it.

    The first ``viewer.add_labels`` of a session held napari's GUI thread 0.65-0.8 s, later ones
    0.1 s (a 1000x1200 image or a 40x60x40 volume, 2 busy cores): its layer model imports pandas (the feature table)
    and scikit-image's colour conversions (the label colormap), vispy fills its cached dash
    patterns for the outline overlays, and those allocations (with the model's) make a full
    garbage collection due, 0.2-0.3 s that then ran inside the layer's creation. A 1x1 Labels
    layer model (never added to a viewer: no Qt, no OpenGL) and a dash atlas do the first-time
    work here; the collection runs here too, unless one ran during the setup. It holds the GIL,
    so it still pauses the GUI, but no longer on top of the layer's own time. What stays on the
    GUI thread is each layer's own visuals, controls and first texture upload.
    """
    global _labels_ready
    with _first_setup:
        first = not _labels_ready
        full_collections = gc.get_stats()[2]["collections"]
        if first:
            _make_a_labels_layer_model()
        yield
        if first:
            if gc.get_stats()[2]["collections"] == full_collections:
                gc.collect()
            _labels_ready = True


def _make_a_labels_layer_model() -> None:
    from napari.layers import Labels

    Labels(np.zeros((1, 1), np.uint8), name="prepared")
    try:
        from vispy.visuals.line.dash_atlas import DashAtlas  # a vispy internal: skipped if it moves
    except ImportError:
        return
    DashAtlas()


def _layers_of(viewer, kind: str) -> list[str]:
    return [layer.name for layer in viewer.layers if type(layer).__name__ == kind]


def refill(combo, names: list[str], keep_first: list[str] = ()) -> None:
    """Replace a combo box's items, keeping the current one when it is still there (no signals)."""
    current = combo.currentText()
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(list(keep_first) + names)
    if current in list(keep_first) + names:
        combo.setCurrentText(current)
    combo.blockSignals(False)


def spatial_shape_of(layer) -> tuple[int, ...]:
    shape = tuple(np.shape(geo.image_array(layer)))
    return shape[:-1] if getattr(layer, "rgb", False) else shape


class LayerControls:
    """Keeps the Image, Model and Output boxes of ``ui`` (a SegmentLayout) in step with the viewer."""

    def __init__(self, viewer, ui, on_model_changed):
        self.viewer = viewer
        self.ui = ui
        self.choices = []  # the model rows, set by the widget
        self.model_for_image: dict[str, str] = {}  # image layer name -> the model source picked by hand
        self._on_model_changed = on_model_changed
        layers = viewer.layers
        for event in (layers.events.inserted, layers.events.removed, layers.events.reordered):
            connect_while_alive(event, ui, self._layers_changed)
        connect_while_alive(layers.events.inserted, ui, self._follow_new_layer)
        connect_while_alive(layers.selection.events.active, ui, self._follow_selection)
        ui.image_combo.currentIndexChanged.connect(self.image_changed)
        ui.model_combo.activated.connect(self.remember_choice)

    # -- the Image box --------------------------------------------------------------------------
    def _layers_changed(self, event=None) -> None:
        if getattr(event, "type", None) == "inserted":  # a reorder's value is the whole list
            connect_while_alive(event.value.events.name, self.ui, self.refresh)
        self.refresh()

    def refresh(self, event=None) -> None:
        ui = self.ui
        images = _layers_of(self.viewer, "Image")
        previous = ui.image_combo.currentText()
        refill(ui.image_combo, images)
        if previous not in images and images:
            ui.image_combo.setCurrentIndex(len(images) - 1)  # the newest image
        refill(ui.shapes_combo, _layers_of(self.viewer, "Shapes"))
        refill(ui.output_combo, _layers_of(self.viewer, "Labels"), [NEW_LAYER])
        if ui.image_combo.currentText() != previous:
            self.image_changed()

    def _follow(self, layer) -> None:
        if type(layer).__name__ != "Image" or self.ui.image_pin.isChecked():
            return
        if self.ui.image_combo.currentText() != layer.name:
            self.refresh()
            self.ui.image_combo.setCurrentText(layer.name)

    def _follow_new_layer(self, event) -> None:
        self._follow(event.value)
        if type(event.value).__name__ == "Image" and not geo.wholly_in_view(self.viewer, event.value):
            self.viewer.reset_view(layers=[event.value])

    def _follow_selection(self, event) -> None:
        if event.value is not None:  # the layer now active
            self._follow(event.value)

    def image_layer(self):
        name = self.ui.image_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def image_changed(self, *_) -> None:
        """A new image: its own model (picked by hand, else suggested) and an output layer that fits."""
        self.apply_model_for_image()
        layer = self.image_layer()
        target = self.ui.output_combo.currentText()
        if layer is not None and target != NEW_LAYER and target in self.viewer.layers:
            if tuple(np.shape(self.viewer.layers[target].data)) != spatial_shape_of(layer):
                self.ui.output_combo.setCurrentText(NEW_LAYER)

    # -- the Model box --------------------------------------------------------------------------
    def suggestion(self) -> int:
        """The model row that suits the chosen image (see :func:`suggested_index`)."""
        return suggested_for_layer(self.choices, self.image_layer())

    def index_of(self, source: str) -> int | None:
        return next((i for i, choice in enumerate(self.choices) if choice.source == str(source)), None)

    def apply_model_for_image(self) -> None:
        if not self.choices or self.ui.model_pin.isChecked():
            self._on_model_changed()
            return
        picked = self.index_of(self.model_for_image.get(self.ui.image_combo.currentText(), ""))
        index = picked if picked is not None else self.suggestion()
        if index != self.ui.model_combo.currentIndex():
            self.ui.model_combo.setCurrentIndex(index)  # _on_model_changed follows through the signal
        else:
            self._on_model_changed()

    def remember_choice(self, index: int) -> None:
        """A model picked by hand: it is this image's model from now on."""
        if 0 <= index < len(self.choices) and self.ui.image_combo.currentText():
            self.model_for_image[self.ui.image_combo.currentText()] = self.choices[index].source

    def modality_warning(self) -> str:
        """'' or a sentence: the chosen model's card names another modality than the suggested model's."""
        index = self.ui.model_combo.currentIndex()
        if self.image_layer() is None or not 0 <= index < len(self.choices):
            return ""
        chosen, suggested = self.choices[index], self.choices[self.suggestion()]
        if chosen.modality and suggested.modality and chosen.modality != suggested.modality:
            return (f"Warning: {chosen.name} was made for {chosen.modality} images; this image looks like "
                    f"{suggested.modality} ({suggested.name} fits it).")
        return ""
