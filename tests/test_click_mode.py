"""Click mode of the Segment widget on a real viewer (needs a display: run under ``xvfb-run -a``).

The click model is an "echo" network registered here: its logits are
8 * (positive + previous - 2 * negative - 0.5) of its three prompt channels, so a positive click
grows a disk, a negative one removes one, and the previous mask stays. It is saved with a
card naming ``tiny-2d`` / ``tiny-3d`` (conftest's ``saved_tiny``) as its lineage parent, in the
user model folder the tests isolate, so the widget finds it like a shipped ``<parent>-clicks``.

Clicks reach the widget as napari delivers them: a press and a release through napari's own
mouse-callback dispatch (``mouse_press_callbacks`` / ``mouse_release_callbacks``) on the
"clicks" layer, with a read-only event like the canvas makes (world position, button,
modifiers); the buttons are clicked as Qt buttons.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

needs_display = pytest.mark.skipif(not os.environ.get("DISPLAY"),
                                   reason="needs a display; run under xvfb-run -a")
ECHO = "echo_click_net"


def _register_echo_network() -> None:
    import torch
    import torch.nn as nn

    from napari_lgms.models.registry import list_architectures, register_architecture

    if any(architecture.name == ECHO for architecture in list_architectures()):
        return

    @register_architecture(ECHO, spatial_dims=(2, 3), size_divisor=1, description="test-only click echo")
    class EchoClickNet(nn.Module):
        """Foreground where a positive click or the previous mask is, unless a negative click is there."""

        def __init__(self, in_channels=4, num_classes=1, spatial_dims=2):
            super().__init__()
            self.offset = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            positive, negative, previous = x[:, -3], x[:, -2], x[:, -1]
            return (8 * (positive + previous - 2 * negative - 0.5))[:, None] + self.offset


def _save_click_model(parent: str, dims: int) -> str:
    from napari_lgms.models.registry import build_network
    from napari_lgms.zoo import ModelCard, save_model, user_model_dir
    from napari_lgms.zoo.card import InputSpec, PromptSpec

    _register_echo_network()
    arguments = {"in_channels": 4, "num_classes": 1, "spatial_dims": dims}
    card = ModelCard(name=f"{parent}-clicks", architecture=ECHO, arguments=arguments,
                     input=InputSpec(patch_size=[32] * dims, size_divisor=1, mode="resize"),
                     normalization={"kind": "zscore"}, class_names=["background", "object"],
                     prompt=PromptSpec(radius=3, min_crop=0.3), lineage={"parent": parent},
                     training={"data": "none: echoes its clicks"})
    return str(save_model(build_network(ECHO, arguments).eval(), card, user_model_dir()))


@pytest.fixture
def click_models(saved_tiny):
    """tiny-2d and tiny-3d (automatic) with their echo click models, in the user model folder."""
    return {dims: _save_click_model(f"tiny-{dims}d", dims) for dims in (2, 3)}


def _grey(shape, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


def _segment_widget(viewer, qtbot, model: str):
    _, widget = viewer.window.add_plugin_dock_widget("napari-lgms", "Segment")
    qtbot.waitUntil(lambda: widget.models_ready, timeout=30000)
    index = next(i for i, c in enumerate(widget.choices) if c.name == model)
    widget.model_combo.setCurrentIndex(index)
    widget.model_combo.activated.emit(index)
    return widget


def _turn_on(qtbot, widget):
    controls, mode = widget.click_controls, widget.click_mode
    assert controls.mode_button.isEnabled(), controls.mode_button.toolTip()
    controls.mode_button.click()
    qtbot.waitUntil(lambda: mode.active, timeout=30000)
    return mode


def _clicking(make_napari_viewer, qtbot, name, image, model, slice_index=None, show=False):
    """A viewer showing ``image`` (on ``slice_index``), the Segment widget with ``model`` chosen
    by hand and click mode turned on by its button: (viewer, widget, click mode)."""
    viewer = make_napari_viewer(show=show)
    viewer.add_image(image, name=name)
    widget = _segment_widget(viewer, qtbot, model)
    if slice_index is not None:
        viewer.dims.set_point(0, slice_index)
    return viewer, widget, _turn_on(qtbot, widget)


class _EventProxy:
    """What the canvas hands to callbacks: a proxy whose ``__wrapped__`` napari swaps for the
    move and release events of the same press."""

    def __init__(self, event):
        self.__wrapped__ = event

    def __getattr__(self, name):
        return getattr(self.__wrapped__, name)


def _mouse_click(layer, world_position, *, shift=False, button=1):
    """A press and a release at ``world_position`` through napari's mouse-callback dispatch."""
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    modifiers = ("Shift",) if shift else ()
    for kind, dispatch in (("mouse_press", mouse_press_callbacks),
                           ("mouse_release", mouse_release_callbacks)):
        event = SimpleNamespace(type=kind, position=tuple(float(p) for p in world_position), pos=(100, 100),
                                button=button, modifiers=modifiers, handled=False, is_dragging=False)
        dispatch(layer, _EventProxy(event))


