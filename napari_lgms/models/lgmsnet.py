"""LGMSNet (ECAI 2025): local and global multiscale blocks in a U-shaped network.

One implementation serves 2D (reference ``MKtinyvit4_CT``, "SegmsNet") and
3D (reference ``MKtinyvit4_CT3D``, "SegmsNet3D") of the reference code, cq-dong/LGMSNet.
The default configuration has 2,321,393 parameters in 2D (3 -> 1 channels) and
6,193,742 in 3D (1 -> 14 channels).

Shapes are written for 2D, (N, C, H, W); in 3D read (N, C, D, H, W).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from napari_lgms.errors import InputError
from napari_lgms.models import layers
from napari_lgms.models.blocks import (
    ConvNormAct,
    Decoder,
    SkipFusion,
    UpConv,
    stem_conv,
)
from napari_lgms.models.registry import register_architecture, register_model

LMS_KERNELS = (3, 5, 7, 9)


class LocalMultiScale(nn.Module):
    """LMS block: four depthwise kernels (3, 5, 7, 9) on four channel groups.

    (N, C, H, W) -> (N, C, H, W); C must be a multiple of 4. ``norm`` is the
    normalisation of the two ConvNormAct layers (GroupNorm(4) stays in 3D).
    """

    def __init__(self, spatial_dims: int, channels: int, *, norm: str = "batch"):
        super().__init__()
        if channels < 4 or channels % 4:
            raise InputError(f"an LMS block needs a channel count divisible by 4, got {channels}")
        group = channels // 4
        self.group_channels = group
        self.depthwise = nn.ModuleList(layers.depthwise_conv(spatial_dims, group, k) for k in LMS_KERNELS)
        self.norm = nn.GroupNorm(4, channels)
        self.act = nn.GELU()
        self.squeeze = ConvNormAct(spatial_dims, channels, group, 1, norm=norm)
        self.expand = ConvNormAct(spatial_dims, group, channels, 3, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.split(x, self.group_channels, dim=1)
        mixed = torch.cat([conv(g) for conv, g in zip(self.depthwise, groups)], dim=1)
        mixed = self.act(self.norm(mixed + x))
        return self.expand(self.squeeze(mixed)) + x


class DepthwiseBranch(nn.Module):
    """GMS conv branch: depthwise 3x3, BN, ReLU, per-channel scale, BN, plus the input.

    (N, C, H, W) -> (N, C, H, W). Uses BatchNorm in 2D and 3D, as the reference does.
    """

    def __init__(self, spatial_dims: int, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            layers.depthwise_conv(spatial_dims, channels, 3, bias=False),
            layers.batch_norm(spatial_dims, channels),
            nn.ReLU(inplace=True),
            layers.conv(spatial_dims, channels, channels, 1, groups=channels, bias=False),
            layers.batch_norm(spatial_dims, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class TokenAttention(nn.Module):
    """Pre-norm multi-head self-attention with a residual: (S, N, C) -> (S, N, C).

    ``heads`` x ``head_dim`` is the inner width, independent of C; scale head_dim**-0.5.
    """

    def __init__(self, dim: int, heads: int = 4, head_dim: int = 8):
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        inner = heads * head_dim
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        s, n, _ = tokens.shape
        qkv = self.qkv(self.norm(tokens)).reshape(s, n, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (S, heads, N, head_dim)
        attended = F.scaled_dot_product_attention(q, k, v)
        attended = attended.transpose(1, 2).reshape(s, n, self.heads * self.head_dim)
        return tokens + self.proj(attended)


class TokenFeedForward(nn.Module):
    """Pre-norm SiLU MLP with a residual: (S, N, C) -> (S, N, C)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + self.net(tokens)


