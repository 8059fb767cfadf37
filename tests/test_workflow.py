"""The workflow a clinician meets (issue 21): right image, right model, one verdict, a laptop screen.

GUI tests drive a real napari viewer (run under ``xvfb-run -a``); images are generated here.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.widget_helpers import fake_engine

needs_display = pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display; run under xvfb-run -a")


def _grey(shape=(40, 48), seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


def test_a_grey_image_stored_as_rgb_reads_as_grey(tmp_path):
    from PIL import Image

    from napari_lgms.io import read_image
    from napari_lgms.io.raster import channels_are_equal

    grey = _grey()
    Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(tmp_path / "grey-as-rgb.png")
    Image.fromarray(np.dstack([grey] * 3 + [np.full_like(grey, 255)])).save(tmp_path / "grey-as-rgba.png")
    colour = np.dstack([grey, grey, 255 - grey])
    Image.fromarray(colour).save(tmp_path / "colour.png")
    for name in ("grey-as-rgb.png", "grey-as-rgba.png"):
        image = read_image(tmp_path / name)
        assert image.axes == "YX" and image.array.shape == grey.shape
        np.testing.assert_array_equal(image.array, grey)
    assert read_image(tmp_path / "colour.png").axes == "YXC"
    translucent = np.dstack([grey] * 3 + [np.full_like(grey, 9)])
    assert not channels_are_equal(translucent), "transparency is information: keep RGBA"
    assert not channels_are_equal(np.zeros((8, 8, 3), np.uint8)), "a blank image says nothing"
    big = np.repeat(_grey((300, 400))[..., None], 3, axis=2)
    assert channels_are_equal(big, max_elements=10_000)


def _dock(viewer, name, qtbot):
    dock, widget = viewer.window.add_plugin_dock_widget("napari-lgms", name)
    qtbot.waitUntil(lambda: widget.models_ready, timeout=30000)
    return widget


def _segment(qtbot, widget):
    widget.run()
    assert widget.task is not None, widget.status_label.text()
    qtbot.waitUntil(lambda: widget.task.finished, timeout=30000)


def _pick_by_hand(widget, name):
    index = next(i for i, c in enumerate(widget.choices) if c.name == name)
    widget.model_combo.setCurrentIndex(index)
    widget.model_combo.activated.emit(index)  # what a click in the list does


@pytest.mark.gui
@needs_display
def test_the_image_box_follows_the_new_image_and_masks_go_to_their_own_image(
        make_napari_viewer, qtbot, saved_tiny, corrections_dir):
    from napari_lgms.widgets.segment import NEW_LAYER

    viewer = make_napari_viewer()
    viewer.add_image(_grey((40, 48), seed=1), name="first")
    widget = _dock(viewer, "Segment", qtbot)
    _pick_by_hand(widget, "tiny-2d")
    _segment(qtbot, widget)
    assert viewer.layers["first segmentation"].data.shape == (40, 48)

    viewer.add_image(_grey((32, 36), seed=2), name="second")  # opened: the box follows
    assert widget.image_combo.currentText() == "second"
    viewer.layers.selection.active = viewer.layers["first"]  # selected: the box follows
    assert widget.image_combo.currentText() == "first"
    widget.image_pin.setChecked(True)  # pinned: it stays
    viewer.add_image(_grey((24, 24), seed=3), name="third")
    viewer.layers.selection.active = viewer.layers["second"]
    assert widget.image_combo.currentText() == "first"
    widget.image_pin.setChecked(False)
    viewer.layers.selection.active = viewer.layers["third"]
    assert widget.image_combo.currentText() == "third"
    widget.image_combo.setCurrentText("first")

    # the output box held "first segmentation" (40x48): never written onto the 32x36 image's mask
    widget.output_combo.setCurrentText("first segmentation")
    assert widget.output_combo.currentText() == "first segmentation"
    widget.image_combo.setCurrentText("second")
    assert widget.output_combo.currentText() == NEW_LAYER, "a layer of another shape is not offered"
    widget.image_combo.setCurrentText("second")
    _pick_by_hand(widget, "tiny-2d")
    _segment(qtbot, widget)
    assert viewer.layers["second segmentation"].data.shape == (32, 36)
    assert viewer.layers["first segmentation"].data.shape == (40, 48)


@pytest.mark.gui
@needs_display
def test_a_mask_is_never_written_onto_a_layer_that_changed_shape(make_napari_viewer, qtbot, saved_tiny,
                                                                 corrections_dir):
    viewer = make_napari_viewer()
    viewer.add_image(_grey((32, 32)), name="img")
    mine = viewer.add_labels(np.zeros((32, 32), np.uint8), name="mine")
    widget = _dock(viewer, "Segment", qtbot)
    widget.image_combo.setCurrentText("img")
    _pick_by_hand(widget, "tiny-2d")
    widget.output_combo.setCurrentText("mine")
    plan = widget.plan()
    assert plan.target_name == "mine"
    mine.data = np.zeros((16, 16), np.uint8)  # the layer changed while the run was on its way
    widget.session.start(plan)
    qtbot.waitUntil(lambda: widget.task.finished, timeout=30000)
    assert viewer.layers["mine"].data.shape == (16, 16) and not viewer.layers["mine"].data.any()
    assert viewer.layers["img segmentation"].data.shape == (32, 32)


@pytest.mark.gui
@needs_display
def test_a_grey_image_stored_as_rgb_gets_a_grey_model_and_a_wrong_modality_a_warning(
        make_napari_viewer, qtbot, corrections_dir):
    viewer = make_napari_viewer()
    grey = _grey((64, 80))
    viewer.add_image(np.repeat(grey[..., None], 3, axis=2), name="busi-like", rgb=True)
    widget = _dock(viewer, "Segment", qtbot)
    assert widget.current_choice().name == "lgmsnet-breast-us", "suggested by the image, not its channels"
    assert widget.current_choice().modality == "ultrasound"
    assert "Warning" not in widget.status_label.text()
    assert "lgmsnet-breast-us" in widget.status_label.text(), "the status names the model selected"
    _pick_by_hand(widget, "lgmsnet-polyp")
    status = widget.status_label.text()
    assert "Warning" in status and "colonoscopy" in status and "ultrasound" in status
    colour = np.dstack([grey, 255 - grey, grey // 2])
    viewer.add_image(colour, name="kvasir-like", rgb=True)
    assert widget.current_choice().name == "lgmsnet-polyp"
    assert "Warning" not in widget.status_label.text()
    viewer.add_image(np.zeros((6, 32, 32), np.float32), name="mri-like")
    assert widget.current_choice().name == "lgmsnet3d-hippocampus"
    # a choice made by hand applies to its own image only
    widget.image_combo.setCurrentText("busi-like")
    assert widget.current_choice().name == "lgmsnet-polyp"
    widget.image_combo.setCurrentText("kvasir-like")
    assert widget.current_choice().name == "lgmsnet-polyp"
    widget.image_combo.setCurrentText("mri-like")
    assert widget.current_choice().name == "lgmsnet3d-hippocampus"


@pytest.mark.gui
@needs_display
def test_the_card_shows_one_validation_figure_and_the_prediction_used(make_napari_viewer, qtbot,
                                                                      corrections_dir):
    from napari_lgms.widgets.segment import PREDICTIONS

    viewer = make_napari_viewer()
    viewer.add_image(np.dstack([_grey(), 255 - _grey(), _grey() // 2]), name="frame", rgb=True)
    widget = _dock(viewer, "Segment", qtbot)
    assert widget.current_choice().name == "lgmsnet-polyp"
    assert PREDICTIONS[widget.prediction_combo.currentText()] == "none", "one pass: the interactive default"
    card = widget.card_label.text()
    assert card.count("validation") == 1 and card.count("IoU") == 1, card
    assert "one pass" in card and "held-out" in card and "kvasir-seg" in card
    assert "IoU" in widget.card_label.toolTip() and "split" in widget.card_label.toolTip()
    widget.prediction_combo.setCurrentText(next(t for t, c in PREDICTIONS.items() if c == "flips"))
    assert "averaged over flips" in widget.card_label.text()
    assert widget.card_label.text().count("IoU") == 1


def _store_examples(root, models=("tiny-2d",) * 3, size=32):
    from napari_lgms.corrections import CorrectionsStore
    from napari_lgms.samples import make_ultrasound

    store = CorrectionsStore(root)
    for seed, model in enumerate(models):
        image, mask = make_ultrasound(shape=(size, size), seed=seed)
        store.save(f"example {seed}", image, mask, np.zeros_like(mask), model=model,
                   geometry={"layer": f"example {seed}"})
    return store


def _fake_engine(monkeypatch, tiny_model, **kwargs):
    import napari_lgms.training.finetuning as finetuning

    engine = fake_engine(tiny_model, **kwargs)
    monkeypatch.setattr(finetuning, "finetune_steps", engine)
    return fake_engine


@pytest.mark.gui
@needs_display
@pytest.mark.parametrize("use_first", [False, True])
def test_roll_back_before_or_after_use_returns_segment_to_the_parent(
        make_napari_viewer, qtbot, saved_tiny, tiny_model, corrections_dir, monkeypatch, use_first):
    from napari_lgms.widgets._session_log import read_records

    viewer = make_napari_viewer()
    viewer.add_image(_grey((32, 32)), name="scan")
    segment = _dock(viewer, "Segment", qtbot)
    finetune = _dock(viewer, "Fine-tune", qtbot)
    _pick_by_hand(segment, "tiny-2d")
    _store_examples(finetune.store_root)
    finetune.set_store_root(str(finetune.store_root))
    _fake_engine(monkeypatch, tiny_model)
    finetune.start()
    qtbot.waitUntil(lambda: finetune.task.finished, timeout=30000)
    assert finetune.status_label.text().startswith("Better on your corrections: Dice 0.500 → 0.600")
    new_card = finetune.result.card_path
    assert finetune.use_button.isEnabled() and finetune.rollback_button.isEnabled()
    if use_first:
        finetune.use_button.click()
        assert segment.current_choice().source == str(new_card)
        assert finetune.rollback_button.isEnabled(), "roll back stays available after Use new model"
    finetune.rollback_button.click()
    assert not new_card.exists() and not new_card.with_suffix(".safetensors").exists()
    assert all(c.source != str(new_card) for c in segment.choices)
    assert segment.current_choice().name == "tiny-2d", "back to the parent, not the first model of the list"
    assert "tiny-2d" in segment.status_label.text() and new_card.stem not in segment.status_label.text()
    assert "tiny-2d again" in finetune.status_label.text()
    assert not finetune.use_button.isEnabled() and not finetune.rollback_button.isEnabled()
    actions = [record["action"] for record in read_records(finetune.store_root)]
    assert actions == ["fine-tune", "roll back"]


@pytest.mark.gui
@needs_display
@pytest.mark.parametrize("verdict", ["no evidence", "worse"])
def test_a_run_without_a_better_model_offers_nothing(make_napari_viewer, qtbot, saved_tiny, tiny_model,
                                                     corrections_dir, monkeypatch, verdict):
    viewer = make_napari_viewer()
    finetune = _dock(viewer, "Fine-tune", qtbot)
    _store_examples(finetune.store_root)
    _fake_engine(monkeypatch, tiny_model, verdict=verdict, saved=False)
    finetune.start()
    qtbot.waitUntil(lambda: finetune.task.finished, timeout=30000)
    expected = {"no evidence": "No evidence either way: nothing saved", "worse": "Worse on your corrections: nothing saved"}
    assert finetune.status_label.text().startswith(expected[verdict])
    assert not finetune.use_button.isEnabled() and not finetune.rollback_button.isEnabled()


@pytest.mark.gui
@needs_display
def test_finetune_with_no_corrections_yet_offers_the_model_for_the_projects_newest_image(
        make_napari_viewer, qtbot, saved_tiny):
    viewer = make_napari_viewer()
    finetune = _dock(viewer, "Fine-tune", qtbot)
    viewer.add_image(np.zeros((8, 32, 32), np.float32), name="a volume")
    assert finetune.model_combo.currentText() == "tiny-3d (yours)"
    viewer.add_image(_grey((32, 32)), name="a slice")
    assert finetune.model_combo.currentText() == "tiny-2d (yours)"
    _pick_by_hand(finetune, "tiny-3d")
    viewer.add_image(_grey((32, 32), seed=2), name="another slice")
    assert finetune.model_combo.currentText() == "tiny-3d (yours)", "a model picked by hand stays"


@pytest.mark.gui
@needs_display
def test_a_second_round_fine_tunes_the_newest_version_and_a_model_with_its_versions_is_no_mix(
        make_napari_viewer, qtbot, saved_tiny, tiny_model):
    from napari_lgms.zoo import save_model, user_model_dir

    newer = tiny_model(spatial_dims=2, name="tiny-2d-ft-20261207-070114", lineage={"parent": "tiny-2d"})
    save_model(newer.network, newer.card, user_model_dir())  # the first round's model, in use since
    viewer = make_napari_viewer()
    finetune = _dock(viewer, "Fine-tune", qtbot)
    _store_examples(finetune.store_root, models=("tiny-2d",) * 3 + ("tiny-2d-ft-20261207-070114",) * 2)
    finetune.set_store_root(str(finetune.store_root))
    assert finetune.model_combo.currentText() == "tiny-2d-ft-20261207-070114 (yours)"
    assert "Warning" not in finetune.warning_label.text()


@pytest.mark.gui
@needs_display
def test_finetune_defaults_to_the_corrections_model_warns_on_a_mix_and_passes_other_images(
        make_napari_viewer, qtbot, saved_tiny, tiny_model, corrections_dir, monkeypatch):
    viewer = make_napari_viewer()
    finetune = _dock(viewer, "Fine-tune", qtbot)
    _store_examples(finetune.store_root, models=("tiny-2d", "tiny-2d", "tiny-3d"))
    finetune.set_store_root(str(finetune.store_root))
    assert finetune.model_combo.currentText() == "tiny-2d (yours)"
    _store_examples(finetune.store_root, models=("tiny-3d", "tiny-3d", "tiny-2d"))  # the same keys, replaced
    finetune.set_store_root(str(finetune.store_root))
    assert finetune.model_combo.currentText() == "tiny-3d (yours)", "the model of most corrections"
    warning = finetune.warning_label.text()
    assert "2 models" in warning and "tiny-3d ×2" in warning and "tiny-2d ×1" in warning
    _store_examples(finetune.store_root, models=("lgmsnet-polyp", "lgmsnet-breast-us"))
    finetune.set_store_root(str(finetune.store_root))
    assert "modalities (colonoscopy, ultrasound)" in finetune.warning_label.text()

    viewer.add_image(_grey((32, 32), seed=5), name="other grey")
    viewer.add_image(_grey((32, 32), seed=6), name="example 0")  # corrected already: not unlabelled
    viewer.add_image(np.zeros((4, 32, 32), np.float32), name="a volume")  # not for a 2D model
    viewer.add_image(np.dstack([_grey((32, 32))] * 3), name="grey as rgb", rgb=True)
    assert finetune.unlabelled_check.isChecked(), "on by default"
    engine = _fake_engine(monkeypatch, tiny_model, saved=False)
    finetune.model_combo.setCurrentText("tiny-2d (yours)")
    finetune.start()
    qtbot.waitUntil(lambda: finetune.task.finished, timeout=30000)
    unlabelled = engine.calls[-1]["unlabelled"]
    assert [a.shape for a in unlabelled] == [(32, 32), (32, 32)]
    finetune.unlabelled_check.setChecked(False)
    finetune.start()
    qtbot.waitUntil(lambda: finetune.task.finished, timeout=30000)
    assert engine.calls[-1]["unlabelled"] is None


@pytest.mark.gui
@needs_display
def test_the_time_estimate_shows_at_once_and_only_counts_down(make_napari_viewer, qtbot, saved_tiny,
                                                              tiny_model, corrections_dir, monkeypatch):
    import re
    import time as clock

    viewer = make_napari_viewer()
    finetune = _dock(viewer, "Fine-tune", qtbot)
    _store_examples(finetune.store_root)

    def slow_engine(model, **options):
        from napari_lgms.training.engine import TrainProgress

        for step in range(1, 30):
            clock.sleep(0.1 if step < 10 else 0.01)  # a slow start, then fast steps: no jump in the estimate
            yield TrainProgress(step, 0, 1, 0, 1.0, 1e-3, 0.1 * step, None, None, "train")
        return None

    import napari_lgms.training.finetuning as finetuning

    monkeypatch.setattr(finetuning, "finetune_steps", slow_engine)
    finetune.minutes_spin.setValue(1.0)
    finetune.start()
    assert re.search(r"about [01]:\d\d left", finetune.time_label.text()), finetune.time_label.text()
    seen = []

    def left():
        match = re.search(r"about (\d+):(\d\d) left", finetune.time_label.text())
        if match:
            seen.append(int(match.group(1)) * 60 + int(match.group(2)))
        return finetune.task.finished

    qtbot.waitUntil(left, timeout=30000)
    assert len(seen) > 3 and seen[0] <= 60 and all(b <= a for a, b in zip(seen, seen[1:])), seen
    assert finetune.time_label.text().startswith("took 0:0"), "at the end: how long it took"


@pytest.mark.gui
@needs_display
def test_the_view_moves_to_a_segmented_image_out_of_view_and_the_session_log_records_runs(
        make_napari_viewer, qtbot, saved_tiny, corrections_dir):
    from napari_lgms.widgets._layer_geometry import in_view, view_coverage
    from napari_lgms.widgets._session_log import LOG_NAME, read_records

    viewer = make_napari_viewer(show=True)
    viewer.add_image(_grey((64, 64)), name="near")
    widget = _dock(viewer, "Segment", qtbot)
    far = viewer.add_image(_grey((32, 32), seed=4), name="far", translate=(5000.0, 5000.0))
    viewer.reset_view(layers=[viewer.layers["near"]])  # the user looks at the first image
    assert not in_view(viewer, far)
    widget.image_combo.setCurrentText("far")
    _pick_by_hand(widget, "tiny-2d")
    _segment(qtbot, widget)
    assert in_view(viewer, far), "the view moved to the segmented image"
    viewer.reset_view(layers=[viewer.layers["near"]])
    speck = viewer.add_image(_grey((4, 4)), name="speck")  # opened: a speck in a corner of the view
    assert in_view(viewer, speck) and widget.image_combo.currentText() == "speck"
    viewer.reset_view(layers=[viewer.layers["near"]])
    larger = viewer.add_image(_grey((640, 640), seed=5), name="larger")  # opened: fills and overflows the view
    assert view_coverage(viewer, larger)[0] > 0.9, "the view fits a newly opened image that it cut off"
    widget.image_combo.setCurrentText("far")

    labels = widget.last_output
    corrected = np.array(labels.data)
    corrected[:4] = 1
    labels.data = corrected
    viewer.layers.selection.active = labels
    assert widget.corrections.save_current() == "far"
    root = widget.corrections.store.root
    assert (root / LOG_NAME).is_file()
    records = read_records(root)
    assert [r["action"] for r in records] == ["segment", "save correction"]
    run, saved = records
    assert run["model"] == "tiny-2d" and run["image"] == "far" and run["shape"] == [32, 32]
    assert run["settings"]["prediction"] == "none" and run["seconds"] >= 0
    assert run["result"]["labels_layer"] == "far segmentation"
    assert saved["model"] == "tiny-2d" and saved["result"]["stored"] == 1
    for record in records:
        assert set(record) == {"timestamp", "action", "model", "image", "shape", "settings", "seconds",
                               "result"}


def _visible_in_dock(widget, dock) -> bool:
    """Whether ``widget`` is shown whole inside ``dock``'s visible area and on the window (geometry)."""
    from qtpy.QtCore import QRect

    if not widget.isVisible() or widget.visibleRegion().isEmpty():
        return False
    window = dock.window()
    top_left = widget.mapTo(window, widget.rect().topLeft())
    rect = QRect(top_left, widget.size())
    return dock.geometry().contains(rect) and window.rect().contains(rect)


