"""LGMSNet / CMUNeXt building blocks: parameter counts of the reference code, shapes, maths, errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from napari_lgms.errors import InputError
from napari_lgms.models import create_model, padded_forward
from napari_lgms.models.blocks import ConvNormAct, SkipFusion, UpConv, make_norm, stem_conv
from napari_lgms.models.cmunext import CMUNeXt, CMUNeXtBlock
from napari_lgms.models.lgmsnet import (
    GlobalMultiScale,
    LGMSNet,
    LocalEncoder,
    LocalMultiScale,
    PatchTransformer,
    TokenAttention,
)

torch.set_num_threads(1)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("channels, expected", [(16, 1_384), (32, 4_048)])
def test_lms_block_parameter_count(channels, expected):
    assert n_params(LocalMultiScale(2, channels)) == expected


@pytest.mark.parametrize("c_in, c_out, expected", [(16, 16, 1_672), (16, 32, 1_960), (32, 64, 6_224)])
def test_lgmsnet_local_encoder_parameter_counts(c_in, c_out, expected):
    assert n_params(LocalEncoder(2, c_in, c_out)) == expected


@pytest.mark.parametrize(
    "c_in, channels, split, expected",
    [(64, 128, (96, 32), 391_424), (128, 128, (96, 32), 538_880), (256, 128, (96, 32), 833_792)],
)
def test_gms_block_parameter_counts(c_in, channels, split, expected):
    assert n_params(GlobalMultiScale(2, c_in, channels, split, 2 * channels)) == expected


def test_shared_blocks_parameter_counts():
    assert n_params(stem_conv(2, 3, 16)) == 480
    assert n_params(UpConv(2, 128, 128)) == 147_840
    assert n_params(UpConv(2, 32, 16)) == 4_656
    assert n_params(SkipFusion(2, 64, 32)) == 31_392
    assert n_params(SkipFusion(2, 32, 16)) == 8_016


def test_lgmsnet_stage_table():
    net = LGMSNet()
    stages = {
        "stem": 480, "encoder1": 1_672, "encoder2": 1_960, "encoder3": 6_224,
        "encoder4": 391_424, "encoder5": 538_880, "head": 17,
    }
    for name, expected in stages.items():
        assert n_params(getattr(net, name)) == expected, name
    decoders = {5: (147_840, 833_792), 4: (73_920, 262_592), 3: (18_528, 31_392), 2: (4_656, 8_016)}
    for level, (up, fuse) in decoders.items():
        decoder = getattr(net, f"decoder{level}")
        assert (n_params(decoder.up), n_params(decoder.fuse)) == (up, fuse), level
    assert n_params(net) == 2_321_393


@pytest.mark.parametrize("num_classes", [1, 2, 5])
def test_lgmsnet_parameter_count_per_class(num_classes):
    assert n_params(LGMSNet(num_classes=num_classes)) == 2_321_376 + 17 * num_classes


def test_single_channel_input_removes_288_parameters():
    assert n_params(LGMSNet(in_channels=1)) == 2_321_393 - 288
    assert n_params(CMUNeXt(in_channels=1)) == 3_149_185 - 288


def test_lgmsnet3d_reference_configurations():
    assert n_params(create_model("lgmsnet3d")) == 6_193_742
    assert n_params(LGMSNet(1, 14, 3, depths=(1, 1, 3, 1, 1))) == 6_227_854
    # 3D stem/up/fusion use parameter-free InstanceNorm, the GMS conv branch BatchNorm3d.
    net = create_model("lgmsnet3d")
    assert isinstance(net.stem[1], nn.InstanceNorm3d)
    assert isinstance(net.encoder4.conv_branch.body[1], nn.BatchNorm3d)


def test_cmunext_stage_table():
    net = CMUNeXt()
    assert n_params(net.stem) == 480
    assert [n_params(e) for e in net.encoders] == [4_832, 7_184, 47_584, 603_744, 584_928]
    ups = [n_params(d.up) for d in net.decoders]
    fuses = [n_params(d.fuse) for d in net.decoders]
    assert ups == [4_656, 36_960, 184_704, 369_120]
    assert fuses == [8_016, 31_392, 494_208, 771_360]
    assert n_params(net.head) == 17
    assert n_params(net) == 3_149_185


def test_cmunext_block_alone():
    assert n_params(CMUNeXtBlock(2, 128, 160, depth=3, kernel_size=7)) == 603_744


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (dict(dims=(8, 16, 32, 64, 128), depths=(1,) * 5, kernels=(3, 3, 7, 7, 9)), 417_505),
        (dict(dims=(32, 64, 128, 256, 512), depths=(1, 1, 1, 6, 3)), 8_286_721),
    ],
)
def test_cmunext_size_variants(arguments, expected):
    assert n_params(CMUNeXt(**arguments)) == expected


# ---------------------------------------------------------------- shapes and maths


@pytest.mark.parametrize("spatial_dims, size", [(2, (16, 24)), (3, (8, 8, 12))])
def test_blocks_keep_or_change_shapes(spatial_dims, size):
    norm = "batch" if spatial_dims == 2 else "instance"
    x = torch.randn(2, 8, *size)
    assert LocalMultiScale(spatial_dims, 8, norm=norm)(x).shape == x.shape
    assert ConvNormAct(spatial_dims, 8, 12, 3, norm=norm)(x).shape == (2, 12, *size)
    assert SkipFusion(spatial_dims, 8, 4, norm=norm)(x).shape == (2, 4, *size)
    assert UpConv(spatial_dims, 8, 4, norm=norm)(x).shape == (2, 4, *(2 * s for s in size))
    gms = GlobalMultiScale(spatial_dims, 8, 16, (12, 4), 32, norm=norm)
    assert gms(x).shape == (2, 16, *size)


def test_instance_norm_has_no_parameters():
    assert n_params(make_norm("instance", 3, 16)) == 0
    assert n_params(make_norm("batch", 3, 16)) == 32
    with pytest.raises(InputError, match="norm must be one of"):
        make_norm("layer", 2, 16)


class _AddSequenceMean(nn.Module):
    """Stand-in for the transformer layers: adds each sequence's mean token."""

    def forward(self, tokens):
        return tokens + tokens.mean(dim=1, keepdim=True)