class PatchTransformer(nn.Module):
    """MobileViT-style global mixing: (N, C, H, W) -> (N, C, H, W).

    The map is cut into ``patch``-sized cells; each of the P positions inside a
    cell forms its own sequence of (H/ph)(W/pw) tokens, which attend globally.
    Sequences of different positions never mix. No positional embedding.
    """

    def __init__(self, spatial_dims: int, dim: int, mlp_hidden: int, *, patch: int = 2, depth: int = 1,
                 heads: int = 4, head_dim: int = 8):
        super().__init__()
        self.patch = (patch,) * spatial_dims
        self.layers = nn.Sequential(*(
            nn.Sequential(TokenAttention(dim, heads, head_dim), TokenFeedForward(dim, mlp_hidden))
            for _ in range(depth)
        ))
        d = spatial_dims
        # (B, C, g0, p0, g1, p1, ...) -> (B, p0, p1, ..., g0, g1, ..., C) and back.
        self._to_tokens = (0, *(3 + 2 * i for i in range(d)), *(2 + 2 * i for i in range(d)), 1)
        self._from_tokens = (0, 2 * d + 1, *(a for i in range(d) for a in (d + 1 + i, 1 + i)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        grid = [s // p for s, p in zip(spatial, self.patch)]
        split_axes = [a for g, p in zip(grid, self.patch) for a in (g, p)]
        tokens = x.reshape(b, c, *split_axes).permute(self._to_tokens)
        tokens = tokens.reshape(b * math.prod(self.patch), math.prod(grid), c)
        tokens = self.layers(tokens)
        out = tokens.reshape(b, *self.patch, *grid, c).permute(self._from_tokens)
        return out.reshape(b, c, *spatial)


class GlobalMultiScale(nn.Module):
    """GMS block: a transformer branch and a conv branch on a channel split.

    (N, c_in, H, W) -> (N, channels, H, W). ``split`` = (transformer channels,
    conv channels) must add up to ``channels``; H and W must be multiples of
    ``patch``. ``norm`` applies to the ConvNormAct layers only.
    """

    def __init__(self, spatial_dims: int, c_in: int, channels: int, split: Sequence[int], mlp_hidden: int, *,
                 norm: str = "batch", patch: int = 2, heads: int = 4, head_dim: int = 8):
        super().__init__()
        split = tuple(int(s) for s in split)
        if len(split) != 2 or min(split) < 1 or sum(split) != channels:
            raise InputError(
                f"a GMS block split must be two positive channel counts adding up to {channels}, got {list(split)}"
            )
        self.split = split
        self.local = nn.Sequential(
            ConvNormAct(spatial_dims, c_in, channels, 3, norm=norm),
            ConvNormAct(spatial_dims, channels, channels, 1, norm=norm),
        )
        self.transformer = PatchTransformer(spatial_dims, split[0], mlp_hidden, patch=patch,
                                            heads=heads, head_dim=head_dim)
        self.conv_branch = DepthwiseBranch(spatial_dims, split[1])
        self.merge = ConvNormAct(spatial_dims, channels, channels, 1, norm=norm)
        self.fuse = ConvNormAct(spatial_dims, channels + c_in, channels, 3, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.local(x)
        to_transformer, to_conv = torch.split(local, self.split, dim=1)
        mixed = torch.cat((self.transformer(to_transformer), self.conv_branch(to_conv)), dim=1)
        return self.fuse(torch.cat((self.merge(mixed), x), dim=1))


class LocalEncoder(nn.Sequential):
    """``depth`` LMS blocks on c_in channels, then a 1x1 ConvNormAct: (N, c_in, H, W) -> (N, c_out, H, W)."""

    def __init__(self, spatial_dims: int, c_in: int, c_out: int, depth: int = 1, *, norm: str = "batch"):
        super().__init__(
            *(LocalMultiScale(spatial_dims, c_in, norm=norm) for _ in range(depth)),
            ConvNormAct(spatial_dims, c_in, c_out, 1, norm=norm),
        )


def _pairs(value: Sequence[Sequence[int]], name: str) -> list[tuple[int, int]]:
    try:
        pairs = [(int(a), int(b)) for a, b in value]
    except (TypeError, ValueError):
        raise InputError(f"{name} must be 4 pairs [transformer, conv] of channel counts, got {value!r}") from None
    if len(pairs) != 4:
        raise InputError(f"{name} must be 4 pairs [transformer, conv] of channel counts, got {len(pairs)}")
    return pairs


@register_architecture(
    "lgmsnet", spatial_dims=(2, 3), size_divisor=32, onnxruntime_faster=True,
    description="LGMSNet: local (LMS) and global (GMS) multiscale blocks, 2D or 3D",
)
class LGMSNet(nn.Module):
    """LGMSNet, 2D or 3D: (N, in_channels, H, W) -> logits (N, num_classes, H, W).

    Every spatial size must be a multiple of 32 (four 2x poolings, then 2-wide
    patches). Keyword arguments follow the reference constructor:

    * ``dims``: five channel widths (stem/e1, e2, e3, e4, e5); ``dims[0]`` and
      ``dims[1]`` must be multiples of 4 (LMS blocks).
    * ``depths``: LMS repeats of encoders 1-3. Five entries are accepted, as
      in the reference, whose last two are unused.
    * ``split_lists``: [transformer, conv] channel splits of the GMS blocks
      e4, e5, decoder 5 and decoder 4; each adds up to dims[3], dims[4],
      dims[3] and dims[2].
    * ``norm``: "batch" or "instance" for stem, up, fusion and ConvNormAct
      layers; default "batch" in 2D and "instance" in 3D, as in the reference.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, spatial_dims: int = 2, *,
                 dims: Sequence[int] = (16, 32, 64, 128, 128),
                 depths: Sequence[int] = (1, 1, 1, 3, 1),
                 split_lists: Sequence[Sequence[int]] = ((96, 32), (96, 32), (96, 32), (48, 16)),
                 norm: str | None = None):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise InputError(f"LGMSNet supports spatial_dims 2 or 3, got {spatial_dims}")
        if in_channels < 1 or num_classes < 1:
            raise InputError(f"LGMSNet needs in_channels >= 1 and num_classes >= 1, got {in_channels}, {num_classes}")
        dims = [int(d) for d in dims]
        if len(dims) != 5 or min(dims) < 1:
            raise InputError(f"LGMSNet dims must be 5 positive channel counts, got {dims}")
        depths = [int(d) for d in depths]
        if len(depths) not in (3, 5) or min(depths[:3]) < 1:
            raise InputError(f"LGMSNet depths must be 3 (or 5, reference style) positive counts, got {depths}")
        splits = _pairs(split_lists, "LGMSNet split_lists")
        norm = norm or ("batch" if spatial_dims == 2 else "instance")

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.spatial_dims = spatial_dims
        sd = spatial_dims

        def gms(c_in: int, c_out: int, split: tuple[int, int]) -> GlobalMultiScale:
            return GlobalMultiScale(sd, c_in, c_out, split, 2 * c_out, norm=norm)

        self.stem = stem_conv(sd, in_channels, dims[0], norm=norm)
        self.encoder1 = LocalEncoder(sd, dims[0], dims[0], depths[0], norm=norm)
        self.encoder2 = LocalEncoder(sd, dims[0], dims[1], depths[1], norm=norm)
        self.encoder3 = LocalEncoder(sd, dims[1], dims[2], depths[2], norm=norm)
        self.encoder4 = gms(dims[2], dims[3], splits[0])
        self.encoder5 = gms(dims[3], dims[4], splits[1])
        self.pool = layers.max_pool(sd, 2)

        self.decoder5 = Decoder(UpConv(sd, dims[4], dims[3], norm=norm), gms(2 * dims[3], dims[3], splits[2]))
        self.decoder4 = Decoder(
            UpConv(sd, dims[3], dims[2], norm=norm),
            nn.Sequential(SkipFusion(sd, 2 * dims[2], dims[2], norm=norm), gms(dims[2], dims[2], splits[3])),
        )
        self.decoder3 = Decoder(UpConv(sd, dims[2], dims[1], norm=norm), SkipFusion(sd, 2 * dims[1], dims[1], norm=norm))
        self.decoder2 = Decoder(UpConv(sd, dims[1], dims[0], norm=norm), SkipFusion(sd, 2 * dims[0], dims[0], norm=norm))
        self.head = layers.conv(sd, dims[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers.check_input(x, self.in_channels, self.spatial_dims, 32, "LGMSNet")
        x1 = self.encoder1(self.stem(x))
        x2 = self.encoder2(self.pool(x1))
        x3 = self.encoder3(self.pool(x2))
        x4 = self.encoder4(self.pool(x3))
        x5 = self.encoder5(self.pool(x4))
        d4 = self.decoder5(x5, x4)
        d3 = self.decoder4(d4, x3)
        d2 = self.decoder3(d3, x2)
        d1 = self.decoder2(d2, x1)
        return self.head(d1)


register_model("lgmsnet", "lgmsnet", description="LGMSNet 2D (SegmsNet)",
               in_channels=3, num_classes=1, spatial_dims=2)
register_model("lgmsnet3d", "lgmsnet", description="LGMSNet 3D (SegmsNet3D)",
               in_channels=1, num_classes=14, spatial_dims=3)
