"""The inference engine: modes, geometry, channels, ROI, cancellation, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from napari_lgms.errors import InputError
from napari_lgms.inference import Progress, SegmentationResult, segment, segment_steps
from napari_lgms.inference import engine, geometry, windows
from napari_lgms.inference.normalize import normalize
from napari_lgms.zoo import LoadedModel, ModelCard, default_class_names

torch.set_num_threads(1)
RNG = np.random.default_rng(7)


def random_image(*shape, dtype=np.uint8):
    if np.dtype(dtype).kind == "f":
        return RNG.normal(size=shape).astype(dtype)
    return RNG.integers(0, 200, size=shape).astype(dtype)


class PointwiseNet(nn.Module):
    """A 1x1 convolution: translation-equivariant, so tiling must not change its output."""

    size_divisor = 1

    def __init__(self, in_channels=1, num_classes=1, spatial_dims=2):
        super().__init__()
        torch.manual_seed(3)
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.conv = conv(in_channels, num_classes, 1)

    def forward(self, x):
        return self.conv(x)


def pointwise_model(spatial_dims=2, num_classes=1, mode="tile", patch=16):
    network = PointwiseNet(1, num_classes, spatial_dims).eval()
    card = ModelCard(
        name="pointwise", architecture="pointwise",
        arguments={"in_channels": 1, "num_classes": num_classes, "spatial_dims": spatial_dims},
        input={"patch_size": [patch] * spatial_dims,
               "size_divisor": 1, "mode": mode, "spacing": None},
        normalization={"kind": "zscore"},
        class_names=default_class_names(num_classes),
        output={"activation": "sigmoid" if num_classes == 1 else "softmax", "threshold": 0.5},
    )
    return LoadedModel(network, card, None, "untrained")


def direct_logits(model, image_cf: np.ndarray) -> torch.Tensor:
    """The network on the whole normalised (C, *S) image, padded to its divisor: (K, *S)."""
    from napari_lgms.models.padding import padded_forward

    normalised = torch.from_numpy(normalize(image_cf, model.card.normalization))[None]
    with torch.inference_mode():
        return padded_forward(model.network, normalised)[0]


class CountingNet(nn.Module):
    """Wraps a network and counts forward calls."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.size_divisor = inner.size_divisor
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


# ----------------------------------------------------------------------------- windows


def test_axis_starts_cover_and_overlap():
    for size, window, overlap in [(100, 16, 0.25), (16, 16, 0.5), (17, 16, 0.25), (1000, 256, 0.5)]:
        starts = windows.axis_starts(size, window, overlap)
        assert starts[0] == 0 and starts[-1] + window == size
        covered = np.zeros(size, bool)
        for start in starts:
            covered[start:start + window] = True
        assert covered.all()
        gaps = np.diff(starts)
        assert (gaps <= window * (1 - overlap) + 1).all()
    assert windows.axis_starts(10, 16, 0.25) == [0]


def test_gaussian_weights_peak_in_centre_and_positive():
    weights = windows.gaussian_weights((16, 9))
    assert weights.shape == (16, 9) and weights.dtype == np.float32
    assert weights.min() > 0 and weights.max() == pytest.approx(1.0, abs=1e-3)
    assert weights[8, 4] > weights[0, 0]
    np.testing.assert_allclose(weights, weights[::-1, ::-1], rtol=1e-6)


# ----------------------------------------------------------------------------- modes


def test_single_window_equals_whole_image_3d(tiny_model):
    model = tiny_model(spatial_dims=3, num_classes=2)
    volume = random_image(16, 16, 16, dtype=np.float32)
    result = segment(volume, model, probabilities=True)
    expected = torch.softmax(direct_logits(model, volume[None]), 0).numpy()
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)
    np.testing.assert_array_equal(result.labels, expected.argmax(0))


def test_sliding_window_of_equivariant_net_equals_whole_image_3d():
    model = pointwise_model(spatial_dims=3, mode="sliding_window", patch=8)
    volume = random_image(13, 20, 17, dtype=np.float32)
    result = segment(volume, model, probabilities=True, overlap=0.5)
    expected = torch.sigmoid(direct_logits(model, volume[None])[0]).numpy()
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)


def test_tiling_large_image_keeps_original_resolution():
    model = pointwise_model(mode="tile", patch=16)
    image = random_image(70, 53)
    result = segment(image, model, probabilities=True)
    assert result.labels.shape == (70, 53) and result.probabilities.shape == (70, 53)
    expected = torch.sigmoid(direct_logits(model, image[None].astype(np.float32))[0]).numpy()
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)


