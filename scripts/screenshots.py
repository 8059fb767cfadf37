"""Pictures of the widgets in use, for the README (run under Xvfb on a headless machine).

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshots.py [--out FOLDER]

Writes ``screenshot-segment.png`` (ultrasound sample, segmentation, a saved
correction), ``screenshot-volume.png`` (anisotropic volume, a box prompt on a
Shapes layer, one slice segmented), ``screenshot-endoscopy.png`` and
``screenshot-finetune.png`` (a short fine-tuning run on generated corrections:
live loss / Dice plot, the verdict) and ``screenshot-laptop.png`` (both widgets
stacked on a 1366x768 window, as on a laptop) in ``resources/``, and
``screenshot-clicks-positive.png`` / ``screenshot-clicks-negative.png`` (click mode on the
ultrasound sample: the first click, then the clicks a simulated user makes up to its first
negative one) in ``docs/``; the click pictures are skipped, with a message, while no click
model (``<model>-clicks``) is installed. Uses the model the Segment
widget suggests for each image (the volume shot: a 2D model slice by slice), or
untrained networks when none is shipped (the pictures then show random output
and say so). Model and corrections folders are temporary: nothing of the
user's is touched.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_FOLDERS = {"clicks": REPO / "docs"}  # the others: REPO / "resources"
WINDOW_SIZE = (1500, 950)
LAPTOP_SIZE = (1366, 768)
FINETUNE_STEPS = 40


def wait_until(predicate, timeout: float = 300.0) -> None:
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out waiting for the widget")
        QApplication.processEvents()
        time.sleep(0.02)


def settle(seconds: float = 0.6) -> None:
    """Let Qt and the canvas draw for a moment."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def choose_model(widget, image: str, dims: int | None = None) -> bool:
    """Choose ``image`` and the model the widget suggests for it (or a trained model of ``dims``,
    the generated samples' own first; else an untrained one); True if trained."""
    widget.image_combo.setCurrentText(image)
    choice = widget.current_choice()
    if dims is not None and (choice is None or choice.spatial_dims != dims):
        fitting = [c for c in widget._choices if c.trained and c.spatial_dims == dims]
        fitting.sort(key=lambda c: c.name != "lgmsnet-synthetic-us")  # the generated samples' own model
        choice = fitting[0] if fitting else None
        widget.select_model(choice.source if choice else ("lgmsnet" if dims == 2 else "lgmsnet3d"))
    return widget.current_choice() is not None and widget.current_choice().trained


def banner(viewer, trained: bool) -> None:
    if trained:
        return
    overlay = viewer.canvas.overlays["text"]
    overlay.text = "untrained network (no shipped model yet): random output"
    overlay.color = "yellow"
    overlay.position = "top_left"
    overlay.visible = True


def new_viewer(title: str):
    import napari

    viewer = napari.Viewer(title=title)
    viewer.window.resize(*WINDOW_SIZE)
    return viewer


