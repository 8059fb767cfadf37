"""The corrections panel: save what the user fixed as training examples; review and delete them.

A correction is the model's original prediction (kept in the labels layer's
``metadata["napari_lgms"]`` by the Segment widget) plus the mask as the user
edited it with napari's label tools, and the image under it:

* a 2D image: the whole image;
* a volume under a 2D model: the slice the viewer shows (saving the same slice
  again replaces that example);
* a volume under a 3D model: the box of the last run, or the whole volume.

A mask made in click mode is saved the same way; the clicks on the saved image, slice or box
(recorded by click mode in the layer's metadata) go into the entry, in its coordinates.

Save with the button or Shift-S in the viewer. The store is a
:class:`napari_lgms.corrections.CorrectionsStore`; its folder is
``default_store_root(project)`` unless the user picks another folder.
"""
from __future__ import annotations

import time
import weakref
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QVBoxLayout,
)

from napari_lgms._words import counted
from napari_lgms.errors import InputError
from napari_lgms.widgets import _layer_geometry as geo
from napari_lgms.widgets._layout import button_row, compact_form, wrapping_label
from napari_lgms.widgets._session_log import append_record
from napari_lgms.widgets._shared import hub
from napari_lgms.widgets._workers import notify_error

METADATA_KEY = "napari_lgms"
SAVE_KEY = "Shift-S"


def example_from_viewer(viewer, labels_layer):
    """(key, image, mask, prediction, model, geometry) for the correction the viewer shows.

    ``image`` is (*spatial[, C]) with channels last, ``mask`` and ``prediction``
    are spatial label arrays. Raises InputError when the layer is not a
    segmentation made by this plugin or its image layer is gone.
    """
    meta = getattr(labels_layer, "metadata", {}).get(METADATA_KEY)
    if not meta or meta.get("prediction") is None:
        raise InputError("this labels layer was not made by the Segment widget; "
                         "segment first, then correct it")
    image_name = meta["image_layer"]
    if image_name not in viewer.layers:
        raise InputError(f"the image layer {image_name!r} of this segmentation is no longer open")
    image_layer = viewer.layers[image_name]
    image = geo.image_array(image_layer)
    channel_axis = meta.get("channel_axis")
    if channel_axis is not None and channel_axis != image.ndim - 1:
        image = np.moveaxis(image, channel_axis, -1)
    mask = np.asarray(labels_layer.data)
    prediction = np.asarray(meta["prediction"])
    axes = list(meta["spatial_axes"])
    spacing = geo.spacing_in_mm(labels_layer, list(range(labels_layer.ndim)))  # None without length units
    geometry = {
        "layer": image_name,
        "scale": [float(s) for s in labels_layer.scale],
        "translate": [float(t) for t in labels_layer.translate],
        "units": [str(u) for u in labels_layer.units],
        "axis_labels": list(labels_layer.axis_labels),
        "spacing": list(spacing) if spacing else None,
        "slice_axis": None, "slice_index": None, "roi": None,
    }
    key = image_name
    if mask.ndim == 3 and meta.get("model_dims") == 2:
        axis = int(meta["slice_axis"])
        index = geo.current_slice_index(viewer, image_layer, axes, axis, mask.shape)
        image, mask, prediction = (np.take(a, index, axis=axis) for a in (image, mask, prediction))
        label = geometry["axis_labels"][axis] or f"axis{axis}"
        key = f"{image_name} {label}={index}"
        geometry.update(slice_axis=axis, slice_index=index)
    elif mask.ndim == 3 and meta.get("roi"):
        roi = [tuple(r) for r in meta["roi"]]
        box = tuple(slice(start, stop) for start, stop in roi)
        image, mask, prediction = image[box], mask[box], prediction[box]
        key = f"{image_name} box {' '.join(f'{a}-{b}' for a, b in roi)}"
        geometry["roi"] = [list(r) for r in roi]
    elif mask.ndim == 3:
        key = f"{image_name} volume"
    return key, image, mask, prediction, meta.get("model", "unknown"), geometry


