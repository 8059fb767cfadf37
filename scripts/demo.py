"""Demo: napari with the Segment widget, the generated ultrasound sample, and a segmentation.

    python scripts/demo.py                      # interactive: the window stays open
    python scripts/demo.py --screenshot out/    # save a screenshot and the mask, then exit 0

It uses the model the Segment widget suggests for the sample (the sample names
``lgmsnet-synthetic-us``, the shipped model trained on such generated images),
and says on the canvas which one, with a warning if it is untrained. Without a display (Linux,
no $DISPLAY) it re-runs itself under ``xvfb-run`` when that is installed, and
then saves and exits, as with ``NAPARI_LGMS_DEMO_EXIT=1``. Exit status: 0 when
the segmentation was shown (and saved), 1 otherwise.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_OUTPUT = "demo-output"
TIMEOUT_MS = 180_000


def _has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screenshot", metavar="DIR",
                        help="save a screenshot and the mask into DIR, then exit")
    args = parser.parse_args(argv)

    exit_after = bool(args.screenshot) or os.environ.get("NAPARI_LGMS_DEMO_EXIT") == "1"
    if not _has_display():
        if shutil.which("xvfb-run") and not os.environ.get("NAPARI_LGMS_DEMO_REEXEC"):
            env = {**os.environ, "NAPARI_LGMS_DEMO_REEXEC": "1", "NAPARI_LGMS_DEMO_EXIT": "1"}
            command = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", sys.executable, __file__]
            command += ["--screenshot", args.screenshot or DEFAULT_OUTPUT]
            return subprocess.call(command, env=env)
        print("no display: set $DISPLAY, or install xvfb (xvfb-run) for a headless run", file=sys.stderr)
        return 1
    output = Path(args.screenshot or DEFAULT_OUTPUT)

    import napari
    from qtpy.QtCore import QTimer

    viewer = napari.Viewer(title="napari-lgms demo")
    viewer.window.resize(1500, 900)
    viewer.open_sample("napari-lgms", "ultrasound")
    _, widget = viewer.window.add_plugin_dock_widget("napari-lgms", "Segment")
    outcome = {"code": 1}

    def save_and_quit():
        layer = widget.last_output
        if layer is not None:
            output.mkdir(parents=True, exist_ok=True)
            viewer.screenshot(str(output / "demo-screenshot.png"), canvas_only=False)
            _write_mask(layer.data, output / "demo-segmentation.png")
            print(f"demo: saved {output / 'demo-screenshot.png'} and {output / 'demo-segmentation.png'}")
            outcome["code"] = 0
        viewer.close()

    def finished(*_):
        print(f"demo: {widget.status_label.text()}", flush=True)
        if widget.last_output is not None:
            outcome["code"] = 0
        if exit_after:
            QTimer.singleShot(500, save_and_quit)  # let the canvas draw the labels first

    def give_up():
        print("demo: timed out waiting for the segmentation", file=sys.stderr)
        viewer.close()

    def start_when_listed():
        if not widget.models_ready:  # the widget lists the models in a worker (no freeze)
            QTimer.singleShot(50, start_when_listed)
            return
        widget.image_combo.setCurrentText("ultrasound")
        choice = widget.current_choice()
        trained = choice is not None and choice.trained
        description = f"model {choice.label}" if choice is not None else "no model"
        banner = description if trained else f"UNTRAINED {description}, random output"
        _show_banner(viewer, f"napari-lgms demo: {banner}", warning=not trained)
        print(f"demo: segmenting the generated ultrasound sample with {description}", flush=True)
        widget.run()
        if widget.task is None:
            print(f"demo: could not start: {widget.status_label.text()}", file=sys.stderr)
            viewer.close()
            return
        widget.task.worker.finished.connect(finished)

    QTimer.singleShot(0, start_when_listed)
    if exit_after:
        QTimer.singleShot(TIMEOUT_MS, give_up)
    napari.run()
    return outcome["code"]


def _show_banner(viewer, text: str, warning: bool) -> None:
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    overlay = overlays["text"] if overlays is not None and "text" in overlays else viewer.text_overlay
    overlay.text = text
    overlay.color = "yellow" if warning else "white"
    overlay.position = "top_left"
    overlay.font_size = 12
    overlay.visible = True


def _write_mask(labels, path: Path) -> None:
    """PNG through napari_lgms.io when available, else tifffile beside it."""
    import numpy as np

    try:
        from napari_lgms.io import write_mask

        write_mask(np.asarray(labels), path)
    except ImportError:
        import tifffile

        tifffile.imwrite(path.with_suffix(".tif"), np.asarray(labels))


if __name__ == "__main__":
    sys.exit(main())