def add_widget(viewer, name: str):
    """Dock a widget and wait until it has listed the models (it does so in a worker)."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-lgms", name)
    wait_until(lambda: widget.models_ready, timeout=120)
    return widget


def run_segment(widget) -> None:
    widget.run()
    if widget.task is None:
        raise RuntimeError(widget.status_label.text())
    wait_until(lambda: widget.task.finished)
    if widget.last_output is None:
        raise RuntimeError(widget.status_label.text())


def shot_segment(out: Path) -> None:
    import numpy as np

    viewer = new_viewer("napari-lgms: Segment")
    viewer.open_sample("napari-lgms", "ultrasound")
    widget = add_widget(viewer, "Segment")
    trained = choose_model(widget, "ultrasound")
    run_segment(widget)
    labels = widget.last_output
    corrected = np.array(labels.data)
    corrected[:40] = 0  # a correction: nothing in the near field
    labels.data = corrected
    viewer.layers.selection.active = labels
    widget.corrections.save_current()
    banner(viewer, trained)
    settle()
    viewer.screenshot(str(out / "screenshot-segment.png"), canvas_only=False)
    viewer.close()


def shot_volume(out: Path) -> None:
    import numpy as np

    from napari_lgms.widgets.segment import MODE_BOX

    viewer = new_viewer("napari-lgms: box prompt on a volume")
    viewer.open_sample("napari-lgms", "volume")
    image = viewer.layers["volume"]
    z = image.data.shape[0] // 2
    viewer.dims.set_point(0, z * image.scale[0])
    widget = add_widget(viewer, "Segment")
    trained = choose_model(widget, "volume", dims=2)
    box = np.array([[z, 14, 10], [z, 14, 60], [z, 58, 60], [z, 58, 10]], dtype=float)  # data coordinates
    viewer.add_shapes([box], shape_type="rectangle", name="box prompt", edge_color="yellow",
                      face_color="transparent", edge_width=1.5, scale=image.scale, units=image.units)
    widget.mode_combo.setCurrentText(MODE_BOX)
    widget.shapes_combo.setCurrentText("box prompt")
    run_segment(widget)
    banner(viewer, trained)
    settle()
    viewer.screenshot(str(out / "screenshot-volume.png"), canvas_only=False)
    viewer.close()


def shot_endoscopy(out: Path) -> None:
    viewer = new_viewer("napari-lgms: endoscopy")
    viewer.open_sample("napari-lgms", "endoscopy")
    widget = add_widget(viewer, "Segment")
    trained = choose_model(widget, "endoscopy")
    run_segment(widget)
    viewer.layers["endoscopy segmentation"].contour = 2
    banner(viewer, trained)
    settle()
    viewer.screenshot(str(out / "screenshot-endoscopy.png"), canvas_only=False)
    viewer.close()


def shot_finetune(out: Path) -> None:
    import numpy as np

    from napari_lgms.corrections import CorrectionsStore
    from napari_lgms.samples import make_ultrasound

    viewer = new_viewer("napari-lgms: Fine-tune")
    viewer.open_sample("napari-lgms", "ultrasound")
    segment = add_widget(viewer, "Segment")
    widget = add_widget(viewer, "Fine-tune")
    docks = [w.parentWidget() for w in (segment, widget)]
    while not all(hasattr(d, "setFloating") for d in docks):  # up to the QDockWidgets
        docks = [d if hasattr(d, "setFloating") else d.parentWidget() for d in docks]
    store = CorrectionsStore(segment.corrections.store.root)
    for seed in range(1, 7):
        image, mask = make_ultrasound(seed=seed)
        store.save(f"generated {seed}", image, mask, np.zeros_like(mask), model="demo")
    segment.corrections.refresh()
    widget.set_store_root(str(store.root))
    trained = any(c.trained and c.spatial_dims == 2 for c in widget._choices)
    trained_2d = [c.label for c in widget._choices if c.trained and c.spatial_dims == 2]
    label = trained_2d[0] if trained_2d else "lgmsnet (untrained)"
    widget.model_combo.setCurrentText(label)
    widget.fast_check.setChecked(True)
    widget.budget_combo.setCurrentText("Steps")
    widget.steps_spin.setValue(FINETUNE_STEPS)
    widget.start()
    wait_until(lambda: widget.task is not None and widget.task.finished, timeout=900)
    from qtpy.QtCore import Qt

    viewer.window._qt_window.resizeDocks(docks, [200, 700], Qt.Vertical)  # room for the plot
    settle()
    widget.scroll.ensureWidgetVisible(widget.plot)
    banner(viewer, trained)
    settle()
    viewer.screenshot(str(out / "screenshot-finetune.png"), canvas_only=False)
    viewer.close()


def shot_laptop(out: Path) -> None:
    viewer = new_viewer("napari-lgms on a laptop screen")
    viewer.window.resize(*LAPTOP_SIZE)
    viewer.open_sample("napari-lgms", "ultrasound")
    widget = add_widget(viewer, "Segment")
    add_widget(viewer, "Fine-tune")
    trained = choose_model(widget, "ultrasound")
    run_segment(widget)
    banner(viewer, trained)
    settle()
    viewer.screenshot(str(out / "screenshot-laptop.png"), canvas_only=False)
    viewer.close()


def choose_click_model(widget, image: str) -> bool:
    """Choose ``image`` and, for it, the suggested model if a click model serves it, else the first
    trained 2D model one serves; False when none does."""
    choose_model(widget, image)
    if widget.click_controls.mode_button.isEnabled():
        return True
    for choice in widget.choices:
        if choice.trained and choice.spatial_dims == 2:
            widget.select_model(choice.source)
            if widget.click_controls.mode_button.isEnabled():
                return True
    return False


def click_like_a_user(viewer, widget, truth, until_negative: bool) -> None:
    """Click where :func:`napari_lgms.clicks.simulate.next_click` would: the first click, or every
    click up to and including the first negative one (at most 6)."""
    import numpy as np

    from napari_lgms.clicks.simulate import next_click

    mode, image = widget.click_mode, viewer.layers["ultrasound"]
    for _ in range(6):
        shown = np.asarray(mode.target.labels.data) > 0
        click = next_click(truth, shown if shown.any() else None)
        if click is None:
            return
        mode.click(image.data_to_world(click.position), positive=click.positive)
        wait_until(lambda: not mode.busy)
        if not until_negative or not click.positive:
            return


def shot_clicks(out: Path) -> None:
    import numpy as np

    viewer = new_viewer("napari-lgms: click mode")
    viewer.open_sample("napari-lgms", "ultrasound")
    widget = add_widget(viewer, "Segment")
    if not choose_click_model(widget, "ultrasound"):
        print("clicks: skipped, no click model is installed (train one: scripts/train_click_model.py)")
        viewer.close()
        return
    truth = np.asarray(viewer.layers["ultrasound ground truth"].data) > 0
    widget.click_controls.mode_button.click()
    wait_until(lambda: widget.click_mode.active)
    for name, until_negative in (("positive", False), ("negative", True)):
        click_like_a_user(viewer, widget, truth, until_negative)
        settle()
        viewer.screenshot(str(out / f"screenshot-clicks-{name}.png"), canvas_only=False)
    viewer.close()


SHOTS = {"segment": shot_segment, "volume": shot_volume, "endoscopy": shot_endoscopy,
         "finetune": shot_finetune, "laptop": shot_laptop, "clicks": shot_clicks}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for the PNG files (default: resources/, docs/ for the clicks)")
    parser.add_argument("--only", nargs="*", choices=sorted(SHOTS), help="take only these pictures")
    args = parser.parse_args(argv)
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        print("no display: run under xvfb-run -a -s '-screen 0 1600x1000x24'", file=sys.stderr)
        return 1
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="lgms-screens-") as scratch:
        os.environ["NAPARI_LGMS_MODEL_DIR"] = str(Path(scratch) / "models")
        os.environ["NAPARI_LGMS_CORRECTIONS_DIR"] = str(Path(scratch) / "corrections")
        for name in args.only or SHOTS:
            out = Path(args.out) if args.out else DEFAULT_FOLDERS.get(name, REPO / "resources")
            out.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            SHOTS[name](out)
            seconds = time.monotonic() - started
            print(f"{name}: {out / f'screenshot-{name}*.png'} ({seconds:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