def test_resize_mode_resizes_to_patch_and_back(tiny_model):
    model = tiny_model()  # mode "resize", patch 16
    network = CountingNet(model.network)
    seen = []
    network.register_forward_pre_hook(lambda module, inputs: seen.append(tuple(inputs[0].shape)))
    model = LoadedModel(network, model.card, None, "untrained")
    image = random_image(24, 30)
    result = segment(image, model, probabilities=True)
    assert seen == [(1, 1, 16, 16)]
    assert result.labels.shape == (24, 30) and result.probabilities.shape == (24, 30)
    assert result.labels.dtype == np.uint8
    assert set(np.unique(result.labels)) <= {0, 1}
    np.testing.assert_array_equal(result.labels, (result.probabilities > 0.5).astype(np.uint8))


def test_resize_mode_tiles_an_image_much_larger_than_the_patch(tiny_model):
    model = tiny_model()
    network = CountingNet(model.network)
    seen = []
    network.register_forward_pre_hook(lambda module, inputs: seen.append(tuple(inputs[0].shape)))
    model = LoadedModel(network, model.card, None, "untrained")
    result = segment(random_image(80, 40), model)  # 80 > 2 x 16: not squashed
    assert result.labels.shape == (80, 40)
    assert all(shape[2:] == (16, 16) for shape in seen)
    assert sum(shape[0] for shape in seen) > 1


def test_a_card_trained_on_large_images_resizes_them_whole(tiny_model):
    model = tiny_model()
    model.card.input.max_resize_factor = 6.0  # trained on images up to 4 patches wide
    network = CountingNet(model.network)
    seen = []
    network.register_forward_pre_hook(lambda module, inputs: seen.append(tuple(inputs[0].shape)))
    model = LoadedModel(network, model.card, None, "untrained")
    result = segment(random_image(80, 40), model)  # 5 x 16: within the card's limit, squashed as in training
    assert result.labels.shape == (80, 40)
    assert seen == [(1, 1, 16, 16)]
    seen.clear()
    segment(random_image(112, 40), model)  # 7 x 16: beyond anything it was trained on, tiled
    assert sum(shape[0] for shape in seen) > 1


def test_two_d_model_on_volume_equals_per_slice_calls(tiny_model):
    model = tiny_model(num_classes=3)
    volume = random_image(4, 20, 24, dtype=np.int16)
    for axis in (0, 2):
        result = segment(volume, model, slice_axis=axis, probabilities=True)
        assert result.labels.shape == volume.shape
        assert result.probabilities.shape == (3,) + volume.shape
        for index in range(volume.shape[axis]):
            single = segment(np.take(volume, index, axis=axis), model, probabilities=True)
            np.testing.assert_array_equal(np.take(result.labels, index, axis=axis), single.labels)
            np.testing.assert_allclose(np.take(result.probabilities, index, axis=axis + 1),
                                       single.probabilities, atol=1e-5)


def test_slice_index_returns_that_slice_only(tiny_model):
    model = tiny_model()
    volume = random_image(5, 16, 20)
    full = segment(volume, model)
    one = segment(volume, model, slice_index=3)
    assert one.labels.shape == (16, 20)
    np.testing.assert_array_equal(one.labels, full.labels[3])
    along_x = segment(volume, model, slice_axis=2, slice_index=-1)
    np.testing.assert_array_equal(along_x.labels, segment(volume[:, :, -1], model).labels)


def test_batching_does_not_change_the_result(tiny_model):
    model = tiny_model(spatial_dims=3)
    volume = random_image(24, 28, 20, dtype=np.float32)
    one = segment(volume, model, batch_size=1, probabilities=True)
    many = segment(volume, model, batch_size=7, probabilities=True)
    np.testing.assert_allclose(one.probabilities, many.probabilities, atol=1e-6)


def test_deterministic(tiny_model):
    model = tiny_model(spatial_dims=3, num_classes=2)
    volume = random_image(20, 20, 20, dtype=np.uint16)
    first = segment(volume, model, probabilities=True)
    second = segment(volume, model, probabilities=True)
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.probabilities, second.probabilities)


