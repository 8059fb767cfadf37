"""How long the Segment widget holds napari's GUI thread around a result (issue 21, item 7).

Measures and records the gaps (never judges them: no wall-clock assertions); asserts where the
first-run setup runs and what lands in the viewer. Run alone, the first segmentation is the
session's first (napari's first Labels layer). Needs a display: run under ``xvfb-run -a``.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager

import numpy as np
import pytest

needs_display = pytest.mark.skipif(not os.environ.get("DISPLAY"),
                                   reason="needs a display; run under xvfb-run -a")


@pytest.mark.gui
@needs_display
def test_results_reach_the_viewer_with_the_setup_in_the_worker_and_the_gaps_recorded(
        make_napari_viewer, qtbot, saved_tiny, corrections_dir, monkeypatch, record_property):
    import napari_lgms.widgets.segment as segment
    from napari_lgms.widgets._event_loop import EventLoopGapMeter

    set_up_on = []
    setup = segment.first_run_setup

    @contextmanager
    def recorded_setup():
        set_up_on.append("main" if threading.current_thread() is threading.main_thread() else "worker")
        with setup():
            yield

    monkeypatch.setattr(segment, "first_run_setup", recorded_setup)
    viewer = make_napari_viewer(show=True)
    image = (np.random.default_rng(0).random((600, 720)) * 255).astype(np.uint8)
    viewer.add_image(image, name="scan")
    _, widget = viewer.window.add_plugin_dock_widget("napari-lgms", "Segment")
    qtbot.waitUntil(lambda: widget.models_ready, timeout=30000)
    widget.select_model(saved_tiny[2])
    widget.image_combo.setCurrentText("scan")
    meter = None
    viewer.layers.events.inserted.connect(lambda event: meter.note("result layer added"))

    def segment_and_measure():
        nonlocal meter
        meter = EventLoopGapMeter().start()
        widget.run()
        assert widget.task is not None, widget.status_label.text()
        qtbot.waitUntil(lambda: widget.task.finished, timeout=30000)
        qtbot.wait(200)
        meter.stop()
        return meter

    first = segment_and_measure()
    labels = widget.last_output
    assert labels is not None and labels.name == "scan segmentation", widget.status_label.text()
    assert set_up_on == ["worker"], "the model loading and napari's first-Labels-layer work run in the worker"
    prediction = labels.metadata["napari_lgms"]["prediction"]
    np.testing.assert_array_equal(prediction, labels.data)
    assert not np.shares_memory(prediction, labels.data), "painting never changes the stored prediction"

    count = len(viewer.layers)
    again = segment_and_measure()  # another new layer: napari's per-layer work only
    assert len(viewer.layers) == count + 1 and widget.last_output.name == "scan segmentation [1]"

    painted = np.array(labels.data)
    painted[:5, :5] = 3
    labels.data = painted
    widget.output_combo.setCurrentText(labels.name)
    labels.events.data.connect(lambda event: meter.note("result layer data replaced"))
    into_existing = segment_and_measure()  # the chosen layer's data replaced: no new layer
    assert len(viewer.layers) == count + 1 and widget.last_output.name == labels.name
    np.testing.assert_array_equal(labels.data, widget.last_outcome.combined)
    np.testing.assert_array_equal(labels.metadata["napari_lgms"]["prediction"], labels.data)
    assert set_up_on == ["worker"] * 3

    runs = (("first segmentation", first, "result layer added"),
            ("second, a new layer", again, "result layer added"),
            ("third, into the existing layer", into_existing, "result layer data replaced"))
    for name, measured, note in runs:
        print(f"\n{name}: {measured.report()}")
        record_property(f"longest gap ms, {name}", round(measured.longest * 1000))
        record_property(f"gap around the result ms, {name}", round(measured.gap_around(note) * 1000))
