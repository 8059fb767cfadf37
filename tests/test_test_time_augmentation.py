"""Test-time augmentation (flip averaging) in the engine, the CLI and from the model card."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_lgms.cli import main
from napari_lgms.errors import InputError
from napari_lgms.inference import augment, fast, segment
from napari_lgms.zoo import save_model

torch.set_num_threads(1)
RNG = np.random.default_rng(5)


def probabilities(model, image, choice):
    return segment(image, model, probabilities=True, test_time_augmentation=choice).probabilities


def test_flip_sets_cover_every_combination_of_spatial_axes():
    assert augment.flip_sets("none", 2) == [()]
    assert augment.flip_sets("flips", 2) == [(), (-2,), (-1,), (-2, -1)]
    three_d = augment.flip_sets("flips", 3)
    assert len(three_d) == len(set(three_d)) == 8 and (-3, -2, -1) in three_d


def test_resolve_uses_the_card_default_unless_told(tiny_model):
    plain = tiny_model()
    flipping = tiny_model(output={"activation": "sigmoid", "threshold": 0.5, "test_time_augmentation": "flips"})
    assert augment.resolve(None, plain.card) == "none"
    assert augment.resolve("auto", flipping.card) == "flips"
    assert augment.resolve("none", flipping.card) == "none"
    with pytest.raises(InputError, match=r"test_time_augmentation is 'rotate'; accepted: none, flips"):
        augment.resolve("rotate", plain.card)
    broken = tiny_model(output={"activation": "sigmoid", "threshold": 0.5, "test_time_augmentation": 4})
    with pytest.raises(InputError, match="model card tiny-test output.test_time_augmentation is 4"):
        augment.resolve(None, broken.card)


@pytest.mark.parametrize("spatial_dims, shape, mode", [
    (2, (16, 16), "resize"), (2, (40, 28), "tile"), (3, (16, 16, 16), "sliding_window"), (3, (21, 18, 25), "sliding_window"),
])
def test_flip_averaged_prediction_commutes_with_flipping_the_image(tiny_model, spatial_dims, shape, mode):
    """Averaging over all flips makes the prediction flip-equivariant, which one pass is not.

    (Sizes whose window layout is itself symmetric: window starts are rounded.)
    """
    card_input = {"patch_size": [16] * spatial_dims,
                  "size_divisor": 4, "mode": mode, "spacing": None}
    model = tiny_model(spatial_dims=spatial_dims, num_classes=1, seed=2, input=card_input)
    image = RNG.normal(size=shape).astype(np.float32)
    for axis in range(spatial_dims):
        flipped = np.flip(image, axis).copy()
        averaged = probabilities(model, image, "flips")
        np.testing.assert_allclose(probabilities(model, flipped, "flips"), np.flip(averaged, axis), atol=1e-5)
        single = probabilities(model, image, "none")
        assert np.abs(probabilities(model, flipped, "none") - np.flip(single, axis)).max() > 1e-3


def test_flips_average_the_logits_of_the_flipped_passes(tiny_model):
    model = tiny_model(seed=4)  # "resize" mode with a 16x16 patch: a 16x16 image is one plain pass
    image = RNG.normal(size=(16, 16)).astype(np.float32)
    logits = []
    for axes in augment.flip_sets("flips", 2):
        flipped = np.flip(image, [a + 2 for a in axes]).copy() if axes else image
        single = probabilities(model, flipped, "none")
        logit = np.log(single) - np.log1p(-single)
        logits.append(np.flip(logit, [a + 2 for a in axes]) if axes else logit)
    expected = 1 / (1 + np.exp(-np.mean(logits, axis=0)))
    np.testing.assert_allclose(probabilities(model, image, "flips"), expected, atol=1e-4)


def test_each_batch_runs_once_per_flip(tiny_model):
    model = tiny_model(spatial_dims=3, num_classes=2)
    calls = []
    inner = model.network.forward
    model.network.forward = lambda x: calls.append(tuple(x.shape)) or inner(x)
    with fast.disabled():
        segment(np.zeros((16, 16, 16), np.float32), model, test_time_augmentation="none")
        assert len(calls) == 1
        segment(np.zeros((16, 16, 16), np.float32), model, test_time_augmentation="flips")
    assert len(calls) == 1 + 8


def test_the_card_default_is_what_segment_does(tiny_model):
    model = tiny_model(seed=1, output={"activation": "sigmoid", "threshold": 0.5,
                                       "test_time_augmentation": "flips"})
    image = RNG.normal(size=(24, 20)).astype(np.float32)
    default = probabilities(model, image, None)
    np.testing.assert_array_equal(default, probabilities(model, image, "flips"))
    assert segment(image, model).test_time_augmentation == "flips", "the result says what was used"
    assert segment(image, model, test_time_augmentation="none").test_time_augmentation == "none"
    assert not np.array_equal(default, probabilities(model, image, "none"))


def test_cli_segment_and_evaluate_take_tta(tiny_model, tmp_path, capsys):
    import tifffile

    card = save_model(tiny_model(seed=3).network, tiny_model(seed=3).card, tmp_path / "model")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image = RNG.integers(0, 255, (40, 36)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "images" / "case.tif", image)
    tifffile.imwrite(tmp_path / "masks" / "case.tif", (image > 128).astype(np.uint8))

    assert main(["segment", str(tmp_path / "images" / "case.tif"), "--model", str(card),
                 "--output", str(tmp_path / "out"), "--tta", "flips"]) == 0
    written = tifffile.imread(tmp_path / "out" / "case.tif")
    from napari_lgms.zoo import load_model

    expected = segment(image, load_model(str(card)), test_time_augmentation="flips").labels
    np.testing.assert_array_equal(written, expected)

    capsys.readouterr()
    assert main(["evaluate", "--model", str(card), "--images", str(tmp_path / "images"),
                 "--masks", str(tmp_path / "masks"), "--tta", "flips"]) == 0
    assert "test-time augmentation: flips" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", str(tmp_path / "images" / "case.tif"), "--model", str(card),
              "--output", str(tmp_path / "out"), "--tta", "rotate"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'rotate'" in capsys.readouterr().err
