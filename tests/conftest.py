"""Shared fixtures: a tiny registered network so engine tests run in milliseconds."""
from __future__ import annotations

import sys

import pytest


def register_tiny_network() -> None:
    """Register ``tiny_test_net`` (once); also imported by processes a test starts (test_ddp)."""
    import torch.nn as nn

    from napari_lgms.models import layers
    from napari_lgms.models.registry import list_architectures, register_architecture

    if any(architecture.name == "tiny_test_net" for architecture in list_architectures()):
        return

    @register_architecture("tiny_test_net", spatial_dims=(2, 3), size_divisor=4,
                           description="test-only 2-level conv net")
    class TinyTestNet(nn.Module):
        """(N, C, *S) -> (N, K, *S); S must be a multiple of 4."""

        def __init__(self, in_channels=1, num_classes=1, spatial_dims=2, width=4):
            super().__init__()
            d = spatial_dims
            self.encode = nn.Sequential(layers.conv(d, in_channels, width, 3), nn.ReLU(),
                                        layers.max_pool(d, 4))
            self.decode = nn.Sequential(layers.Upsample(d, 4), layers.conv(d, width, width, 3), nn.ReLU())
            self.skip = layers.conv(d, in_channels, width, 1)
            self.head = layers.conv(d, width, num_classes, 1)

        def forward(self, x):
            return self.head(self.decode(self.encode(x)) + self.skip(x))


@pytest.fixture
def tiny_model():
    """Factory: ``tiny_model(spatial_dims=2, in_channels=1, num_classes=1, **card_fields)`` -> LoadedModel."""
    import torch

    from napari_lgms.models.registry import build_network
    from napari_lgms.zoo import LoadedModel, ModelCard, default_class_names

    register_tiny_network()

    def make(spatial_dims=2, in_channels=1, num_classes=1, seed=0, **card_fields):
        torch.manual_seed(seed)
        arguments = {"in_channels": in_channels, "num_classes": num_classes, "spatial_dims": spatial_dims}
        network = build_network("tiny_test_net", arguments).eval()
        fields = dict(
            name="tiny-test",
            architecture="tiny_test_net",
            arguments=arguments,
            input={
                "patch_size": [16] * spatial_dims,
                "size_divisor": 4,
                "mode": "sliding_window" if spatial_dims == 3 else "resize",
                "spacing": None,
            },
            normalization={"kind": "percentile_zscore", "lower": 0.5, "upper": 99.5},
            class_names=default_class_names(num_classes),
            output={"activation": "sigmoid" if num_classes == 1 else "softmax", "threshold": 0.5},
        )
        fields.update(card_fields)
        return LoadedModel(network, ModelCard(**fields), None, "untrained")

    return make


@pytest.fixture(scope="session")
def _session_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _isolated_user_models(tmp_path_factory, monkeypatch, _session_cache_dir):
    """Never touch the real user model or cache folders from a test."""
    monkeypatch.setenv("NAPARI_LGMS_MODEL_DIR", str(tmp_path_factory.mktemp("user-models")))
    monkeypatch.setenv("NAPARI_LGMS_CACHE_DIR", str(_session_cache_dir))
    monkeypatch.setenv("NAPARI_LGMS_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def _give_none_its_references_back():
    """PySide6 6.12's ``processEvents()`` and ``QTest.qWait()`` drop one reference to None per call
    (measured: 1000 calls, 1000 fewer). qtbot's waits make thousands of calls; on Python 3.11, where
    None is not immortal, the interpreter then aborts at exit ("deallocating None"). Each test gives
    back what went missing while it ran."""
    import ctypes
    import sys

    before = sys.getrefcount(None)
    yield
    if sys.version_info < (3, 12):
        for _ in range(max(before - sys.getrefcount(None), 0)):
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(None))


@pytest.fixture
def saved_tiny(tiny_model):
    """Save tiny 2D and 3D models in the user model folder; return their card paths."""
    from napari_lgms.zoo import save_model, user_model_dir

    paths = {}
    for dims in (2, 3):
        loaded = tiny_model(spatial_dims=dims, name=f"tiny-{dims}d",
                            training={"data": "generated test data"}, metrics={"dice": 0.5, "split": "test"})
        paths[dims] = str(save_model(loaded.network, loaded.card, user_model_dir()))
    return paths


@pytest.fixture(autouse=True)
def corrections_dir(tmp_path, monkeypatch):
    """Every test's corrections store (and session log) in its own temporary folder, and no widget
    told of an earlier test's store."""
    monkeypatch.setenv("NAPARI_LGMS_CORRECTIONS_DIR", str(tmp_path / "corrections"))
    shared = sys.modules.get("napari_lgms.widgets._shared")  # imported by widget tests only
    if shared is not None:
        monkeypatch.setattr(shared.hub, "store_root", None)
    return tmp_path / "corrections"