@pytest.mark.gui
@needs_display
def test_both_widgets_are_usable_on_a_1366x768_screen(make_napari_viewer, qtbot, saved_tiny, tiny_model,
                                                      corrections_dir, monkeypatch, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1366, 768)
    viewer.add_image(_grey((64, 64)), name="scan")
    segment_dock, segment = viewer.window.add_plugin_dock_widget("napari-lgms", "Segment")
    finetune_dock, finetune = viewer.window.add_plugin_dock_widget("napari-lgms", "Fine-tune")
    qtbot.waitUntil(lambda: segment.models_ready and finetune.models_ready, timeout=30000)
    _store_examples(finetune.store_root, models=[f"model-{i}-with-a-rather-long-name" for i in range(8)])
    segment.corrections.refresh()
    finetune.set_store_root(str(finetune.store_root))
    _fake_engine(monkeypatch, tiny_model)
    finetune.start()
    qtbot.waitUntil(lambda: finetune.task.finished, timeout=30000)
    qtbot.wait(300)
    _, _, width, height = viewer.window.geometry()
    assert height <= 768 and width <= 1366
    path = Path(os.environ.get("NAPARI_LGMS_SCREENSHOT_DIR", tmp_path)) / "screenshot-1366x768.png"
    viewer.screenshot(str(path), canvas_only=False)
    assert path.stat().st_size > 0
    heights = {"segment dock": segment_dock.height(), "fine-tune dock": finetune_dock.height(),
               "segment needs": segment.scroll.widget().sizeHint().height(),
               "fine-tune needs": finetune.scroll.widget().sizeHint().height()}
    print(f"\n1366x768: {heights}; screenshot {path}")

    for button in (segment.run_button, segment.cancel_button):
        assert _visible_in_dock(button, segment_dock), button.text()
    for button in (finetune.start_button, finetune.use_button, finetune.rollback_button):
        assert _visible_in_dock(button, finetune_dock), button.text()
    assert finetune.use_button.isEnabled() and finetune.rollback_button.isEnabled()
    assert _visible_in_dock(segment.status_label, segment_dock)
    assert _visible_in_dock(finetune.status_label, finetune_dock)
    for scroll in (segment.scroll, finetune.scroll):  # everything else: scroll down, never sideways
        assert not scroll.horizontalScrollBar().isVisible()
        assert scroll.widget().width() <= scroll.viewport().width(), "nothing cut off on the right"
    entries = segment.corrections.entry_list
    assert entries.count() == 8 and not entries.horizontalScrollBar().isVisible()
    card = segment.card_label
    assert card.wordWrap() and card.width() <= segment.scroll.viewport().width()
    status = finetune.status_label
    assert status.height() >= status.heightForWidth(status.width()), "the verdict is shown whole"