def clicks_in_example(labels_layer, geometry: dict) -> list[dict]:
    """The clicks recorded on ``labels_layer`` that fall on the example ``geometry`` describes
    (its slice or box), with positions in the example's index coordinates."""
    recorded = getattr(labels_layer, "metadata", {}).get(METADATA_KEY, {}).get("clicks") or []
    axis, index, roi = geometry.get("slice_axis"), geometry.get("slice_index"), geometry.get("roi")
    clicks = []
    for click in recorded:
        position = [float(p) for p in click["position"]]
        if axis is not None:
            if round(position[axis]) != index:
                continue
            del position[axis]
        if roi:
            if not all(start <= p < stop for p, (start, stop) in zip(position, roi)):
                continue
            position = [p - start for p, (start, _) in zip(position, roi)]
        clicks.append({"position": position, "positive": bool(click["positive"]),
                       "label": int(click["label"])})
    return clicks


def _short_path(path: Path, parts: int = 2) -> str:
    path = Path(path)
    return str(path) if len(path.parts) <= parts + 1 else "…/" + "/".join(path.parts[-parts:])


class CorrectionsPanel(QGroupBox):
    """Save / review / delete corrections. ``fallback_layer()`` gives the last segmentation layer."""

    def __init__(self, viewer, fallback_layer=lambda: None, parent=None):
        super().__init__("Corrections (for fine-tuning)", parent)
        self.viewer = viewer
        self._fallback_layer = fallback_layer
        self.store = None
        self._custom_root: Path | None = None

        self.project_edit = QLineEdit("default")
        self.project_edit.setToolTip("One store per project: letters, digits, '.', '_' or '-'")
        self.folder_label = wrapping_label(wrap=False)
        self.folder_button = QPushButton("Folder…")
        self.save_button = QPushButton(f"Save correction ({SAVE_KEY})")
        self.count_label = QLabel()
        self.entry_list = QListWidget()
        # rows wrap to the dock's width: no sideways scrolling; a few rows show, the rest scroll
        self.entry_list.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.entry_list.setWordWrap(True)
        self.entry_list.setTextElideMode(Qt.ElideMiddle)
        self.entry_list.setMinimumHeight(90)
        self.entry_list.setMaximumHeight(220)
        self.show_button = QPushButton("Go to")
        self.delete_button = QPushButton("Delete")

        form = compact_form()
        form.addRow("Project", self.project_edit)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder_label, 1)
        folder_row.addWidget(self.folder_button)
        form.addRow("Store", folder_row)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.save_button)
        layout.addWidget(self.count_label)
        layout.addWidget(self.entry_list)
        layout.addLayout(button_row(self.show_button, self.delete_button))

        self.project_edit.editingFinished.connect(self._project_changed)
        self.folder_button.clicked.connect(self._pick_folder)
        self.save_button.clicked.connect(self.save_current)
        self.show_button.clicked.connect(self.show_selected)
        self.delete_button.clicked.connect(self.delete_selected)
        self._bind_key()
        self.set_root(None)

    def _bind_key(self) -> None:
        panel = weakref.ref(self)

        def save_correction(viewer):
            alive = panel()
            if alive is not None:
                alive.save_current()

        self.viewer.bind_key(SAVE_KEY, save_correction, overwrite=True)

    # -- the store ------------------------------------------------------------------------
    def set_root(self, root: str | Path | None) -> None:
        """Use ``root`` as the store folder (None: the project's default folder)."""
        from napari_lgms.corrections import CorrectionsStore, default_store_root

        self._custom_root = Path(root) if root else None
        try:
            folder = self._custom_root or default_store_root(self.project_edit.text().strip())
        except Exception as error:
            notify_error(error)
            return
        self.store = CorrectionsStore(folder)
        self.folder_label.setText(_short_path(folder))
        self.folder_label.setToolTip(str(folder))
        hub.store_root = str(folder)
        self.refresh()

    def _project_changed(self) -> None:
        self.set_root(None)

    def _pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for corrections", str(self.store.root))
        if folder:
            self.set_root(folder)

    def refresh(self) -> None:
        """Show the store's entries and tell the Fine-tune widget (its folder or contents changed)."""
        entries = self.store.entries() if self.store is not None else []
        self.entry_list.clear()
        for entry in entries:
            when = entry.timestamp[:19].replace("T", " ")
            count = len(entry.clicks or [])
            clicks = f" · {counted(count, 'click')}" if count else ""
            self.entry_list.addItem(f"{entry.key}\n{entry.model} · {when}{clicks}")
        self._keys = [entry.key for entry in entries]
        noun = "correction" if len(entries) == 1 else "corrections"
        self.count_label.setText(f"{len(entries)} {noun} saved")
        if self.store is not None:
            hub.store_changed.emit(str(self.store.root))

    # -- actions --------------------------------------------------------------------------
    def _labels_layer(self):
        active = self.viewer.layers.selection.active
        if active is not None and METADATA_KEY in getattr(active, "metadata", {}):
            return active
        fallback = self._fallback_layer()
        if fallback is not None and fallback in self.viewer.layers:
            return fallback
        raise InputError("no segmentation to save; run Segment first, then correct the labels layer")

    def save_current(self):
        """Store the shown slice / volume / box as an example; returns its key (None on error)."""
        started = time.monotonic()
        try:
            layer = self._labels_layer()
            key, image, mask, prediction, model, geometry = example_from_viewer(self.viewer, layer)
            clicks = clicks_in_example(layer, geometry)
            self.store.save(key, image, mask, prediction, model=model, geometry=geometry, clicks=clicks)
        except Exception as error:
            notify_error(error)
            return None
        from napari.utils.notifications import show_info

        append_record(self.store.root, "save correction", model=model, image=geometry.get("layer"),
                      shape=np.shape(image), settings={"key": key, "slice_axis": geometry.get("slice_axis"),
                                                       "slice_index": geometry.get("slice_index"),
                                                       "roi": geometry.get("roi"), "clicks": len(clicks)},
                      seconds=time.monotonic() - started,
                      result={"corrected_voxels": int(np.count_nonzero(np.asarray(mask) != prediction)),
                              "stored": len(self.store)})
        self.refresh()
        show_info(f"Saved correction {key!r} ({len(self._keys)} in the store)")
        return key

    def selected_key(self) -> str | None:
        row = self.entry_list.currentRow()
        return self._keys[row] if 0 <= row < len(self._keys) else None

    def show_selected(self) -> None:
        """Go to the selected example: its slice in the open image, or open it as layers."""
        key = self.selected_key()
        if key is None:
            return
        try:
            example = self.store.load(key)
        except Exception as error:
            notify_error(error)
            return
        geometry = example.entry.geometry
        name = geometry.get("layer")
        index = geometry.get("slice_index")
        if name in self.viewer.layers and index is not None:
            layer = self.viewer.layers[name]
            point = np.zeros(layer.ndim)
            offset = self.viewer.dims.ndim - layer.ndim
            axis = int(geometry["slice_axis"])
            point[axis] = index
            world = layer.data_to_world(point)
            self.viewer.dims.set_point(offset + axis, float(world[axis]))
            return
        if name in self.viewer.layers:
            self.viewer.layers.selection.active = self.viewer.layers[name]
            return
        rgb = example.image.ndim == example.mask.ndim + 1 and example.image.shape[-1] in (3, 4)
        self.viewer.add_image(example.image, name=f"correction: {key}", rgb=rgb)
        self.viewer.add_labels(example.mask, name=f"correction: {key} mask")

    def delete_selected(self) -> None:
        key = self.selected_key()
        if key is None:
            return
        try:
            self.store.delete(key)
        except Exception as error:
            notify_error(error)
        self.refresh()