@pytest.mark.parametrize("spatial_dims, size", [(2, (4, 6)), (3, (4, 2, 6))])
def test_patch_transformer_groups_tokens_by_position_in_patch(spatial_dims, size):
    block = PatchTransformer(spatial_dims, dim=3, mlp_hidden=6)
    block.layers = _AddSequenceMean()
    x = torch.randn(2, 3, *size)
    out = block(x)
    # Each of the 2**d positions inside a 2-wide patch is its own sequence:
    # the strided sub-grid x[..., i::2, j::2] in 2D.
    expected = x.clone()
    for offsets in torch.cartesian_prod(*[torch.arange(2)] * spatial_dims).reshape(-1, spatial_dims):
        index = (slice(None), slice(None)) + tuple(slice(int(o), None, 2) for o in offsets)
        sub = x[index]
        expected[index] = sub + sub.mean(dim=tuple(range(2, 2 + spatial_dims)), keepdim=True)
    torch.testing.assert_close(out, expected)

    block.layers = nn.Identity()
    torch.testing.assert_close(block(x), x)


def test_token_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    attention = TokenAttention(dim=12, heads=4, head_dim=8)
    tokens = torch.randn(3, 10, 12)
    normed = attention.norm(tokens)
    q, k, v = attention.qkv(normed).chunk(3, dim=-1)
    split = lambda t: t.reshape(3, 10, 4, 8).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    weights = torch.softmax(q @ k.transpose(-1, -2) * 8 ** -0.5, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(3, 10, 32)
    torch.testing.assert_close(attention(tokens), tokens + attention.proj(out))


def test_lgmsnet_2d_forward_backward():
    torch.manual_seed(0)
    net = create_model("lgmsnet", in_channels=1, num_classes=3)
    x = torch.randn(2, 1, 64, 32)
    logits = net(x)
    assert logits.shape == (2, 3, 64, 32)
    logits.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_lgmsnet_3d_forward_backward():
    torch.manual_seed(0)
    net = create_model("lgmsnet3d", num_classes=2)
    x = torch.randn(1, 1, 32, 32, 64)
    logits = net(x)
    assert logits.shape == (1, 2, 32, 32, 64)
    logits.mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_cmunext_forward_backward_and_eval_is_deterministic():
    torch.manual_seed(0)
    net = create_model("cmunext", num_classes=2)
    x = torch.randn(2, 3, 32, 48)
    net(x).mean().backward()
    net.eval()
    with torch.inference_mode():
        first, second = net(x), net(x)
    assert first.shape == (2, 2, 32, 48)
    torch.testing.assert_close(first, second)


def test_padded_forward_accepts_any_size():
    net = create_model("lgmsnet").eval()
    with torch.inference_mode():
        assert padded_forward(net, torch.randn(1, 3, 40, 70)).shape == (1, 1, 40, 70)


# ---------------------------------------------------------------- errors


def test_lms_requires_channels_divisible_by_four():
    with pytest.raises(InputError, match="divisible by 4"):
        LocalMultiScale(2, 18)
    with pytest.raises(InputError, match="divisible by 4"):
        LGMSNet(dims=(18, 32, 64, 128, 128))


def test_gms_split_must_add_up():
    with pytest.raises(InputError, match="adding up to 128"):
        GlobalMultiScale(2, 64, 128, (96, 16), 256)
    with pytest.raises(InputError, match="adding up to"):
        LGMSNet(split_lists=((96, 32), (96, 32), (96, 32), (40, 16)))


@pytest.mark.parametrize(
    "name, shape, message",
    [
        ("lgmsnet", (1, 3, 48, 64), "multiple of 32"),
        ("lgmsnet", (1, 1, 64, 64), r"takes a \(N, 3, H, W\) tensor"),
        ("lgmsnet", (3, 64, 64), r"\(N, 3, H, W\)"),
        ("lgmsnet3d", (1, 1, 32, 32), r"\(N, 1, D, H, W\)"),
        ("cmunext", (1, 3, 24, 32), "multiple of 16"),
    ],
)
def test_forward_rejects_bad_input(name, shape, message):
    net = create_model(name)
    with pytest.raises(InputError, match=message):
        net(torch.zeros(shape))


def test_constructor_rejects_bad_configuration():
    with pytest.raises(InputError, match="2D only"):
        CMUNeXt(spatial_dims=3)
    with pytest.raises(InputError, match="kernels must be odd"):
        CMUNeXt(kernels=(3, 3, 6, 7, 7))
    with pytest.raises(InputError, match="spatial_dims 2 or 3"):
        LGMSNet(spatial_dims=1)
    with pytest.raises(InputError, match="5 positive"):
        LGMSNet(dims=(16, 32, 64, 128))
    with pytest.raises(ValueError, match="supports spatial_dims"):
        create_model("cmunext", spatial_dims=3)


def test_registered_models():
    assert create_model("lgmsnet").size_divisor == 32
    assert create_model("cmunext").size_divisor == 16
    net3d = create_model("lgmsnet3d")
    assert (net3d.in_channels, net3d.num_classes, net3d.spatial_dims) == (1, 14, 3)
