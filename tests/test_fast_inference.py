"""The optimised inference path gives the masks of the plain eager path."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from napari_lgms.inference import fast, segment
from napari_lgms.models import create_model, list_model_configs
from napari_lgms.samples import make_endoscopy, make_volume
from napari_lgms.zoo import LoadedModel, untrained_card

torch.set_num_threads(1)
MODEL_NAMES = [config.name for config in list_model_configs()]
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / float(total)


def randomise_batch_norms(network: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine terms, as trained weights have."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, BATCH_NORMS):
                count = module.num_features
                module.running_mean.copy_(torch.rand(count, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(count, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(count, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(count, generator=generator) - 0.5)


def small_model(name: str) -> LoadedModel:
    torch.manual_seed(0)
    network = create_model(name).eval()
    randomise_batch_norms(network)
    card = untrained_card(name)
    card.input.patch_size = [32, 32, 32] if card.spatial_dims == 3 else [64, 64]
    return LoadedModel(network, card, None, "untrained")


def sample_image(card):
    if card.spatial_dims == 3:
        return make_volume((32, 40, 40))[0]
    image, _ = make_endoscopy((64, 64))
    return image if card.in_channels == 3 else image.mean(-1)


def conv_bn_net(spatial_dims: int = 2) -> nn.Sequential:
    torch.manual_seed(1)
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
    network = nn.Sequential(conv(2, 4, 3, padding=1), norm(4), nn.ReLU(), conv(4, 3, 1), norm(3)).eval()
    randomise_batch_norms(network)
    return network


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_batch_norm_folding_is_exact_and_leaves_the_original_alone(spatial_dims):
    network = conv_bn_net(spatial_dims)
    x = torch.randn((2, 2) + (9,) * spatial_dims)
    with torch.no_grad():
        expected = network(x)
    optimized = fast.optimize_for_inference(network)
    assert optimized.folded_batch_norms == 2
    assert not any(isinstance(m, BATCH_NORMS) for m in optimized.modules())
    assert sum(isinstance(m, BATCH_NORMS) for m in network.modules()) == 2
    with torch.no_grad():
        torch.testing.assert_close(optimized(x), expected, rtol=1e-4, atol=1e-5)
    assert not any(p.requires_grad for p in optimized.parameters())


def test_batch_norm_after_an_activation_is_not_folded():
    network = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GELU(), nn.BatchNorm2d(2)).eval()
    assert fast.optimize_for_inference(network).folded_batch_norms == 0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fast_masks_match_eager_on_sample_data(name):
    model = small_model(name)
    image = sample_image(model.card)
    with fast.disabled():
        eager = segment(image, model, probabilities=True)
        # Threshold at the median distinct value so random weights still give a non-trivial mask.
        if model.card.num_classes == 1:
            values = np.unique(eager.probabilities)
            model.card.output.threshold = float(values[(len(values) - 1) // 2])
            eager = segment(image, model, probabilities=True)
    optimized = segment(image, model, probabilities=True)
    assert fast.inference_network(model.network) is not model.network  # the optimised copy (cached) ran
    np.testing.assert_allclose(optimized.probabilities, eager.probabilities, atol=2e-3)
    for label in np.unique(eager.labels)[1:]:
        assert dice(optimized.labels == label, eager.labels == label) >= 0.999
    if np.ptp(eager.probabilities) > 1e-3:  # not saturated: the comparison saw a real mask
        assert 0 < (eager.labels > 0).mean() < 1


@pytest.mark.parametrize("name", ["lgmsnet", "lgmsnet3d"])
def test_onnxruntime_and_torch_backends_agree_with_eager(name):
    pytest.importorskip("onnxruntime")
    network = small_model(name).network
    spatial = (32, 32, 32) if network.arguments["spatial_dims"] == 3 else (64, 64)
    x = torch.randn((2, network.arguments["in_channels"]) + spatial)
    with torch.inference_mode():
        expected = network(x)
        for backend in ("torch", "onnxruntime"):
            optimized = fast.build_inference_network(network, "cpu", backend=backend)
            torch.testing.assert_close(optimized(x), expected, rtol=1e-3, atol=1e-3)
    assert isinstance(fast.build_inference_network(network, "cpu", backend="onnxruntime"), fast.OnnxRuntimeNetwork)


def test_cached_copy_is_rebuilt_when_weights_change():
    network = create_model("unext").eval()
    first = fast.inference_network(network, "cpu")
    assert fast.inference_network(network, "cpu") is first
    with torch.no_grad():
        next(network.parameters()).add_(1.0)
    assert fast.inference_network(network, "cpu") is not first


def test_disabled_and_training_mode_give_the_network_itself():
    network = conv_bn_net()
    with fast.disabled():
        assert fast.inference_network(network, "cpu") is network
    network.train()
    assert fast.inference_network(network, "cpu") is network
    network.eval()
    assert fast.inference_network(network, "cpu") is not network


def test_exported_graphs_are_cached_on_disk_by_weights_and_shape(tmp_path, monkeypatch):
    from napari_lgms.inference import fast

    monkeypatch.setenv("NAPARI_LGMS_CACHE_DIR", str(tmp_path))
    network = create_model("unext").eval()
    calls = []

    def export(net, shape):
        calls.append(shape)
        return b"graph-bytes"

    assert fast.cached_onnx_bytes(network, (1, 3, 32, 32), export) == b"graph-bytes"
    assert fast.cached_onnx_bytes(network, (1, 3, 32, 32), export) == b"graph-bytes"
    assert calls == [(1, 3, 32, 32)]
    fast.cached_onnx_bytes(network, (1, 3, 64, 64), export)
    with torch.no_grad():
        next(network.parameters()).add_(1.0)
    fast.cached_onnx_bytes(network, (1, 3, 32, 32), export)
    assert len(calls) == 3 and len(list((tmp_path / "onnx").glob("*.onnx"))) == 3


@pytest.mark.parametrize("name, expected", [("lgmsnet", "OnnxRuntimeNetwork"), ("tinyunet", "torch")])
def test_auto_backend_takes_onnx_runtime_only_where_the_benchmark_showed_a_win(name, expected):
    pytest.importorskip("onnxruntime")
    network = create_model(name, widths=(16, 16, 16, 16)) if name == "tinyunet" else create_model(name)
    optimized = fast.build_inference_network(network.eval(), "cpu")
    assert (type(optimized).__name__ == "OnnxRuntimeNetwork") == (expected == "OnnxRuntimeNetwork")


def test_two_threads_asking_for_a_new_shape_export_it_once(monkeypatch):
    """napari's worker thread and the main thread segmenting at once must not export concurrently."""
    import threading
    import time

    import napari_lgms.export as export_module

    exports = []
    running = []

    def slow_export(network, sample_shape, export):
        running.append(1)
        overlapped = len(running) > 1
        time.sleep(0.2)
        running.pop()
        exports.append((sample_shape, overlapped))
        return b"graph"

    monkeypatch.setattr(fast, "cached_onnx_bytes", slow_export)
    monkeypatch.setattr(export_module, "ort_session", lambda model_bytes, threads=None: object())
    wrapper = fast.OnnxRuntimeNetwork(torch.nn.Identity())
    sessions = []
    threads = [threading.Thread(target=lambda: sessions.append(wrapper.session((1, 1, 32, 32)))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert exports == [((1, 1, 32, 32), False)]
    assert len(sessions) == 2 and sessions[0] is sessions[1] is not None


def test_onnx_cache_drops_least_recently_used_graphs_beyond_its_size(tmp_path):
    import os

    from napari_lgms.inference import fast

    for index, age in enumerate((300, 200, 100)):
        path = tmp_path / f"g{index}.onnx"
        path.write_bytes(b"x" * 100)
        os.utime(path, (path.stat().st_atime - age, path.stat().st_mtime - age))
    fast.prune_onnx_cache(tmp_path, max_bytes=250)
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["g1.onnx", "g2.onnx"]