@pytest.mark.gui
@needs_display
def test_event_loop_gap_during_a_first_segmentation(make_napari_viewer, qtbot, corrections_dir, tmp_path,
                                                    monkeypatch, record_property):
    """Measures (does not judge) how long napari's event loop stalls while a first segmentation runs:
    model listing, engine import, model loading and the run all happen in workers."""
    from napari_lgms.widgets._event_loop import EventLoopGapMeter

    monkeypatch.setenv("NAPARI_LGMS_CACHE_DIR", str(tmp_path / "cache"))  # a first run: nothing cached
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-lgms", "ultrasound")
    opening = EventLoopGapMeter().start()
    widget = _dock(viewer, "Segment", qtbot)
    qtbot.wait(200)
    opening.stop()
    assert widget.current_choice().name == "lgmsnet-synthetic-us"
    first = EventLoopGapMeter().start()
    _segment(qtbot, widget)
    qtbot.wait(200)
    first.stop()
    assert widget.last_output is not None, widget.status_label.text()
    second = EventLoopGapMeter().start()
    _segment(qtbot, widget)
    qtbot.wait(200)
    second.stop()
    for name, meter in (("opening the widget", opening), ("first segmentation", first),
                        ("second segmentation", second)):
        print(f"\n{name}: {meter.report()}")
        record_property(f"longest gap ms, {name}", round(meter.longest * 1000))
