"""The workflow a clinician meets (issue 21): right image, right model, one verdict, a laptop screen.

GUI tests drive a real napari viewer (run under ``xvfb-run -a``); images are generated here.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

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
