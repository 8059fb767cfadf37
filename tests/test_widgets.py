"""The napari widgets on a real viewer (needs a display: run under ``xvfb-run -a``).

A tiny test network is saved into the isolated user model folder so it shows
up in the model list like a fine-tuned model; runs take milliseconds.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from tests.widget_helpers import fake_engine

needs_display = pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display; run under xvfb-run -a")


def test_throttled_keeps_first_last_and_important_items_and_the_return_value():
    from napari_lgms._generators import throttled

    def engine():
        for index in range(500):
            yield {"index": index, "important": index == 250}
        return "result"

    passed = []
    steps = throttled(engine(), min_interval=10.0, always=lambda item: item["important"])
    while True:
        try:
            passed.append(next(steps)["index"])
        except StopIteration as stop:
            assert stop.value == "result"
            break
    assert passed[0] == 0 and passed[-1] == 499 and 250 in passed and len(passed) <= 5


def test_throttled_stop_closes_the_engine_before_it_goes_on():
    from napari_lgms._generators import throttled

    reached = []

    def engine():
        for index in range(100):
            reached.append(index)
            yield index
        reached.append("saved")  # what a fine-tuning run does after its last report
        return "result"

    stop = []
    steps = throttled(engine(), min_interval=0.0, should_stop=lambda: bool(stop))
    next(steps), next(steps)
    stop.append(True)
    with pytest.raises(StopIteration) as finished:
        next(steps)
    assert finished.value.value is None and "saved" not in reached and len(reached) == 2


@pytest.mark.gui
@needs_display
def test_a_model_listing_that_breaks_in_its_worker_reaches_the_widget(qtbot, monkeypatch):
    """The first listing runs in a worker, and a worker that returns an exception raises it instead."""
    from qtpy.QtWidgets import QWidget

    from napari_lgms.widgets import _shared

    def unreadable(include_untrained):
        raise PermissionError("models folder: permission denied")

    monkeypatch.setattr(_shared, "_models_imported", lambda: False)
    monkeypatch.setattr(_shared, "model_choices", unreadable)
    widget, listed = QWidget(), []
    qtbot.addWidget(widget)
    _shared.list_models_then(widget, listed.append)
    qtbot.waitUntil(lambda: bool(listed), timeout=20000)
    assert isinstance(listed[0], PermissionError) and "permission denied" in str(listed[0])


def test_the_newest_of_the_users_models_is_listed_first_and_suggested(tiny_model):
    import os

    from napari_lgms.widgets._shared import model_choices, suggested_index
    from napari_lgms.zoo import save_model, user_model_dir

    paths = {}
    for name in ("tiny-2d-ft-20261207-070114", "tiny-2d-ft-20261207-090000", "tiny-2d-ft-20261208-080000"):
        loaded = tiny_model(spatial_dims=2, name=name, lineage={"parent": "tiny-2d"})
        paths[name] = save_model(loaded.network, loaded.card, user_model_dir())
    for age, name in enumerate(["tiny-2d-ft-20261207-090000", "tiny-2d-ft-20261208-080000",
                                "tiny-2d-ft-20261207-070114"]):  # saved last: the newest
        os.utime(paths[name], (1e9 + age, 1e9 + age))
    choices = model_choices()
    users = [c.name for c in choices if c.origin == "user"]
    assert users == ["tiny-2d-ft-20261207-070114", "tiny-2d-ft-20261208-080000", "tiny-2d-ft-20261207-090000"]
    assert choices[suggested_index(choices, spatial_ndim=2, channels=1)].name == "tiny-2d-ft-20261207-070114"


def test_the_suggested_model_fits_the_image():
    from napari_lgms.widgets._shared import ModelChoice, suggested_index

    def choice(name, dims, channels, origin="shipped", trained=True):
        return ModelChoice(name, f"/models/{name}.json", trained, dims, channels, "", name, origin)

    choices = [choice("esdmrnet-breast-us", 2, 1), choice("esdmrnet-polyp", 2, 3),
               choice("lgmsnet-breast-us", 2, 1), choice("lgmsnet-polyp", 2, 3),
               choice("lgmsnet-synthetic-us", 2, 1), choice("lgmsnet3d-hippocampus", 3, 1),
               choice("lgmsnet", 2, 3, "none yet", trained=False)]
    names = [c.name for c in choices]

    def pick(*args, **kwargs):
        return names[suggested_index(choices, **kwargs)]

    assert pick(spatial_ndim=2, channels=3) == "lgmsnet-polyp"
    assert pick(spatial_ndim=2, channels=1) == "lgmsnet-breast-us"
    assert pick(spatial_ndim=3, channels=1) == "lgmsnet3d-hippocampus"
    assert pick(spatial_ndim=3, channels=3) == "lgmsnet-polyp"  # an RGB stack: a 2D model, slice by slice
    assert pick(spatial_ndim=2, channels=1, hint="lgmsnet-synthetic-us") == "lgmsnet-synthetic-us"
    assert pick(spatial_ndim=2, channels=1, hint="not-installed") == "lgmsnet-breast-us"
    choices.insert(0, choice("lgmsnet-breast-us-ft-20261122-101500", 2, 1, "user"))
    names.insert(0, choices[0].name)
    assert pick(spatial_ndim=2, channels=1) == "lgmsnet-breast-us-ft-20261122-101500"  # yours first
    assert pick(spatial_ndim=2, channels=3) == "lgmsnet-polyp"
    untrained = [c for c in choices if not c.trained]
    assert suggested_index(untrained, spatial_ndim=2, channels=1) == 0


def test_place_and_merge_touch_only_the_region():
    from napari_lgms.widgets._layer_geometry import merge_into, place, region_slices

    shape = (4, 6, 6)
    region = region_slices(shape, roi=((0, 4), (1, 5), (1, 5)), slice_axis=0, slice_index=2)
    full = place(np.ones((6, 6), np.uint8), shape, region, slice_axis=0, slice_index=2)
    assert full.sum() == 16 and full[2, 1:5, 1:5].all()
    existing = np.zeros(shape, np.int32)
    existing[2, 1, 1] = 5
    existing[0] = 9
    replaced = merge_into(existing, full, region, fill_only_empty=False)
    filled = merge_into(existing, full, region, fill_only_empty=True)
    assert replaced[2, 1, 1] == 1 and filled[2, 1, 1] == 5
    assert (replaced[0] == 9).all() and (filled[0] == 9).all()
    assert replaced[2].sum() == 16 and filled[2].sum() == 15 + 5


def test_box_from_a_shapes_layer_in_image_index_coordinates():
    from napari.components import ViewerModel

    from napari_lgms.widgets._layer_geometry import boxes_from_shapes

    viewer = ViewerModel()
    image = viewer.add_image(np.zeros((5, 40, 40), np.float32), scale=(2.0, 0.5, 0.5), translate=(0, 10, 0))
    # world coordinates: z = 2 * 3, y = 10 + 0.5 * (4..20), x = 0.5 * (6..30)
    world = np.array([[6.0, 12.0, 3.0], [6.0, 12.0, 15.0], [6.0, 20.0, 15.0], [6.0, 20.0, 3.0]])
    shapes = viewer.add_shapes([world], shape_type="rectangle")
    (box,) = boxes_from_shapes(viewer, shapes, image, [0, 1, 2], (5, 40, 40), only_selected=True)
    assert box.roi == ((3, 4), (4, 21), (6, 31)) and box.flat_axes == (0,)


def test_layer_spacing_in_millimetres_only_for_length_units():
    from napari.layers import Image

    from napari_lgms.widgets._layer_geometry import spacing_in_mm

    volume = np.zeros((4, 5, 6, 3), np.float32)
    in_mm = Image(volume, scale=(2.0, 0.5, -0.5, 1.0), units=("mm", "mm", "mm", "pixel"))
    assert spacing_in_mm(in_mm, [0, 1, 2]) == (2.0, 0.5, 0.5)  # a flipped axis has a positive size
    assert spacing_in_mm(in_mm, [0, 1, 2, 3]) is None  # "pixel" is no length
    in_um = Image(volume[..., 0], scale=(2.0, 0.5, 0.5), units=("micrometer",) * 3)
    assert np.allclose(spacing_in_mm(in_um, [0, 1, 2]), (0.002, 0.0005, 0.0005))
    pixels = Image(volume[..., 0], scale=(3.0, 1.0, 1.0))  # napari's default units
    assert spacing_in_mm(pixels, [0, 1, 2]) is None


def _dock(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget("napari-lgms", name)
    return widget


def _run_and_wait(qtbot, widget, timeout=20000):
    widget.run()
    assert widget.task is not None, widget.status_label.text()
    qtbot.waitUntil(lambda: widget.task.finished, timeout=timeout)


@pytest.mark.gui
@needs_display
def test_segment_2d_sample_new_layer_keeps_geometry(make_napari_viewer, qtbot, saved_tiny, corrections_dir):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-lgms", "ultrasound")
    widget = _dock(viewer, "Segment")
    widget.select_model(saved_tiny[2])
    assert "generated test data" in widget.card_label.text()
    assert "2D" in widget.card_label.text()
    widget.image_combo.setCurrentText("ultrasound")

    _run_and_wait(qtbot, widget)

    labels = viewer.layers["ultrasound segmentation"]
    image = viewer.layers["ultrasound"]
    assert labels.data.shape == image.data.shape
    np.testing.assert_allclose(labels.scale, image.scale)
    np.testing.assert_allclose(labels.translate, image.translate)
    assert [str(u) for u in labels.units] == [str(u) for u in image.units]
    assert labels.axis_labels == image.axis_labels
    meta = labels.metadata["napari_lgms"]
    np.testing.assert_array_equal(meta["prediction"], labels.data)
    assert meta["model"] == "tiny-2d"
    assert " s on cpu" in widget.status_label.text()

    # corrections: paint, save (button and Shift-S), same slice replaces, delete
    from napari.utils.key_bindings import KeyBinding

    corrected = np.array(labels.data)
    corrected[:, :20] = 1
    labels.data = corrected
    viewer.layers.selection.active = labels
    panel = widget.corrections
    finetune = _dock(viewer, "Fine-tune")
    qtbot.waitUntil(lambda: finetune.models_ready, timeout=20000)
    assert panel.save_current() == "ultrasound"
    viewer.keymap[KeyBinding.from_str("Shift-S")](viewer)
    assert len(panel.store) == 1
    assert finetune.store_label.text().startswith("1 in"), "the Fine-tune widget sees every save"
    assert finetune.model_combo.currentText() == "tiny-2d (yours)", "and defaults to the corrections' model"
    example = panel.store.load("ultrasound")
    np.testing.assert_array_equal(example.mask, labels.data)
    np.testing.assert_array_equal(example.prediction, meta["prediction"])
    assert example.entry.model == "tiny-2d"
    assert example.entry.geometry["scale"] == [0.2, 0.2] and example.entry.geometry["spacing"] == [0.2, 0.2]
    assert panel.entry_list.count() == 1
    panel.entry_list.setCurrentRow(0)
    panel.delete_selected()
    assert len(panel.store) == 0 and "0 corrections" in panel.count_label.text()


@pytest.mark.gui
@needs_display
def test_the_prediction_choice_reaches_the_engine(make_napari_viewer, qtbot, saved_tiny, corrections_dir):
    from napari_lgms.inference import segment
    from napari_lgms.widgets.segment import PREDICTIONS
    from napari_lgms.zoo import load_model

    image = np.random.default_rng(3).normal(size=(40, 28)).astype(np.float32)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="noise")
    widget = _dock(viewer, "Segment")
    widget.select_model(saved_tiny[2])
    widget.image_combo.setCurrentText("noise")
    assert PREDICTIONS[widget.prediction_combo.currentText()] == "none", "one pass by default (interactive)"
    for text, choice in PREDICTIONS.items():
        widget.prediction_combo.setCurrentText(text)
        assert widget.plan().test_time_augmentation == choice

    widget.prediction_combo.setCurrentText(next(t for t, c in PREDICTIONS.items() if c == "flips"))
    _run_and_wait(qtbot, widget)
    model = load_model(saved_tiny[2])
    flipped = segment(image, model, test_time_augmentation="flips").labels
    np.testing.assert_array_equal(widget.last_output.data, flipped)
    assert "averaged over flips" in widget.status_label.text()
    assert not np.array_equal(flipped, segment(image, model, test_time_augmentation="none").labels)


@pytest.mark.gui
@needs_display
def test_the_layers_millimetres_reach_the_engine(make_napari_viewer, qtbot, saved_tiny, corrections_dir,
                                                 monkeypatch):
    import napari_lgms.inference as inference

    seen, original = [], inference.segment_steps

    def recording(*args, spacing=None, **options):
        seen.append(spacing)
        return original(*args, spacing=spacing, **options)

    monkeypatch.setattr(inference, "segment_steps", recording)
    viewer = make_napari_viewer()
    volume = np.random.default_rng(3).normal(size=(12, 20, 20)).astype(np.float32)
    viewer.add_image(volume, name="mm", scale=(3.0, 0.5, 0.5), units="mm")
    viewer.add_image(volume, name="pixels")
    widget = _dock(viewer, "Segment")
    widget.select_model(saved_tiny[3])
    for name, spacing in (("mm", (3.0, 0.5, 0.5)), ("pixels", None)):
        widget.image_combo.setCurrentText(name)
        assert widget.plan().spacing == spacing
        _run_and_wait(qtbot, widget)
        assert seen[-1] == spacing


@pytest.mark.gui
@needs_display
def test_the_model_follows_the_image_unless_pinned(make_napari_viewer, saved_tiny, corrections_dir):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-lgms", "ultrasound")  # made for lgmsnet-synthetic-us (layer metadata)
    widget = _dock(viewer, "Segment")
    assert widget.current_choice().name == "lgmsnet-synthetic-us"
    viewer.add_image(np.zeros((6, 32, 32), np.float32), name="scan")  # a volume: the user's 3D model
    widget.image_combo.setCurrentText("scan")
    assert widget.current_choice().name == "tiny-3d"
    index = next(i for i, c in enumerate(widget.choices) if c.name == "tiny-2d")
    widget.model_combo.setCurrentIndex(index)
    widget.model_combo.activated.emit(index)  # what a click in the list does
    widget.image_combo.setCurrentText("ultrasound")
    assert widget.current_choice().name == "lgmsnet-synthetic-us", "a choice applies to its own image"
    widget.image_combo.setCurrentText("scan")
    assert widget.current_choice().name == "tiny-2d", "and comes back with it"
    widget.model_pin.setChecked(True)  # pinned: one model for every image
    widget.image_combo.setCurrentText("ultrasound")
    assert widget.current_choice().name == "tiny-2d"


@pytest.mark.gui
@needs_display
def test_segment_volume_slice_box_and_fill_only_empty(make_napari_viewer, qtbot, saved_tiny, corrections_dir):
    from napari_lgms.samples import make_volume

    from napari_lgms.widgets.segment import FILL_EMPTY, MODE_BOX, MODE_SLICE

    volume = make_volume(shape=(8, 32, 32))[0]
    viewer = make_napari_viewer()
    image = viewer.add_image(volume, name="vol", scale=(3.0, 1.0, 1.0), translate=(0.0, 5.0, -2.0))
    painted = np.zeros(volume.shape, dtype=np.uint8)
    painted[:, :4, :4] = 7
    viewer.add_labels(painted, name="mine", scale=image.scale, translate=image.translate)
    viewer.dims.set_point(0, 3 * 3.0)  # slice 3
    widget = _dock(viewer, "Segment")
    widget.select_model(saved_tiny[2])
    widget.image_combo.setCurrentText("vol")

    widget.mode_combo.setCurrentText(MODE_SLICE)
    _run_and_wait(qtbot, widget)
    result = viewer.layers["vol segmentation"]
    np.testing.assert_allclose(result.scale, (3.0, 1.0, 1.0))
    np.testing.assert_allclose(result.translate, (0.0, 5.0, -2.0))
    others = np.delete(np.arange(8), 3)
    assert not result.data[others].any(), "only the current slice is segmented"

    # a box on slice 5 into the user's own layer, keeping what is painted
    viewer.dims.set_point(0, 5 * 3.0)
    box = np.array([[5 * 3.0, 5 + 2, -2 + 2], [5 * 3.0, 5 + 2, -2 + 30], [5 * 3.0, 5 + 30, -2 + 30],
                    [5 * 3.0, 5 + 30, -2 + 2]])
    viewer.add_shapes([box], shape_type="rectangle", name="boxes")
    widget.mode_combo.setCurrentText(MODE_BOX)
    widget.shapes_combo.setCurrentText("boxes")
    widget.output_combo.setCurrentText("mine")
    widget.merge_combo.setCurrentText(FILL_EMPTY)
    plan = widget.plan()
    assert plan.jobs[0].slice_index == 5 and plan.jobs[0].roi[1:] == ((2, 31), (2, 31))
    _run_and_wait(qtbot, widget)
    mine = viewer.layers["mine"].data
    assert (mine[:, :4, :4] == 7).all(), "painted labels are kept"
    outside = np.ones(mine.shape, dtype=bool)
    outside[5, 2:31, 2:31] = False
    assert (mine[outside & (painted == 0)] == 0).all(), "nothing written outside the box"

    # a correction on a slice of a volume is stored as a 2D example
    viewer.layers.selection.active = result
    key = widget.corrections.save_current()
    assert key is not None and key.endswith("=5")
    assert widget.corrections.store.load(key).mask.shape == (32, 32)

    # every box at once with a 3D model: a box drawn on one slice spans the whole depth
    from napari_lgms.widgets.segment import MODE_ALL_BOXES, NEW_LAYER

    second = box.copy()
    second[:, 1:] = [[5 + 20, -2 + 20], [5 + 20, -2 + 28], [5 + 28, -2 + 28], [5 + 28, -2 + 20]]
    viewer.layers["boxes"].add_rectangles([second])
    widget.select_model(saved_tiny[3])
    widget.mode_combo.setCurrentText(MODE_ALL_BOXES)
    widget.output_combo.setCurrentText(NEW_LAYER)
    plan = widget.plan()
    assert [job.roi for job in plan.jobs] == [((0, 8), (2, 31), (2, 31)), ((0, 8), (20, 29), (20, 29))]
    _run_and_wait(qtbot, widget)
    assert widget.last_output.name.startswith("vol segmentation") and widget.last_output is not result
    assert "tiny-3d" in widget.status_label.text()


@pytest.mark.gui
@needs_display
def test_cancel_leaves_the_viewer_unchanged(make_napari_viewer, qtbot, saved_tiny, monkeypatch,
                                            corrections_dir):
    import napari_lgms.inference as inference
    from napari_lgms.inference import Progress

    stopped = []

    def slow_steps(image, model, *, should_stop=None, **kwargs):
        step = 0
        try:
            for step in range(1000):
                if should_stop is not None and should_stop():
                    return None
                time.sleep(0.01)
                yield Progress(step, 1000, "slow")
            raise AssertionError("never cancelled")
        finally:
            stopped.append(step)

    monkeypatch.setattr(inference, "segment_steps", slow_steps)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.float32), name="img")
    widget = _dock(viewer, "Segment")
    widget.select_model(saved_tiny[2])
    widget.run()
    qtbot.waitUntil(lambda: widget.task.worker.pbar.n > 0, timeout=10000)
    assert widget.cancel_button.isEnabled()
    widget.cancel()
    qtbot.waitUntil(lambda: widget.task.finished, timeout=10000)
    assert stopped and stopped[0] < 999, "the engine stopped early"
    assert [layer.name for layer in viewer.layers] == ["img"]
    assert "Cancelled" in widget.status_label.text()
    from napari_lgms.widgets._session_log import read_records

    assert [r["result"]["outcome"] for r in read_records(widget.corrections.store.root)] == ["cancelled"]
    assert widget.run_button.isEnabled()


@pytest.mark.gui
@needs_display
def test_errors_become_one_line_notifications(make_napari_viewer, qtbot, saved_tiny, corrections_dir):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.float32), name="flat")
    widget = _dock(viewer, "Segment")
    widget.select_model(saved_tiny[3])  # a 3D model on a 2D image
    earlier = len(notification_manager.records)
    widget.run()
    shown = [notification.message for notification in notification_manager.records[earlier:]]
    assert shown and "3D model" in shown[-1] and "\n" not in shown[-1]
    assert widget.status_label.text().startswith("Error:")


def _store_examples(root, count=3, size=32):
    from napari_lgms.corrections import CorrectionsStore
    from napari_lgms.samples import make_ultrasound

    store = CorrectionsStore(root)
    for seed in range(count):
        image, mask = make_ultrasound(shape=(size, size), seed=seed)
        store.save(f"example {seed}", image, mask, np.zeros_like(mask), model="tiny-2d")
    return store


@pytest.mark.gui
@needs_display
def test_finetune_runs_plots_and_states_its_verdict(make_napari_viewer, qtbot, saved_tiny, corrections_dir):
    from napari_lgms.widgets.finetune import offered

    viewer = make_napari_viewer()
    segment = _dock(viewer, "Segment")
    finetune = _dock(viewer, "Fine-tune")
    listed = [finetune.model_combo.itemText(i) for i in range(finetune.model_combo.count())]
    assert "tiny-2d (yours)" in listed
    assert str(finetune.store_root) == str(segment.corrections.store.root)
    _store_examples(finetune.store_root, count=3)
    finetune.set_store_root(str(finetune.store_root))
    assert finetune.store_label.text().startswith("3 in")
    assert finetune.model_combo.currentText() == "tiny-2d (yours)", "the corrections' model by default"
    assert "save 2 more" in finetune.warning_label.text(), "says up front that 3 cannot give a model"
    finetune.start()
    qtbot.waitUntil(lambda: finetune.start_button.isEnabled() and "Error" in finetune.status_label.text(),
                    timeout=30000)
    refusal = "3 corrections: a new model is saved only when a check on at least 5"
    assert refusal in finetune.status_label.text()
    assert finetune.plot.loss == [] and finetune.result is None, "refused before any training"
    assert finetune.time_label.text() == ""

    _store_examples(finetune.store_root, count=5)
    finetune.set_store_root(str(finetune.store_root))
    assert finetune.store_label.text().startswith("5 in") and not finetune.warning_label.text()

    from napari_lgms.training.finetuning import PRESETS

    assert finetune.minutes_spin.value() * 60 == PRESETS["default"]["time_budget"], "the CLI's and API's budget"
    finetune.fast_check.setChecked(True)
    assert finetune.minutes_spin.value() * 60 == PRESETS["fast"]["time_budget"]
    finetune.fast_check.setChecked(False)
    assert finetune.minutes_spin.value() * 60 == PRESETS["default"]["time_budget"]
    finetune.budget_combo.setCurrentText("Steps")
    finetune.steps_spin.setValue(6)
    finetune.start()
    qtbot.waitUntil(lambda: finetune.task.finished, timeout=60000)
    result = finetune.result
    assert result is not None, finetune.status_label.text()
    assert finetune.plot.loss and finetune.plot.dice, "live loss and held-out score points"
    assert finetune.plot.score_label == "held-out IoU", "the score the verdict judges (one class: IoU)"
    words = {"better": "Better on your corrections", "no evidence": "No evidence either way (",
             "worse": "Worse on your corrections ("}  # the check's numbers follow
    assert finetune.status_label.text().startswith(words[result.verdict])
    assert result.evidence["held_out"] == 5, "every correction checked"
    assert finetune.use_button.isEnabled() == offered(result) == finetune.rollback_button.isEnabled()


def test_the_verdict_says_when_the_final_model_did_not_fit_its_corrections():
    from types import SimpleNamespace

    from napari_lgms.widgets.finetune import verdict_text

    result = SimpleNamespace(saved=False, card_path=None, verdict="no evidence",
                             evidence={"corrections": 8, "minimum": 5, "unfit": True})
    assert "the final model fits your corrections worse" in verdict_text(result)
    result.evidence = {"corrections": 8, "minimum": 5}
    assert verdict_text(result) == "No evidence either way: nothing saved; the previous model is kept."
    result.evidence = {"corrections": 12, "minimum": 5, "held_out": 12, "metric": "iou",
                       "mean_difference": 0.021, "standard_error": 0.03}
    assert verdict_text(result) == ("No evidence either way (+2.1 ± 3.0 IoU points over 12 corrections): "
                                    "nothing saved; the previous model is kept.")
    result.candidate = object()
    hint = "kept. Review on open images can still show if the new one is better."
    assert verdict_text(result).endswith(hint), "a new model the user can still review"
    result.candidate = None
    result.evidence["gained"] = 8
    assert verdict_text(result).startswith("No evidence either way (+2.1 ± 3.0 IoU points over 12 corrections, "
                                           "8 better)")
    result.verdict, result.evidence["mean_difference"] = "worse", -0.09
    assert verdict_text(result).startswith("Worse on your corrections (-9.0 ± 3.0 IoU points over 12")


def test_a_better_verdict_quotes_the_score_it_was_judged_on():
    from types import SimpleNamespace

    from napari_lgms.widgets.finetune import verdict_text

    result = SimpleNamespace(saved=True, card_path="new.json", name="new", verdict="better",
                             evidence={"metric": "iou"}, metrics_before={"iou": 0.31, "dice": 0.44},
                             metrics_after={"iou": 0.72, "dice": 0.82})
    assert verdict_text(result) == "Better on your corrections: IoU 0.310 → 0.720. Saved as new."
    result.evidence = {"metric": "dice"}  # several classes: mean Dice
    assert verdict_text(result).startswith("Better on your corrections: Dice 0.440 → 0.820.")


def test_a_better_verdict_from_mostly_failures_says_what_it_cannot_vouch_for():
    from types import SimpleNamespace

    from napari_lgms.widgets.finetune import verdict_text

    result = SimpleNamespace(saved=True, card_path="new.json", name="new", verdict="better",
                             evidence={"metric": "iou", "held_out": 10, "parent_failed": 6},
                             metrics_before={"iou": 0.31}, metrics_after={"iou": 0.72})
    assert verdict_text(result) == (
        "Better on your corrections: IoU 0.310 → 0.720. Saved as new. 6 of your 10 corrections are "
        "images the old model had failed on, so the check speaks for images like those: try the new "
        "model on a few the old one got right.")
    for failed in (4, 10):  # mostly right, or wrong on every one (a new kind of image): nothing to add
        result.evidence["parent_failed"] = failed
        assert verdict_text(result) == "Better on your corrections: IoU 0.310 → 0.720. Saved as new."


@pytest.mark.gui
@needs_display
def test_finetune_cancel_keeps_the_previous_model(make_napari_viewer, qtbot, saved_tiny, corrections_dir):
    from napari_lgms.zoo import user_model_dir

    viewer = make_napari_viewer()
    finetune = _dock(viewer, "Fine-tune")
    _store_examples(finetune.store_root, count=5)
    before = sorted(p.name for p in user_model_dir().iterdir())
    finetune.model_combo.setCurrentText("tiny-2d (yours)")
    finetune.budget_combo.setCurrentText("Steps")
    finetune.steps_spin.setValue(100000)
    finetune.start()
    qtbot.waitUntil(lambda: len(finetune.plot.loss) >= 2, timeout=60000)
    finetune.cancel()
    qtbot.waitUntil(lambda: finetune.task.finished, timeout=30000)
    assert finetune.result is None
    assert sorted(p.name for p in user_model_dir().iterdir()) == before
    assert "previous model is kept" in finetune.status_label.text()


@pytest.mark.gui
@needs_display
def test_finetune_cancel_during_save_removes_the_new_version(make_napari_viewer, qtbot, saved_tiny,
                                                             tiny_model, corrections_dir, monkeypatch):
    import napari_lgms.training.finetuning as finetuning
    from napari_lgms.zoo import user_model_dir

    viewer = make_napari_viewer()
    finetune = _dock(viewer, "Fine-tune")
    _store_examples(finetune.store_root)
    before = sorted(p.name for p in user_model_dir().iterdir())
    # the user presses Cancel while the file is being written
    monkeypatch.setattr(finetuning, "finetune_steps",
                        fake_engine(tiny_model, during_save=finetune.cancel))
    finetune.start()
    qtbot.waitUntil(lambda: finetune.task.finished, timeout=60000)
    assert finetune.result is None
    assert sorted(p.name for p in user_model_dir().iterdir()) == before
    assert "previous model is kept" in finetune.status_label.text()


def test_the_verdict_says_when_the_check_lost_what_the_model_had_right():
    from types import SimpleNamespace

    from napari_lgms.widgets.finetune import verdict_text

    result = SimpleNamespace(saved=False, card_path=None, verdict="no evidence", evidence={
        "corrections": 10, "minimum": 5, "held_out": 10, "metric": "iou", "mean_difference": 0.15,
        "standard_error": 0.05, "gained": 8, "hurt_successes": True, "successes": 2, "successes_change": -0.32})
    assert verdict_text(result) == (
        "No evidence either way (+15.0 ± 5.0 IoU points over 10 corrections, 8 better): nothing saved; the "
        "checks were better overall but -32.0 IoU points on the 2 corrections the current model had right: "
        "too much if most of your images are like those. Save corrections of images it gets right too, then "
        "try again.")
    result.candidate = object()
    assert verdict_text(result).endswith("then try again. Review on open images can still show if the new "
                                         "one is better."), "a model the check refused can still be reviewed"
    result.candidate = None
    result.evidence.update(successes_change=0.01, failures=8, failures_change=-0.12)
    assert verdict_text(result).endswith(
        "the checks were better overall but -12.0 IoU points on the 8 corrections the current model had failed "
        "on, more than they gained where it was right. Save more corrections of images it fails on, then try "
        "again.")


@pytest.mark.gui
@needs_display
def test_fewer_than_five_corrections_run_when_open_images_can_review_the_new_model(
        make_napari_viewer, qtbot, saved_tiny, corrections_dir):
    viewer = make_napari_viewer()
    finetune = _dock(viewer, "Fine-tune")
    qtbot.waitUntil(lambda: finetune.models_ready, timeout=10000)
    _store_examples(finetune.store_root, count=3)
    finetune.set_store_root(str(finetune.store_root))
    finetune.model_combo.setCurrentText("tiny-2d (yours)")
    viewer.add_image(np.random.default_rng(0).random((32, 32)).astype(np.float32), name="another scan")
    finetune.budget_combo.setCurrentText("Steps")
    finetune.steps_spin.setValue(4)
    from napari.utils.notifications import notification_manager

    earlier = len(notification_manager.records)
    finetune.start()
    qtbot.waitUntil(lambda: finetune.task is not None and finetune.task.finished, timeout=60000)
    assert finetune.result is not None and finetune.result.candidate is not None, finetune.status_label.text()
    assert finetune.status_label.text() == (
        "No evidence either way: nothing saved; 3 corrections cannot show it (the check needs 5). Add "
        "corrections. Review on open images can still show if the new one is better.")
    shown = [notification.message for notification in notification_manager.records[earlier:]]
    assert f"Fine-tune: {finetune.status_label.text()}" in shown, "the whole verdict, whatever the dock height"
    assert finetune.review_button.isEnabled()


def _fake_review(tiny_model, monkeypatch, new_first):
    """A run with an unsaved candidate, and a review engine that offers one item per image layer
    (``new_first``: which side shows the new mask), without segmenting anything."""
    from napari_lgms.training.finetuning import FinetuneResult
    from napari_lgms.training.review import ReviewItem, ReviewProgress
    from napari_lgms.zoo import user_model_dir

    def review_items_steps(result, images, *, names, parent, **options):
        review_items_steps.parent = parent
        for index in range(len(images)):
            yield ReviewProgress(index + 1, len(images), "segmented")
        masks = [np.zeros((32, 32), np.uint8) for _ in range(2)]
        masks[1][8:20, 8:20] = 1
        return [ReviewItem(i, names[i], images[i], *masks, flag, 0.5) for i, flag in enumerate(new_first)]

    monkeypatch.setattr("napari_lgms.training.review.review_items_steps", review_items_steps)
    candidate = tiny_model(spatial_dims=2, name="tiny-2d-ft-20261207-120000", lineage={"parent": "tiny-2d"})
    return review_items_steps, FinetuneResult(
        None, "tiny-2d", {"iou": 0.5}, {"iou": 0.5}, 3, 0.1, "no evidence either way", user_model_dir(),
        verdict="no evidence", saved=False, evidence={"metric": "iou"}, candidate=candidate)


@pytest.mark.gui
@needs_display
def test_a_blind_review_on_the_open_images_can_save_the_new_model(make_napari_viewer, qtbot, saved_tiny,
                                                                   tiny_model, monkeypatch):
    from napari_lgms.widgets._review import LAYER_A, LAYER_B
    from napari_lgms.widgets._session_log import read_records

    viewer = make_napari_viewer()
    images = [viewer.add_image(np.random.default_rng(i).random((32, 32)).astype(np.float32), name=f"open {i}")
              for i in range(4)]
    labels = viewer.add_labels(np.zeros((32, 32), np.uint8), name="my labels")
    images[3].visible = False
    finetune = _dock(viewer, "Fine-tune")
    qtbot.waitUntil(lambda: finetune.models_ready, timeout=10000)
    finetune.model_combo.setCurrentText("tiny-2d (yours)")
    fake, result = _fake_review(tiny_model, monkeypatch, [True, False, True, False])
    finetune.session.result, finetune.session._base = result, finetune.base_choice()
    finetune.review_button.setEnabled(True)
    finetune.review_button.click()
    qtbot.waitUntil(lambda: finetune.a_button.isEnabled(), timeout=10000)
    assert fake.parent == finetune.base_choice().source, "compared with the model the run started from"
    assert not finetune.start_button.isEnabled()
    assert finetune.status_label.text().startswith("Image 1 of 4 (open 0)")
    assert [layer.visible for layer in images] == [True, False, False, False], "the image judged, alone"
    assert not labels.visible, "no other mask in view to tell which is which"
    assert viewer.layers[LAYER_A].visible and not viewer.layers[LAYER_B].visible
    assert viewer.layers[LAYER_A].contour > 0, "outlined: the image under the mask stays visible"
    finetune.flip_button.click()
    assert not viewer.layers[LAYER_A].visible and viewer.layers[LAYER_B].visible
    for button in (finetune.a_button, finetune.b_button, finetune.a_button):  # the new mask each time
        button.click()
    assert finetune.status_label.text().startswith("Image 4 of 4 (open 3)") and images[3].visible
    finetune.b_button.click()
    assert LAYER_A not in viewer.layers and LAYER_B not in viewer.layers
    assert [layer.visible for layer in images] == [True, True, True, False] and labels.visible, "as before"
    reviewed = finetune.result
    assert reviewed.saved and reviewed.card_path.is_file() and reviewed.verdict == "better"
    assert finetune.status_label.text().startswith(
        "Better by your review (the new model's mask was better on 4 of the 4 images you reviewed, the "
        "current one's on 0)")
    assert finetune.status_label.text().endswith(f"New model: {reviewed.name}.")
    assert finetune.use_button.isEnabled() and finetune.rollback_button.isEnabled()
    assert finetune.start_button.isEnabled() and not finetune.review_button.isEnabled()
    record = read_records(finetune.store_root)[-1]
    assert record["action"] == "review" and record["result"]["review"]["new_better"] == 4


@pytest.mark.gui
@needs_display
def test_a_stopped_review_changes_nothing(make_napari_viewer, qtbot, saved_tiny, tiny_model, monkeypatch):
    from napari_lgms.widgets._review import LAYER_A, LAYER_B

    viewer = make_napari_viewer()
    finetune = _dock(viewer, "Fine-tune")
    qtbot.waitUntil(lambda: finetune.models_ready, timeout=10000)
    finetune.model_combo.setCurrentText("tiny-2d (yours)")
    _, result = _fake_review(tiny_model, monkeypatch, [True, True])
    finetune.session.result, finetune.session._base = result, finetune.base_choice()
    finetune.review_button.setEnabled(True)
    finetune.review_button.click()
    assert "Open some other images of this kind" in finetune.status_label.text(), "no image open"
    for i in range(2):
        viewer.add_image(np.zeros((32, 32), np.float32), name=f"open {i}")
    finetune.review_button.click()
    qtbot.waitUntil(lambda: finetune.a_button.isEnabled(), timeout=10000)
    window = viewer.window._qt_window
    window.show()
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5000)
    qtbot.keyClick(window, "f")  # a button's key clicks it after a short animation

    def flipped():
        return viewer.layers[LAYER_B].visible and not viewer.layers[LAYER_A].visible

    qtbot.waitUntil(flipped, timeout=3000)
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, "a")  # also with the canvas in focus, as after a click on the image
    qtbot.waitUntil(lambda: finetune.status_label.text().startswith("Image 2 of 2"), timeout=3000)
    finetune.stop_review_button.click()
    assert LAYER_A not in viewer.layers and not finetune.review_panel.isVisible()
    assert finetune.result is result and not result.saved and finetune.start_button.isEnabled()
    assert finetune.review_button.isEnabled() and not finetune.use_button.isEnabled(), "as the run left them"
    assert finetune.status_label.text() == "Review stopped; nothing changed."