def test_spacing_resamples_to_model_grid_and_back(tiny_model):
    model = tiny_model(spatial_dims=3)
    model.card.input.spacing = [2.0, 1.0, 1.0]
    network = CountingNet(model.network)
    seen = []
    network.register_forward_pre_hook(lambda module, inputs: seen.append(tuple(inputs[0].shape)))
    model = LoadedModel(network, model.card, None, "untrained")
    volume = random_image(12, 16, 16, dtype=np.float32)
    result = segment(volume, model, spacing=(1.0, 1.0, 1.0), probabilities=True)
    assert seen == [(1, 1, 8, 16, 16)]  # 12 slices at 1 mm -> 6 at 2 mm, padded to 8
    assert result.labels.shape == (12, 16, 16) and result.probabilities.shape == (12, 16, 16)
    np.testing.assert_array_equal(result.labels, (result.probabilities > 0.5).astype(np.uint8))
    seen.clear()
    segment(volume, model)  # no caller spacing: no resampling
    assert seen == [(1, 1, 12, 16, 16)]


class ColumnLogits(nn.Module):
    """Logits that depend only on the column, whatever the image: the columns of ``table`` (K, W)
    repeat along x."""

    size_divisor = 1

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", torch.tensor(table))

    def forward(self, x):
        columns = self.table[:, torch.arange(x.shape[-1], device=x.device) % self.table.shape[1]]
        return columns[None, :, None, :].expand(x.shape[0], -1, x.shape[-2], -1)


def test_multilabel_sigmoid_labels():
    outputs = [[-5.0, 3.0, 2.0], [-5.0, 4.0, -1.0]]  # per column: neither, both, only the first above 0.5
    card = ModelCard(name="m", architecture="x", arguments={"in_channels": 1, "num_classes": 2},
                     input={"patch_size": [16, 16], "mode": "tile"},
                     normalization={"kind": "zscore"}, class_names=["background", "a", "b"],
                     output={"activation": "sigmoid", "threshold": 0.5})
    model = LoadedModel(ColumnLogits(outputs).eval(), card, None, "untrained")
    result = segment(random_image(4, 6), model, probabilities=True)
    assert result.labels.tolist() == [[0, 2, 1, 0, 2, 1]] * 4  # the most probable output above the threshold
    assert result.probabilities.shape == (2, 4, 6)


# ----------------------------------------------------------------------------- channels and dtypes


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64, bool])
def test_any_dtype(tiny_model, dtype):
    image = random_image(20, 20, dtype=dtype) if dtype is not bool else random_image(20, 20) > 100
    result = segment(image, tiny_model())
    assert result.labels.shape == (20, 20)


def test_rgb_image_on_one_channel_model_uses_luminance(tiny_model):
    model = tiny_model()
    rgb = random_image(20, 24, 3)
    grey = rgb.astype(np.float32) @ geometry.LUMA_WEIGHTS
    result = segment(rgb, model, probabilities=True)
    assert result.labels.shape == (20, 24)
    np.testing.assert_allclose(result.probabilities, segment(grey, model, probabilities=True).probabilities,
                               atol=1e-5)


