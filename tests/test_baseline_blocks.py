"""TinyU-Net, UNeXt and ESDMR-Net: per-block parameter counts, shapes and behaviour.

Counts are the reference code's (TinyU-Net, UNeXt; exact targets); the ESDMR-Net
counts are closed-form formulas of the reconstruction in ``esdmrnet.py``.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from napari_lgms.errors import InputError
from napari_lgms.models import create_model, get_architecture, padded_forward
from napari_lgms.models.esdmrnet import DepthwiseConv, DMRBlock, ESBlock, ESDMRNet, ExpandSqueeze
from napari_lgms.models.tinyunet import CMRF, TinyUNet
from napari_lgms.models.unext import UNeXt, shift_channel_groups


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def forward_backward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.train()
    y = model(x)
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    return y


# ----------------------------------------------------------------------------- TinyU-Net

def cmrf_formula(c1: int, c2: int) -> int:
    return c1 * c2 // 8 + c2 // 4 + 77 * c2 // 16 + c2 * c2 // 2 + 2 * c2


@pytest.mark.parametrize("c1, c2, expected", [
    (3, 64, 2_524), (64, 128, 10_120), (128, 256, 38_672), (256, 512, 151_072),
    (1024, 512, 200_224), (768, 256, 59_152), (384, 128, 15_240), (192, 64, 4_036),
])
def test_cmrf_matches_the_stage_table(c1, c2, expected):
    block = CMRF(c1, c2)
    assert count(block) == expected == cmrf_formula(c1, c2)
    assert block(torch.randn(2, c1, 8, 8)).shape == (2, c2, 8, 8)


def test_tinyunet_stage_counts_and_totals():
    net = TinyUNet()
    assert [count(e) for e in net.encoders] == [2_524, 10_120, 38_672, 151_072]
    assert [count(d) for d in net.decoders] == [200_224, 59_152, 15_240, 4_036]
    assert count(net.head) == 65
    assert count(net) == 481_105
    assert count(TinyUNet(num_classes=2)) == 481_170
    assert count(TinyUNet(in_channels=1)) == 481_105 - 16


def test_cmrf_splits_channels_interleaved():
    group = 3
    block = CMRF(2 * group, 16 * group)
    block.reduce = nn.Identity()
    block.cascade = nn.ModuleList(nn.Identity() for _ in block.cascade)
    block.fuse = nn.Identity()
    x = torch.arange(2 * group, dtype=torch.float32).view(1, -1, 1, 1)
    out = block(x).flatten()
    even, odd = x.flatten()[0::2], x.flatten()[1::2]
    assert torch.equal(out[:group], even + odd)
    assert torch.equal(out[group:2 * group], odd)


def test_tinyunet_uses_reference_batchnorm_and_bicubic_upsampling():
    net = TinyUNet()
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.eps == 1e-3 and m.momentum == 0.03 for m in norms)
    assert all(d.upsample.mode == "bicubic" for d in net.decoders)


def test_tinyunet_forward_backward_any_channels_and_classes():
    torch.manual_seed(0)
    net = TinyUNet(in_channels=1, num_classes=3, widths=(16, 32, 32, 48))
    y = forward_backward(net, torch.randn(2, 1, 32, 48))
    assert y.shape == (2, 3, 32, 48)


def test_tinyunet_rejects_bad_input():
    net = TinyUNet(widths=(16, 16, 16, 16)).eval()
    with pytest.raises(InputError, match=r"takes a \(N, 3, H, W\)"):
        net(torch.randn(1, 1, 32, 32))
    with pytest.raises(InputError, match="multiple of 16"):
        net(torch.randn(1, 3, 40, 32))
    with pytest.raises(InputError, match="2D only"):
        TinyUNet(spatial_dims=3)
    with pytest.raises(InputError, match="multiple of 16"):
        CMRF(3, 40)


# ----------------------------------------------------------------------------- UNeXt

def test_unext_part_counts_match_the_reference():
    net = UNeXt()
    conv_encoder = net.encoder1, net.encoder2, net.encoder3
    assert sum(count(m) for m in conv_encoder) == 42_432
    assert count(net.encoder4.embed) == 184_800        # patch_embed3
    assert count(net.bottleneck.embed) == 369_408      # patch_embed4
    assert count(net.encoder4.block) == 53_440         # block1
    assert count(net.bottleneck.block) == 134_656      # block2
    assert count(net.refine4.block) == 53_440          # dblock1
    assert count(net.refine3.block) == 34_560          # dblock2
    stage_norms = net.encoder4.norm, net.bottleneck.norm, net.refine4.norm, net.refine3.norm
    assert sum(count(m) for m in stage_norms) == 1_408
    ups = net.up4, net.up3, net.up2, net.up1, net.up0
    assert sum(count(u.conv) for u in ups) == 597_088
    assert sum(count(u.norm) for u in ups) == 672
    assert isinstance(net.up0.norm, nn.Identity)
    assert count(net.head) == 17
    assert count(net) == 1_471_921


def test_unext_honours_in_channels_and_small_variant():
    assert count(UNeXt(in_channels=1)) == 1_471_921 - 288
    assert count(UNeXt(channels=(8, 16), embed_dims=(32, 64, 128))) == 253_561


def reference_shift(image: torch.Tensor, dim: int, groups: int = 5) -> torch.Tensor:
    """The official pad / chunk / roll / crop sequence, written out."""
    reach = groups // 2
    height, width = image.shape[2:]
    padded = F.pad(image, (reach, reach, reach, reach))
    chunks = torch.chunk(padded, groups, dim=1)
    rolled = [torch.roll(c, s, dim) for c, s in zip(chunks, range(-reach, reach + 1))]
    merged = torch.cat(rolled, dim=1)
    return merged.narrow(2, reach, height).narrow(3, reach, width)


@pytest.mark.parametrize("channels", [256, 160, 128, 7])
@pytest.mark.parametrize("dim", [2, 3])
def test_shift_equals_reference_roll(channels, dim):
    image = torch.randn(2, channels, 6, 5)
    assert torch.equal(shift_channel_groups(image, dim), reference_shift(image, dim))


def test_shift_moves_each_chunk_by_its_offset():
    image = torch.zeros(1, 5, 7, 7)
    image[:, :, 3, 3] = 1.0
    shifted = shift_channel_groups(image, dim=2)
    rows = [int(shifted[0, c].sum(dim=1).argmax()) for c in range(5)]
    assert rows == [1, 2, 3, 4, 5]


def test_unext_forward_backward_and_mlp_ratio_fix():
    torch.manual_seed(0)
    net = UNeXt(in_channels=2, num_classes=4, channels=(8, 16), embed_dims=(32, 40, 64), mlp_ratio=2)
    y = forward_backward(net, torch.randn(2, 2, 64, 96))
    assert y.shape == (2, 4, 64, 96)
    assert net.encoder4.block.mlp.fc1.out_features == 80


def test_unext_token_layer_initialisation():
    torch.manual_seed(0)
    net = UNeXt()
    fc = net.bottleneck.block.mlp.fc1
    assert abs(fc.weight.std().item() - 0.02) < 0.002 and fc.weight.abs().max() <= 2.0
    assert torch.all(fc.bias == 0)
    proj = net.bottleneck.embed.proj
    expected_std = math.sqrt(2.0 / (3 * 3 * 256))
    assert abs(proj.weight.std().item() - expected_std) / expected_std < 0.05
    assert torch.all(proj.bias == 0)


def test_unext_rejects_sizes_not_multiple_of_32():
    with pytest.raises(InputError, match="multiple of 32"):
        UNeXt().eval()(torch.randn(1, 3, 48, 64))


# ----------------------------------------------------------------------------- ESDMR-Net

def es_branch_formula(c: int, k: int, d: int, t: int = 2) -> int:
    return k ** d * c + 2 * t * c * c + 2 * t * c + 2 * c


def es_block_formula(c: int, d: int, kernels=(3, 5, 7)) -> int:
    branches = sum(es_branch_formula(c, k, d) for k in kernels)
    return branches + len(kernels) * c * c + 2 * c


def dmr_formula(c: int, d: int) -> int:
    depthwise = (3 ** d + 5 ** d) * c + (3 ** d + 5 ** d) * 2 * c
    return depthwise + 9 * c * c + 10 * c


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("channels", [16, 32])
def test_es_and_dmr_counts_and_shapes(spatial_dims, channels):
    es, dmr = ESBlock(spatial_dims, channels), DMRBlock(spatial_dims, channels)
    assert count(es) == es_block_formula(channels, spatial_dims)
    assert count(dmr) == dmr_formula(channels, spatial_dims)
    x = torch.randn(2, channels, *([8] * spatial_dims))
    assert es(x).shape == x.shape and dmr(x).shape == x.shape


def test_es_block_hand_counts():
    assert count(ExpandSqueeze(2, 16, 3)) == 1_264
    assert count(ESBlock(2, 16)) == 5_488
    assert count(DMRBlock(2, 16)) == 4_096


def test_es_block_is_residual():
    block = ESBlock(2, 8).eval()
    with torch.no_grad():
        block.fuse[1].weight.zero_()  # the fused branches then contribute nothing
    x = torch.randn(1, 8, 8, 8)
    assert torch.allclose(block(x), F.relu(x))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_depthwise_layout_switch_changes_nothing_numerically(spatial_dims):
    from napari_lgms.models.layout import set_depthwise_layout

    torch.manual_seed(0)
    conv = DepthwiseConv(spatial_dims, 6, 7)
    x = torch.randn(2, 6, *([9] * spatial_dims))
    reference = conv.conv(x)
    assert set_depthwise_layout(conv, True) == 1
    switched = conv(x)
    assert switched.is_contiguous() and torch.allclose(switched, reference, atol=1e-5)
    set_depthwise_layout(conv, False)
    assert torch.equal(conv(x), reference)


def test_layout_policy_is_channels_last_for_cpu_training_and_3d_inference():
    from napari_lgms.models.layout import prefer_channels_last, use_layout_for

    assert prefer_channels_last("cpu", training=True, spatial_dims=2)
    assert prefer_channels_last("cpu", training=False, spatial_dims=3)
    assert not prefer_channels_last("cpu", training=False, spatial_dims=2)
    assert not prefer_channels_last("meta", training=True, spatial_dims=3)
    network = ESDMRNet(in_channels=1, num_classes=2, widths=(8, 8, 16, 16, 24))
    assert use_layout_for(network, "cpu", training=True) > 0
    assert all(m.conv.channels_last for m in network.modules() if isinstance(m, DepthwiseConv))


def test_onnx_export_of_a_channels_last_network_uses_the_standard_layout_and_restores_it():
    pytest.importorskip("onnx")
    from napari_lgms.export import onnx_bytes
    from napari_lgms.models.layout import set_depthwise_layout

    network = ESDMRNet(in_channels=1, num_classes=1, widths=(8, 8, 16, 16, 24)).eval()
    set_depthwise_layout(network, True)
    assert len(onnx_bytes(network, (1, 1, 32, 32))) > 0
    assert all(m.conv.channels_last for m in network.modules() if isinstance(m, DepthwiseConv))


def test_esdmrnet_counts():
    assert count(ESDMRNet()) == 721_821
    assert count(ESDMRNet(in_channels=1)) == 721_821 - 216  # stem 3x3 conv, 12 channels
    assert count(ESDMRNet(in_channels=1, num_classes=3, spatial_dims=3)) == 970_727


def test_esdmrnet_2d_forward_backward():
    torch.manual_seed(0)
    net = ESDMRNet(in_channels=1, num_classes=2, widths=(8, 8, 16, 16, 24))
    y = forward_backward(net, torch.randn(2, 1, 32, 48))
    assert y.shape == (2, 2, 32, 48)


def test_esdmrnet_3d_forward_backward():
    torch.manual_seed(0)
    net = ESDMRNet(in_channels=1, num_classes=3, spatial_dims=3, widths=(4, 8, 8, 16, 16))
    y = forward_backward(net, torch.randn(2, 1, 16, 32, 16))
    assert y.shape == (2, 3, 16, 32, 16)


def test_esdmrnet_rejects_bad_arguments_and_input():
    with pytest.raises(InputError, match="spatial_dims"):
        ESDMRNet(spatial_dims=1)
    with pytest.raises(InputError, match="5 positive widths"):
        ESDMRNet(widths=(8, 16, 32))
    with pytest.raises(InputError, match="odd"):
        ESDMRNet(kernel_sizes=(3, 4))
    net = ESDMRNet(widths=(4, 4, 4, 4, 4)).eval()
    with pytest.raises(InputError, match=r"\(N, 3, H, W\)"):
        net(torch.randn(1, 3, 16, 16, 16))


def test_esdmrnet_padded_forward_handles_any_size():
    net = create_model("esdmrnet", widths=(4, 4, 8, 8, 8)).eval()
    with torch.inference_mode():
        y = padded_forward(net, torch.randn(1, 3, 21, 37))
    assert y.shape == (1, 1, 21, 37)


# ----------------------------------------------------------------------------- registry

@pytest.mark.parametrize("name, architecture, dims, in_channels, classes, divisor", [
    ("tinyunet", "tinyunet", 2, 3, 1, 16),
    ("unext", "unext", 2, 3, 1, 32),
    ("esdmrnet", "esdmrnet", 2, 3, 1, 16),
    ("esdmrnet3d", "esdmrnet", 3, 1, 3, 16),
])
def test_registered_models(name, architecture, dims, in_channels, classes, divisor):
    net = create_model(name)
    assert net.architecture == architecture and net.size_divisor == divisor
    assert (net.spatial_dims, net.in_channels, net.num_classes) == (dims, in_channels, classes)
    assert get_architecture(architecture).size_divisor == divisor


def test_2d_only_architectures_refuse_3d_through_the_registry():
    with pytest.raises(ValueError, match="spatial_dims"):
        create_model("unext", spatial_dims=3)


@pytest.mark.parametrize("name, shape", [("esdmrnet", (1, 3, 32, 32)), ("esdmrnet3d", (1, 1, 16, 16, 16))])
def test_esdmrnet_exports_to_onnx(name, shape):
    import io
    import warnings

    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    net = create_model(name, widths=(4, 4, 8, 8, 8)).eval()
    x = torch.randn(*shape)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), buffer, opset_version=17, dynamo=False)
    session = ort.InferenceSession(buffer.getvalue())
    exported = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(exported), net(x), atol=1e-4)
