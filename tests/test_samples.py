"""Generated sample data: deterministic, plausible, with ground truth, usable by napari."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_lgms import samples

SAMPLE_FUNCTIONS = [samples.ultrasound_sample, samples.endoscopy_sample, samples.volume_sample]


@pytest.mark.parametrize("make", [samples.make_ultrasound, samples.make_endoscopy])
def test_generators_are_deterministic_and_seeded(make):
    first, second = make(), make()
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    other = make(seed=1)
    assert not np.array_equal(first[0], other[0])


def test_ultrasound_lesion_is_dark_with_a_shadow_below():
    image, mask = samples.make_ultrasound()
    assert image.shape == mask.shape == (256, 256) and image.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    lesion = mask.astype(bool)
    assert 0.02 < lesion.mean() < 0.2
    from scipy import ndimage

    ring = ndimage.binary_dilation(lesion, iterations=12) & ~ndimage.binary_dilation(lesion, iterations=4)
    assert image[lesion].mean() < 0.5 * image[ring].mean(), "a hypoechoic (dark) lesion"
    rows, columns = np.nonzero(lesion)
    below = image[rows.max() + 10: rows.max() + 40, columns.min(): columns.max()]
    beside = image[rows.max() + 10: rows.max() + 40, : max(columns.min() - 20, 1)]
    assert below.mean() < beside[beside > 0].mean(), "posterior acoustic shadowing"


def test_endoscopy_is_rgb_with_a_redder_polyp_and_highlights():
    image, mask = samples.make_endoscopy()
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    polyp = mask.astype(bool)
    assert 0.02 < polyp.mean() < 0.25
    red_ratio = image[..., 0].astype(float) / (image[..., 1].astype(float) + 1)
    assert red_ratio[polyp].mean() > red_ratio[~polyp & (image.sum(-1) > 100)].mean()
    assert (image[polyp].min(axis=-1) > 230).any(), "specular highlights on the polyp"


def test_volume_is_anisotropic_with_bright_blobs():
    volume, mask, spacing = samples.make_volume()
    assert volume.shape == mask.shape and volume.ndim == 3 and volume.dtype == np.float32
    assert spacing == (3.0, 1.0, 1.0)
    from scipy import ndimage

    _, count = ndimage.label(mask)
    assert count == 2
    assert volume[mask > 0].mean() > volume[mask == 0].mean() + 0.2


@pytest.mark.parametrize("sample", SAMPLE_FUNCTIONS)
def test_samples_load_into_a_viewer_with_truth_on_the_same_grid(sample):
    from napari.components import ViewerModel

    viewer = ViewerModel()
    layer_data = sample()
    assert [kind for _, _, kind in layer_data] == ["image", "labels"]
    for data, kwargs, kind in layer_data:
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    image, truth = viewer.layers
    np.testing.assert_allclose(image.scale, truth.scale)
    assert truth.data.shape == (image.data.shape[:-1] if image.rgb else image.data.shape)
    assert truth.data.any()


def test_volume_sample_carries_spacing_and_units():
    data, kwargs, _ = samples.volume_sample()[0]
    assert tuple(kwargs["scale"]) == (3.0, 1.0, 1.0)
    assert kwargs["units"] == ("mm", "mm", "mm")


def test_manifest_points_at_these_functions():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(Path(samples.__file__).parent / "napari.yaml")
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    keys = {s.key: commands[s.command] for s in manifest.contributions.sample_data}
    assert keys == {
        "ultrasound": "napari_lgms.samples:ultrasound_sample",
        "endoscopy": "napari_lgms.samples:endoscopy_sample",
        "volume": "napari_lgms.samples:volume_sample",
    }
    widgets = {w.display_name: commands[w.command] for w in manifest.contributions.widgets}
    assert widgets == {"Segment": "napari_lgms.widgets:SegmentWidget",
                       "Fine-tune": "napari_lgms.widgets:FinetuneWidget"}


def test_manifest_targets_import_without_torch():
    code = ("import sys, napari_lgms.samples, napari_lgms.widgets\n"
            "napari_lgms.samples.ultrasound_sample()\n"
            "assert 'torch' not in sys.modules, 'torch imported at module import time'\n")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               cwd=Path(samples.__file__).parents[1])
    assert completed.returncode == 0, completed.stderr[-2000:]