def _click(qtbot, mode, position, **options):
    _mouse_click(mode.target.points, position, **options)
    qtbot.waitUntil(lambda: not mode.busy, timeout=30000)


def _print_gui_times(mode, what: str) -> None:
    clicks = ", ".join(f"{ms:.1f}" for ms in mode.gui_ms)
    writes = ", ".join(f"{ms:.1f}" for ms in mode.write_ms)
    print(f"\n{what}: GUI thread per click {clicks} ms; per result written {writes} ms")


# ----------------------------------------------------------------------------- without a viewer
def test_the_click_model_is_the_selected_one_or_its_child_or_its_ancestors_child():
    from napari_lgms.widgets._click_mode import click_model_for
    from napari_lgms.widgets._shared import ModelChoice

    def row(name, parent=None, prompt=None):
        card = SimpleNamespace(name=name, lineage={"parent": parent} if parent else {}, prompt=prompt)
        return ModelChoice(name, f"/{name}.json", True, 2, 1, "", name, "user", card=card)

    automatic, tuned, other = row("us"), row("us-ft-1", parent="us"), row("polyp")
    clicks = row("us-clicks", parent="us", prompt=object())
    choices = [tuned, automatic, other, clicks]
    assert click_model_for(choices, automatic) is clicks
    assert click_model_for(choices, tuned) is clicks  # a fine-tuned version: its parent's click model
    assert click_model_for(choices, clicks) is clicks
    assert click_model_for(choices, other) is None and click_model_for(choices, None) is None


def test_corrections_keep_clicks_and_old_entries_read_without_them(tmp_path):
    import json

    from napari_lgms.corrections import CorrectionsStore

    store = CorrectionsStore(tmp_path / "store")
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 1
    clicks = [{"position": [3, 3], "positive": True, "label": 1}]
    store.save("clicked", np.zeros((8, 8)), mask, None, model="m", clicks=clicks)
    entry = store.save("painted", np.zeros((8, 8)), mask, None, model="m")
    assert store.load("clicked").entry.clicks == clicks and store.load("painted").entry.clicks == []

    path = store.root / entry.file  # as an older version wrote it: no "clicks" in its metadata
    with np.load(path) as data:
        arrays = {name: np.array(data[name]) for name in data.files}
    meta = json.loads(str(arrays["meta"]))
    del meta["clicks"]
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez_compressed(path, **arrays)
    manifest = json.loads((store.root / "manifest.json").read_text())
    del manifest["entries"]["painted"]["clicks"]
    (store.root / "manifest.json").write_text(json.dumps(manifest))
    entries = CorrectionsStore(store.root).entries()
    assert {e.key: e.clicks for e in entries} == {"clicked": clicks, "painted": []}


# ----------------------------------------------------------------------------- on a viewer
@pytest.mark.gui
@needs_display
def test_a_click_the_model_does_not_follow_is_pointed_out(make_napari_viewer, qtbot, click_models,
                                                          corrections_dir, monkeypatch):
    from napari_lgms.clicks import ClickSession

    viewer, widget, mode = _clicking(make_napari_viewer, qtbot, "scan", _grey((64, 64)), "tiny-2d")
    monkeypatch.setattr(ClickSession, "add_clicks", lambda session, clicks: session.mask)  # ignores clicks
    _click(qtbot, mode, (20, 20))
    assert not viewer.layers["scan segmentation"].data.any()
    status = widget.click_controls.status_label.text()
    assert "1 click (1+ 0−)" in status and "did not follow the last one" in status


