"""The Fine-tune widget's review: a blind A/B look at the open images the new model changes most.

:class:`ReviewSession` runs :func:`napari_lgms.training.review.review_items_steps` in a thread
worker over the viewer's image layers that fit the model (not the corrected ones), then shows each
chosen image alone (every other layer hidden: another mask in view could tell which is new) with
the two masks as outlined labels layers "review A" and "review B", one visible at a time (Flip swaps them),
asks which is better, and hands the answers to :func:`~napari_lgms.training.review.accept_review`,
which saves a model the review confirms or deletes a saved one it contradicts. Stop ends a review
with nothing changed; either way the review layers go and every layer's visibility comes back.
"""
from __future__ import annotations

import time

from napari_lgms._words import counted
from napari_lgms.training.review import reviewable
from napari_lgms.widgets import _layer_geometry as geo
from napari_lgms.widgets._session_log import append_record
from napari_lgms.widgets._shared import hub
from napari_lgms.widgets._workers import notify_error, one_line, start_engine_task

LAYER_A, LAYER_B = "review A", "review B"


OUTLINE_WIDTH = 2  # pixels: the image under a mask stays visible, as in the command line's pictures
BRIGHT = ("yellow", "cyan", "magenta", "lime")


def outline_colours(classes: int):
    """A labels colormap in colours that stand out on ultrasound, endoscopy and MRI alike."""
    from napari.utils.colormaps import DirectLabelColormap

    colours = {None: "transparent", 0: "transparent"}
    colours.update({label: BRIGHT[(label - 1) % len(BRIGHT)] for label in range(1, max(classes, 1) + 1)})
    return DirectLabelColormap(color_dict=colours)


class ReviewSession:
    """One review of a fine-tune's new model (see the module docstring)."""

    def __init__(self, widget, finetune_session):
        self.widget = widget
        self.finetune = finetune_session
        self.task = None
        self.items: list = []
        self.answers: list[str] = []
        self._layers: list = []  # the image layers reviewed, in the order the engine got them
        self._visible: dict = {}  # layer -> its visibility before the review
        self._started = 0.0

    @property
    def active(self) -> bool:
        segmenting = self.task is not None and not self.task.finished
        return segmenting or bool(self.items)

    def start(self) -> None:
        from napari_lgms.training.review import review_items_steps
        from napari_lgms.widgets.finetune import layer_image

        ui, result, base = self.widget, self.finetune.result, self.finetune.base
        if self.active or not reviewable(result) or base is None:
            return
        layers = ui.unlabelled_layers(base)
        if not layers:
            ui.status_label.setText("Open some other images of this kind (not the corrected ones) to review "
                                    "the new model on them.")
            return
        images = [layer_image(layer, base) for layer in layers]
        names = [layer.name for layer in layers]
        self._layers = layers
        self._started = time.monotonic()
        ui.set_reviewing(True, asking=False)
        ui.status_label.setText(f"Segmenting {counted(len(layers), 'open image')} with both models…")
        self.task = start_engine_task(
            lambda should_stop: review_items_steps(result, images, names=names, parent=base.source),
            description="Review",
            on_progress=lambda record: ui.time_label.setText(f"review: {record.done} of {record.total} "
                                                             "images segmented by both models"),
            on_done=self._ask_all,
            on_error=self._failed,
            on_finished=self._worker_finished,
        )

    def _ask_all(self, items) -> None:
        ui = self.widget
        if not items:
            ui.status_label.setText("The new model's masks match the current one's on your open images: "
                                    "nothing to review.")
            return
        self.items, self.answers = list(items), []
        self._visible = {layer: layer.visible for layer in ui.viewer.layers}
        self._show(0)

    def _show(self, number: int) -> None:
        ui, item = self.widget, self.items[number]
        image_layer = self._layers[item.index]
        for layer in ui.viewer.layers:
            layer.visible = layer is image_layer
        geometry = geo.spatial_geometry(image_layer, list(range(image_layer.ndim)))
        for name, labels, visible in ((LAYER_A, item.first, True), (LAYER_B, item.second, False)):
            if name in ui.viewer.layers:
                ui.viewer.layers.remove(name)
            layer = ui.viewer.add_labels(labels.astype("uint8", copy=False), name=name, opacity=1.0,
                                         **geometry)
            layer.colormap, layer.contour = outline_colours(int(labels.max())), OUTLINE_WIDTH
            layer.visible = visible
        ui.viewer.reset_view(layers=[image_layer])  # the image judged fills the canvas
        ui.set_reviewing(True, asking=True)
        ui.status_label.setText(f"Image {number + 1} of {len(self.items)} ({item.name}): which mask is "
                                "better? A is shown; Flip (key F) shows B; answer with A, B or S (same). "
                                "The masks do not say which model made them.")

    def flip(self) -> None:
        viewer = self.widget.viewer
        if LAYER_A in viewer.layers and LAYER_B in viewer.layers:
            a, b = viewer.layers[LAYER_A], viewer.layers[LAYER_B]
            a.visible, b.visible = not a.visible, a.visible

    def answer(self, choice: str) -> None:
        """Record "A", "B" or "same" for the image shown; after the last one, decide."""
        if not self.items or len(self.answers) >= len(self.items):
            return
        self.answers.append(choice)
        if len(self.answers) < len(self.items):
            self._show(len(self.answers))
            return
        self._decide()

    def _decide(self) -> None:
        from napari_lgms.training.review import accept_review

        ui, result = self.widget, self.finetune.result
        items, answers = self.items, self.answers
        self._end()
        try:
            reviewed = accept_review(result, items, answers)
        except Exception as error:  # noqa: BLE001 - the user sees it in one line, the run is unchanged
            self._failed(error)
            return
        self.finetune.reviewed(reviewed)
        append_record(ui.store_root, "review", model=self.finetune.base.name,
                      seconds=time.monotonic() - self._started,
                      result={"verdict": reviewed.verdict, "saved": reviewed.saved,
                              "check_verdict": result.verdict,
                              "new_model": reviewed.name if reviewed.saved else None,
                              "review": reviewed.evidence.get("review")})
        if reviewed.saved != result.saved:
            hub.models_changed.emit()
        if result.saved and not reviewed.saved:  # withdrawn: the Segment widgets go back to the base model
            hub.model_chosen.emit(self.finetune.base.source)

    def stop(self) -> None:
        """Stop the review: nothing is decided, the run's outcome stands."""
        if self.task is not None and not self.task.finished:
            self.task.cancel()
        was_asking = bool(self.items)
        self._end()
        if was_asking:
            self.widget.status_label.setText("Review stopped; nothing changed.")

    def _end(self) -> None:
        viewer = self.widget.viewer
        for name in (LAYER_A, LAYER_B):
            if name in viewer.layers:
                viewer.layers.remove(name)
        for layer, visible in self._visible.items():
            if layer in viewer.layers:
                layer.visible = visible
        self.items, self.answers, self._visible, self._layers = [], [], {}, []
        self.widget.set_reviewing(False)

    def _failed(self, error: BaseException) -> None:
        notify_error(error)
        self.widget.status_label.setText(f"Review failed: {one_line(error)}")

    def _worker_finished(self, cancelled: bool) -> None:
        self.widget.time_label.setText("")
        if cancelled or not self.items:
            self._end()
