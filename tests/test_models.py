"""One parametrised suite over every registered model (as segmentation_models_pytorch does)."""
from __future__ import annotations

import pytest
import torch

from napari_lgms.models import create_model, get_architecture, list_model_configs, padded_forward
from napari_lgms.zoo import load_model, save_model, untrained_card

# Exact counts of the reference code and, for ESDMR-Net, of our reconstruction.
EXPECTED_PARAMETERS = {
    "lgmsnet": 2_321_393,
    "lgmsnet3d": 6_193_742,
    # our reconstruction (no published count): pinned so a change is deliberate
    "esdmrnet": 721_821,
    "esdmrnet3d": 970_727,
    "cmunext": 3_149_185,
    "tinyunet": 481_105,
    "unext": 1_471_921,
}
# A few further configurations the spec pins down.
EXTRA_COUNTS = [
    ("lgmsnet", {"num_classes": 4}, 2_321_376 + 17 * 4),
    ("lgmsnet", {"in_channels": 1}, 2_321_393 - 288),
    ("cmunext", {"in_channels": 1}, 3_149_185 - 288),
    ("tinyunet", {"num_classes": 2}, 481_170),
    ("tinyunet", {"in_channels": 1}, 481_105 - 16),
    ("unext", {"in_channels": 1}, 1_471_921 - 288),
]

CONFIGS = list_model_configs()
NAMES = [c.name for c in CONFIGS]


def count(network) -> int:
    return sum(p.numel() for p in network.parameters())


def smallest_size(name: str) -> int:
    divisor = get_architecture(dict((c.name, c.architecture) for c in CONFIGS)[name]).size_divisor
    return max(divisor, 32)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name", NAMES)
class TestEveryModel:
    def _input(self, name, channels=None, size=None, batch=1):
        config = dict((c.name, c) for c in CONFIGS)[name]
        channels = config.in_channels if channels is None else channels
        size = size or smallest_size(name)
        return torch.randn(batch, channels, *([size] * config.spatial_dims))

    def test_parameter_count(self, name):
        if name not in EXPECTED_PARAMETERS:
            pytest.skip(f"{name}: no published parameter count (reconstruction, checked below)")
        assert count(create_model(name)) == EXPECTED_PARAMETERS[name]

    def test_output_shape_is_logits_per_class(self, name):
        network = create_model(name).eval()
        x = self._input(name, batch=2)
        with torch.no_grad():
            y = network(x)
        assert y.shape == (2, network.arguments["num_classes"], *x.shape[2:])
        assert torch.isfinite(y).all()

    def test_odd_sizes_are_padded_and_cropped_back(self, name):
        network = create_model(name).eval()
        dims = network.arguments["spatial_dims"]
        odd = (37, 45) if dims == 2 else (33, 35, 31)
        x = torch.randn(1, network.arguments["in_channels"], *odd)
        with torch.no_grad():
            y = padded_forward(network, x)
        assert y.shape[2:] == x.shape[2:]

    @pytest.mark.parametrize("channels", [1, 3])
    def test_input_channels(self, name, channels):
        network = create_model(name, in_channels=channels).eval()
        with torch.no_grad():
            y = network(self._input(name, channels=channels))
        assert y.shape[1] == network.arguments["num_classes"]

    def test_several_classes(self, name):
        network = create_model(name, num_classes=3).eval()
        with torch.no_grad():
            assert network(self._input(name)).shape[1] == 3

    def test_backward_reaches_every_parameter(self, name):
        network = create_model(name).train()
        x = self._input(name, batch=2)
        network(x).float().pow(2).mean().backward()
        missing = [n for n, p in network.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"parameters without gradient: {missing[:5]}"

    def test_save_load_round_trip_gives_identical_outputs(self, name, tmp_path):
        network = create_model(name).eval()
        card = untrained_card(name)
        card_file = save_model(network, card, tmp_path)
        loaded = load_model(card_file)
        x = self._input(name)
        with torch.no_grad():
            assert torch.equal(network(x), loaded.network(x))

    def test_three_dimensional_variant_when_supported(self, name):
        config = dict((c.name, c) for c in CONFIGS)[name]
        if 3 not in get_architecture(config.architecture).spatial_dims or config.spatial_dims == 3:
            pytest.skip(f"{name} is 2D only or already 3D")
        network = create_model(name, spatial_dims=3, in_channels=1, num_classes=2).eval()
        with torch.no_grad():
            y = network(torch.randn(1, 1, 32, 32, 32))
        assert y.shape == (1, 2, 32, 32, 32)


@pytest.mark.parametrize("name,overrides,expected", EXTRA_COUNTS)
def test_parameter_counts_of_variants(name, overrides, expected):
    assert count(create_model(name, **overrides)) == expected


def test_esdmrnet_is_about_0_7m_parameters():
    assert 0.6e6 <= count(create_model("esdmrnet")) <= 0.8e6


def test_unknown_model_name_lists_known_ones():
    with pytest.raises(KeyError, match="known models: .*lgmsnet"):
        create_model("lgmsnet9000")


def test_2d_only_architecture_refuses_3d():
    with pytest.raises(ValueError, match="supports spatial_dims"):
        create_model("unext", spatial_dims=3)


@pytest.mark.parametrize("name, shape", [("lgmsnet", (1, 3, 64, 64)), ("lgmsnet3d", (1, 1, 32, 32, 32))])
def test_lgmsnet_depthwise_layout_switch_keeps_weights_and_outputs(name, shape):
    """Channels-last depthwise convolutions (2.8x faster 3D training steps on the CPU) keep the
    shipped weights' names and the network's output."""
    from napari_lgms.models.layers import depthwise_conv
    from napari_lgms.models.layout import set_depthwise_layout

    assert set(depthwise_conv(2, 8, 5).state_dict()) == {"weight", "bias"}
    torch.manual_seed(0)
    network = create_model(name).eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        reference = network(x)
        assert set_depthwise_layout(network, True) == 16  # three LMS blocks of four, four GMS branches
        switched = network(x)
    assert torch.allclose(switched, reference, atol=1e-4)