@pytest.mark.gui
@needs_display
def test_positive_and_negative_clicks_undo_and_next_object(make_napari_viewer, qtbot, click_models,
                                                           corrections_dir):
    viewer, widget, mode = _clicking(make_napari_viewer, qtbot, "scan", _grey((64, 64)), "tiny-2d")
    labels, points = viewer.layers["scan segmentation"], viewer.layers["clicks"]
    assert viewer.layers.selection.active is points and not labels.data.any()

    _click(qtbot, mode, (20, 20))
    first = np.array(labels.data)
    assert first[20, 20] == 1 and 20 < (first == 1).sum() < 400 and first[50, 50] == 0
    np.testing.assert_array_equal(points.data, [[20, 20]])
    np.testing.assert_allclose(points.face_color[0, :3], [0, 1, 0])
    assert "1 click (1+ 0−)" in widget.click_controls.status_label.text()
    assert "did not follow" not in widget.click_controls.status_label.text()

    _click(qtbot, mode, (20, 20), shift=True)  # Shift-click: not the object
    assert labels.data[20, 20] == 0 and (labels.data == 1).sum() < (first == 1).sum()
    np.testing.assert_allclose(points.face_color[1, :3], [1, 0, 0])

    widget.click_controls.undo_button.click()
    qtbot.waitUntil(lambda: not mode.busy, timeout=30000)
    np.testing.assert_array_equal(labels.data, first)
    assert len(points.data) == 1

    _click(qtbot, mode, (46, 46))
    object_one = np.array(labels.data) == 1
    assert object_one[46, 46] and object_one[20, 20]

    widget.click_controls.next_button.click()
    assert labels.selected_label == 2 and len(points.data) == 0
    _click(qtbot, mode, (20, 27))  # its disk overlaps the first object: those pixels stay 1
    assert labels.data[20, 30] == 2 and (labels.data == 2).sum() > 10
    np.testing.assert_array_equal(np.array(labels.data) == 1, object_one)

    labels.selected_label = 7  # a label chosen in the layer's controls: a new object with it
    _click(qtbot, mode, (50, 15))
    assert labels.data[50, 15] == 7 and "Label 7" in widget.click_controls.status_label.text()
    _print_gui_times(mode, "2D image")


@pytest.mark.gui
@needs_display
def test_a_failed_prediction_ends_click_mode_with_one_line(make_napari_viewer, qtbot, click_models,
                                                            monkeypatch):
    # A failure travels as the worker's result: napari 0.9's own handler of a worker's error signal
    # raises a TypeError in Qt's event loop, which pytest-qt reports as a failure of this test.
    import napari_lgms.widgets._click_mode as click_mode

    def broken(job):
        raise MemoryError("not enough memory for this image")

    viewer, widget, mode = _clicking(make_napari_viewer, qtbot, "scan", _grey((64, 64)), "tiny-2d")
    monkeypatch.setattr(click_mode, "predict", broken)
    _click(qtbot, mode, (20, 20))
    assert widget.click_controls.status_label.text() == "Error: not enough memory for this image"
    assert not mode.active and not viewer.layers["scan segmentation"].data.any()


@pytest.mark.gui
@needs_display
def test_clicks_during_a_prediction_are_predicted_together_and_stale_results_never_shown(
        make_napari_viewer, qtbot, click_models, corrections_dir, monkeypatch):
    from napari_lgms.clicks import ClickSession

    batches = []
    add_clicks = ClickSession.add_clicks
    monkeypatch.setattr(ClickSession, "add_clicks",
                        lambda self, clicks: batches.append(len(clicks)) or add_clicks(self, clicks))
    viewer, _, mode = _clicking(make_napari_viewer, qtbot, "scan", _grey((64, 64)), "tiny-2d")
    for position in ((15, 15), (40, 40), (15, 45)):  # no event processing in between: 2 and 3 queue
        _mouse_click(mode.target.points, position)
    assert mode.busy
    qtbot.waitUntil(lambda: not mode.busy, timeout=30000)
    labels = viewer.layers["scan segmentation"].data
    assert batches == [1, 2] and len(mode.write_ms) == 1  # the first result was stale: not shown
    assert labels[15, 15] == labels[40, 40] == labels[15, 45] == 1
    _print_gui_times(mode, "three quick clicks")