def test_rgba_drops_alpha_and_grey_repeats_for_three_channel_model(tiny_model):
    model = tiny_model(in_channels=3)
    rgb = random_image(20, 24, 3)
    rgba = np.concatenate([rgb, np.full((20, 24, 1), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(segment(rgba, model).labels, segment(rgb, model).labels)
    grey = random_image(20, 24)
    repeated = np.repeat(grey[..., None], 3, axis=-1)
    np.testing.assert_array_equal(segment(grey, model).labels, segment(repeated, model).labels)


def test_volume_with_channels_first_or_last(tiny_model):
    model = tiny_model(spatial_dims=3, in_channels=2)
    last = random_image(12, 16, 16, 2, dtype=np.float32)
    first = np.moveaxis(last, -1, 0).copy()
    a, b = segment(last, model), segment(first, model)
    assert a.labels.shape == (12, 16, 16)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.labels, segment(first, model, channel_axis=0).labels)


def test_channel_axis_none_treats_trailing_three_as_space(tiny_model):
    model = tiny_model()
    volume = random_image(16, 16, 3)
    assert segment(volume, model, channel_axis=None).labels.shape == (16, 16, 3)
    assert segment(volume, model).labels.shape == (16, 16)  # auto: RGB


# ----------------------------------------------------------------------------- ROI


def test_roi_equals_segmenting_the_crop(tiny_model):
    model = tiny_model()
    model.card.input.mode = "tile"
    image = random_image(90, 100)
    roi = ((30, 50), (10, 44))
    result = segment(image, model, roi=roi, probabilities=True)
    assert result.roi == roi and result.labels.shape == image.shape
    box = geometry.crop_box(roi, image.shape)
    crop = segment(image[box], model, probabilities=True)
    inner = geometry.roi_within_box(roi, box)
    np.testing.assert_array_equal(result.labels[30:50, 10:44], crop.labels[inner])
    np.testing.assert_allclose(result.probabilities[30:50, 10:44], crop.probabilities[inner], atol=1e-6)
    outside = np.ones(image.shape, bool)
    outside[30:50, 10:44] = False
    assert not result.labels[outside].any() and not result.probabilities[outside].any()


def test_roi_on_volume_with_2d_model_and_softmax(tiny_model):
    model = tiny_model(num_classes=3)
    volume = random_image(6, 40, 40)
    roi = ((1, 4), (5, 25), (10, 30))
    result = segment(volume, model, roi=roi, probabilities=True)
    assert result.labels.shape == (6, 40, 40) and result.probabilities.shape == (3, 6, 40, 40)
    box = geometry.crop_box(roi, volume.shape, no_margin_axes=(0,))
    assert box[0] == slice(1, 4)
    crop = segment(volume[box], model)
    np.testing.assert_array_equal(result.labels[1:4, 5:25, 10:30], crop.labels[geometry.roi_within_box(roi, box)])
    assert result.probabilities[0, 0, 0, 0] == 1.0  # outside: background


def test_roi_stop_is_clipped(tiny_model):
    result = segment(random_image(20, 20), tiny_model(), roi=((0, 99), (5, 15)))
    assert result.roi == ((0, 20), (5, 15))


# ----------------------------------------------------------------------------- steps, progress, cancellation


def test_segment_steps_yields_progress_and_returns_result(tiny_model):
    steps = segment_steps(random_image(40, 40, 40, dtype=np.float32), tiny_model(spatial_dims=3), batch_size=1)
    reports = []
    while True:
        try:
            reports.append(next(steps))
        except StopIteration as finished:
            result = finished.value
            break
    assert isinstance(result, SegmentationResult)
    assert all(isinstance(r, Progress) for r in reports)
    assert reports[-1].done == reports[-1].total > 1
    assert [r.done for r in reports] == sorted(r.done for r in reports)
    assert result.device == "cpu" and result.seconds > 0


def test_progress_reports_every_step_and_a_consumer_throttles_them(tiny_model):
    from napari_lgms._generators import throttled

    def steps():
        return segment_steps(random_image(40, 40, 40, dtype=np.float32), tiny_model(spatial_dims=3), batch_size=1)

    reports = list(steps())
    assert [r.done for r in reports[1:-1]] == list(range(1, reports[-1].total + 1))  # one per step
    assert reports[-1].message == "done"
    shown = list(throttled(steps(), min_interval=3600.0))
    assert [r.message for r in shown] == ["normalising", "done"]  # the first and the final one


def test_should_stop_stops_within_one_step(tiny_model):
    model = tiny_model(spatial_dims=3)
    network = CountingNet(model.network)
    model = LoadedModel(network, model.card, None, "untrained")
    result = segment(random_image(40, 40, 40, dtype=np.float32), model, batch_size=1,
                     should_stop=lambda: network.calls >= 2)
    assert result is None
    assert network.calls == 2


def test_should_stop_before_any_work(tiny_model):
    model = tiny_model()
    network = CountingNet(model.network)
    model = LoadedModel(network, model.card, None, "untrained")
    assert segment(random_image(64, 64), model, should_stop=lambda: True) is None
    assert network.calls == 0


def test_closing_the_generator_stops_it(tiny_model, monkeypatch):
    model = tiny_model(spatial_dims=3)
    network = CountingNet(model.network)
    model = LoadedModel(network, model.card, None, "untrained")
    steps = segment_steps(random_image(40, 40, 40, dtype=np.float32), model, batch_size=1)
    progress = [next(steps) for _ in range(3)]
    while progress[-1].message == "normalising":
        progress.append(next(steps))
    calls = network.calls
    assert calls >= 1
    steps.close()
    assert network.calls == calls
    with pytest.raises(StopIteration):
        next(steps)
    assert not torch.is_inference_mode_enabled()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "image, kwargs, fragment",
    [
        (np.zeros((0, 16)), {}, "empty"),
        (np.zeros((16,)), {}, "dimension"),
        (np.zeros((2, 3, 8, 8, 8)), {}, "dimension"),
        (np.zeros((8, 8, 8, 8)), {}, "not a 3D volume with channels"),
        (np.full((16, 16), np.nan), {}, "NaN"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), {}, "NaN or infinite"),
        (np.array([["a", "b"], ["c", "d"]]), {}, "not a real number type"),
        (np.zeros((16, 16), complex), {}, "not a real number type"),
        (np.zeros((16, 16, 2)), {"channel_axis": -1}, "model takes 1 channel, image has 2"),
        (np.zeros((16, 16)), {"roi": ((5, 5), (0, 4))}, "roi"),
        (np.zeros((16, 16)), {"roi": ((0, 4),)}, "roi"),
        (np.zeros((16, 16)), {"channel_axis": 5}, "channel_axis"),
        (np.zeros((4, 16, 16)), {"slice_index": 9}, "slice_index"),
        (np.zeros((4, 16, 16)), {"slice_axis": 3}, "slice_axis"),
        (np.zeros((16, 16)), {"spacing": (1.0,)}, "spacing"),
        (np.zeros((16, 16)), {"overlap": 1.0}, "overlap"),
        (np.zeros((16, 16)), {"batch_size": 0}, "batch_size"),
        (np.zeros((16, 16)), {"device": "tpu"}, "unknown device"),
    ],
)
def test_bad_input_one_line_input_error(tiny_model, image, kwargs, fragment):
    with pytest.raises(InputError) as caught:
        segment(image, tiny_model(), **kwargs)
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message