@pytest.mark.gui
@needs_display
def test_a_2d_click_model_on_a_volume_writes_only_the_current_slice_and_saves_its_clicks(
        make_napari_viewer, qtbot, click_models, corrections_dir):
    viewer, widget, mode = _clicking(make_napari_viewer, qtbot, "volume", _grey((8, 48, 48)), "tiny-2d", 3)
    labels, points = viewer.layers["volume segmentation"], viewer.layers["clicks"]

    _click(qtbot, mode, (3, 20, 20))
    assert labels.data[3, 20, 20] == 1 and not np.delete(labels.data, 3, axis=0).any()
    np.testing.assert_array_equal(points.data, [[3, 20, 20]])
    slice_three = np.array(labels.data[3])

    viewer.dims.set_point(0, 5)
    _click(qtbot, mode, (5, 30, 30))
    assert labels.data[5, 30, 30] == 1 and labels.data[5, 20, 20] == 0
    np.testing.assert_array_equal(labels.data[3], slice_three)
    _click(qtbot, mode, (5, 30, 30), shift=True)
    assert labels.data[5, 30, 30] == 0

    widget.click_controls.undo_button.click()  # the negative click on slice 5
    qtbot.waitUntil(lambda: not mode.busy, timeout=30000)
    assert labels.data[5, 30, 30] == 1

    viewer.layers.selection.active = labels
    assert widget.corrections.save_current() is not None
    (entry,) = widget.corrections.store.entries()
    assert entry.geometry["slice_index"] == 5
    assert entry.clicks == [{"position": [30, 30], "positive": True, "label": 1}]
    _print_gui_times(mode, "volume, 2D click model")


@pytest.mark.gui
@needs_display
def test_a_3d_click_model_on_a_volume_takes_3d_points(make_napari_viewer, qtbot, click_models,
                                                      corrections_dir):
    viewer, _, mode = _clicking(make_napari_viewer, qtbot, "volume", _grey((16, 40, 40)), "tiny-3d", 8)
    assert mode.target.choice.name == "tiny-3d-clicks"
    _click(qtbot, mode, (8, 20, 20))
    labels = viewer.layers["volume segmentation"].data
    np.testing.assert_array_equal(viewer.layers["clicks"].data, [[8, 20, 20]])
    assert labels[8, 20, 20] == 1 and labels[7, 20, 20] == labels[9, 20, 20] == 1
    assert not labels[0].any() and not labels[:, 0].any()


@pytest.mark.gui
@needs_display
def test_a_save_after_clicks_stores_them(make_napari_viewer, qtbot, click_models, corrections_dir):
    viewer, widget, mode = _clicking(make_napari_viewer, qtbot, "scan", _grey((64, 64)), "tiny-2d")
    _click(qtbot, mode, (20, 20))
    _click(qtbot, mode, (22, 22), shift=True)
    widget.corrections.save_button.click()  # the "clicks" layer is active: the click-mode layer is saved
    (entry,) = widget.corrections.store.entries()
    assert entry.key == "scan" and entry.model == "tiny-2d"
    assert entry.clicks == [{"position": [20, 20], "positive": True, "label": 1},
                            {"position": [22, 22], "positive": False, "label": 1}]
    example = widget.corrections.store.load("scan")
    np.testing.assert_array_equal(example.mask, viewer.layers["scan segmentation"].data)
    assert "2 clicks" in widget.corrections.entry_list.item(0).text()


@pytest.mark.gui
@needs_display
def test_click_mode_is_off_without_a_click_model_and_ends_with_another_image(
        make_napari_viewer, qtbot, click_models, corrections_dir):
    from napari_lgms.zoo import delete_model

    viewer, widget, mode = _clicking(make_napari_viewer, qtbot, "scan", _grey((64, 64)), "tiny-2d")
    _click(qtbot, mode, (20, 20))
    viewer.add_image(_grey((32, 32), seed=3), name="second")  # the image box follows: the session ends
    assert not mode.active and not widget.click_controls.mode_button.isChecked()
    assert len(viewer.layers["clicks"].data) == 0 and viewer.layers["scan segmentation"].data[20, 20] == 1

    delete_model(click_models[2])
    widget.refresh_models()
    button = widget.click_controls.mode_button
    qtbot.waitUntil(lambda: not button.isEnabled(), timeout=10000)
    assert "No click model for tiny-2d" in button.toolTip()


def _canvas_widget():
    """napari's canvas as Qt sees it (the vispy widget), found through Qt, not napari's internals."""
    from qtpy.QtWidgets import QApplication

    canvases = [widget for widget in QApplication.allWidgets()
                if type(widget).__name__ == "CanvasBackendDesktop" and widget.isVisible()]
    return max(canvases, key=lambda widget: widget.width() * widget.height())


@pytest.mark.gui
@needs_display
def test_real_mouse_clicks_on_the_canvas(make_napari_viewer, qtbot, click_models, corrections_dir):
    """Qt mouse events on napari's canvas: a click, a Shift-click, a right click, and a drag (a pan)."""
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest

    viewer, _, mode = _clicking(make_napari_viewer, qtbot, "scan", _grey((64, 64)), "tiny-2d", show=True)
    canvas = _canvas_widget()
    labels, points = viewer.layers["scan segmentation"], viewer.layers["clicks"]
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera

    def centre_on(y, x) -> QPoint:
        camera.center = (y, x)
        qtbot.wait(50)
        return QPoint(canvas.width() // 2, canvas.height() // 2)

    for (y, x), button, modifier in (((20, 20), Qt.LeftButton, Qt.NoModifier),
                                     ((20, 20), Qt.LeftButton, Qt.ShiftModifier),
                                     ((40, 40), Qt.RightButton, Qt.NoModifier)):
        QTest.mouseClick(canvas, button, modifier, centre_on(y, x))
        qtbot.waitUntil(lambda: not mode.busy, timeout=30000)
    np.testing.assert_array_equal(points.data, [[20, 20], [20, 20], [40, 40]])
    np.testing.assert_allclose(points.face_color[:, :3], [[0, 1, 0], [1, 0, 0], [1, 0, 0]])
    assert labels.data[20, 20] == 0 and (labels.data == 1).sum() > 10  # the ring the negative click left

    start = centre_on(50, 50)
    QTest.mousePress(canvas, Qt.LeftButton, Qt.NoModifier, start)
    for step in range(1, 6):
        QTest.mouseMove(canvas, QPoint(start.x() + 12 * step, start.y()), 10)
    QTest.mouseRelease(canvas, Qt.LeftButton, Qt.NoModifier, QPoint(start.x() + 60, start.y()))
    qtbot.wait(100)
    assert len(points.data) == 3 and not mode.busy  # a drag pans; it is not a click
    _print_gui_times(mode, "real mouse events")


@needs_display
def test_click_mode_corrects_the_layer_segment_made(make_napari_viewer, qtbot, click_models):
    viewer = make_napari_viewer()
    viewer.add_image(_grey((64, 64)), name="scan")
    widget = _segment_widget(viewer, qtbot, "tiny-2d")
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.task is not None and widget.task.finished, timeout=30000)
    before = [layer.name for layer in viewer.layers if type(layer).__name__ == "Labels"]
    mode = _turn_on(qtbot, widget)
    assert [layer.name for layer in viewer.layers if type(layer).__name__ == "Labels"] == before
    assert mode.target.labels.name == before[0]


@needs_display
def test_the_clicks_layer_comes_over_an_image_opened_later(make_napari_viewer, qtbot, click_models):
    viewer = make_napari_viewer()
    viewer.add_image(_grey((64, 64)), name="first")
    widget = _segment_widget(viewer, qtbot, "tiny-2d")
    mode = _turn_on(qtbot, widget)
    mode.stop()
    viewer.add_image(_grey((48, 48), seed=1), name="second")
    widget.image_combo.setCurrentText("second")
    _turn_on(qtbot, widget)
    assert viewer.layers[-1].name == "clicks"