def test_three_d_model_refuses_2d_image_and_slice_index(tiny_model):
    model = tiny_model(spatial_dims=3)
    with pytest.raises(InputError, match="3D model"):
        segment(np.zeros((16, 16)), model)
    with pytest.raises(InputError, match="slice_index"):
        segment(np.zeros((4, 16, 16)), model, slice_index=1)


def test_channel_mismatch_for_three_channel_model(tiny_model):
    with pytest.raises(InputError, match=r"model takes 3 channels, image has 2"):
        segment(np.zeros((16, 16, 2)), tiny_model(in_channels=3), channel_axis=-1)


def test_a_resampling_that_would_need_too_much_memory_is_refused_in_one_line(tiny_model):
    model = tiny_model(spatial_dims=3)
    model.card.input.spacing = [1.0, 1.0, 1.0]
    with pytest.raises(InputError, match=r"needs \d+\.\d GiB") as error:
        segment(np.zeros((4, 4, 4), np.float32), model, spacing=(1000.0, 1000.0, 1000.0))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("spatial_dims, num_classes, shape", [
    (2, 1, (70, 53)), (2, 3, (61, 40)), (3, 1, (20, 37, 18)),
])
def test_a_streamed_image_gives_what_the_whole_image_gives(tiny_model, monkeypatch, spatial_dims, num_classes,
                                                            shape):
    """Items too large for memory are predicted window by window, rows activated as they complete."""
    model = tiny_model(spatial_dims=spatial_dims, num_classes=num_classes,
                       input={"patch_size": [16] * spatial_dims,
                              "size_divisor": 4, "mode": "tile" if spatial_dims == 2 else "sliding_window",
                              "spacing": None})
    image = np.random.default_rng(3).normal(100, 30, shape).astype(np.float32)
    whole = segment(image, model, probabilities=True, batch_size=3)
    monkeypatch.setattr(engine, "STREAM_BYTES", 0)
    reports = list(segment_steps(image, model, probabilities=True, batch_size=3))
    streamed = segment(image, model, probabilities=True, batch_size=3)
    np.testing.assert_allclose(streamed.probabilities, whole.probabilities, atol=1e-5)
    assert np.mean(streamed.labels != whole.labels) < 1e-3  # only ties at the threshold may differ
    assert [r.done for r in reports] == sorted(r.done for r in reports) and reports[-1].done == reports[-1].total


def test_streaming_stops_when_asked(tiny_model, monkeypatch):
    monkeypatch.setattr(engine, "STREAM_BYTES", 0)
    model = tiny_model(spatial_dims=3)
    network = CountingNet(model.network)
    model = LoadedModel(network, model.card, None, "untrained")
    result = segment(random_image(40, 40, 40, dtype=np.float32), model, batch_size=1,
                     should_stop=lambda: network.calls >= 2)
    assert result is None and network.calls == 2


def test_normalisation_statistics_of_a_huge_image_come_from_an_even_sample(monkeypatch):
    from napari_lgms.inference import normalize as module

    image = np.random.default_rng(0).gamma(2.0, 30.0, (1, 300, 200)).astype(np.float32)
    exact = module.normalize(image, None)
    block = image[:, 10:42, 7:39]  # a window normalised alone is normalised as in the whole image
    np.testing.assert_array_equal(module.fit_normalizer(image, None)(block), exact[:, 10:42, 7:39])
    monkeypatch.setattr(module, "STATISTICS_SAMPLE", 1000)
    sampled = module.normalize(image, None)
    assert sampled.shape == exact.shape and not np.array_equal(sampled, exact)
    assert abs(float(sampled.mean())) < 0.1 and abs(float(sampled.std()) - 1.0) < 0.1
