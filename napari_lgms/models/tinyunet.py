"""TinyU-Net (MICCAI'24): a 4-level U-Net built from cascaded multi-receptive-field blocks.

Written from the reference model (ChenJunren-Lab/TinyU-Net). The default network
(3 input channels, widths 64/128/256/512) has 481,105 parameters for 1 class
and 481,170 for 2 classes, as the reference does. Changing the input channels
changes only the first block (3 -> 1 channel: -16 parameters).

Faithful details: BatchNorm eps 1e-3 / momentum 0.03, GELU (exact), a
channel-interleaved split inside each block, bicubic 2x upsampling
(align_corners=False) and ``[upsampled, skip]`` concatenation order.

2D only (bicubic interpolation has no 3D form); inputs must be multiples of 16.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from napari_lgms.errors import InputError
from napari_lgms.models import layers
from napari_lgms.models.registry import register_architecture, register_model

BN_EPS = 1e-3
BN_MOMENTUM = 0.03
CASCADE_LENGTH = 7  # N = 8 feature groups: the merged pair plus 7 cascaded outputs
SIZE_DIVISOR = 16


class TinyConv(nn.Sequential):
    """Convolution without bias, BN(eps 1e-3, momentum 0.03), then GELU or nothing.

    (N, c_in, H, W) -> (N, c_out, H, W). ``depthwise=True`` uses
    ``groups = c_in`` (c_in == c_out) and no activation, as the reference's
    depthwise unit does.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 1, *, depthwise: bool = False):
        if depthwise and c_in != c_out:
            raise InputError(f"a depthwise TinyConv needs c_in == c_out, got {c_in} and {c_out}")
        super().__init__(
            layers.conv(2, c_in, c_out, kernel_size, groups=c_in if depthwise else 1, bias=False),
            layers.batch_norm(2, c_out, eps=BN_EPS, momentum=BN_MOMENTUM),
            nn.Identity() if depthwise else nn.GELU(),
        )


class CMRF(nn.Module):
    """Cascaded multi-receptive-field block: (N, c_in, H, W) -> (N, c_out, H, W).

    With g = c_out / 16: a 1x1 unit makes 2g channels, split channel-interleaved
    into A (even) and B (odd); seven depthwise 3x3 units run in cascade from B;
    ``[A + B, y1..y7]`` (8g = c_out / 2 channels) is fused by a 1x1 unit to c_out.
    A residual is added when c_in == c_out (never the case inside TinyU-Net).

    Parameters: c_in*c_out/8 + c_out/4 + 77*c_out/16 + c_out**2/2 + 2*c_out.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        if c_out % 16:
            raise InputError(f"CMRF output channels must be a multiple of 16, got {c_out}")
        group = c_out // 16
        self.reduce = TinyConv(c_in, 2 * group, 1)
        self.cascade = nn.ModuleList(
            TinyConv(group, group, 3, depthwise=True) for _ in range(CASCADE_LENGTH)
        )
        self.fuse = TinyConv((CASCADE_LENGTH + 1) * group, c_out, 1)
        self.residual = c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.reduce(x)
        even, odd = reduced[:, 0::2], reduced[:, 1::2]
        features = [even + odd]
        current = odd
        for unit in self.cascade:
            current = unit(current)
            features.append(current)
        out = self.fuse(torch.cat(features, dim=1))
        return out + x if self.residual else out


class TinyEncoder(nn.Module):
    """CMRF then 2x2 max-pool: (N, c_in, H, W) -> ((N, c_out, H/2, W/2), skip (N, c_out, H, W))."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.block = CMRF(c_in, c_out)
        self.pool = layers.max_pool(2, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.block(x)
        return self.pool(skip), skip


class TinyDecoder(nn.Module):
    """Bicubic 2x upsampling, concatenation ``[up, skip]``, CMRF.

    (N, c_deep, H/2, W/2), (N, c_skip, H, W) -> (N, c_out, H, W).
    """

    def __init__(self, c_deep: int, c_skip: int, c_out: int):
        super().__init__()
        self.upsample = layers.Upsample(2, 2, mode="bicubic", align_corners=False)
        self.block = CMRF(c_deep + c_skip, c_out)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.upsample(deep), skip], dim=1))


# Not onnxruntime_faster: its bicubic Resize runs 1.6-4.6x slower in ONNX Runtime (benchmarks/README.md).
@register_architecture("tinyunet", spatial_dims=(2,), size_divisor=SIZE_DIVISOR,
                       description="TinyU-Net (MICCAI'24): CMRF blocks, 0.48 M parameters")
class TinyUNet(nn.Module):
    """TinyU-Net: (N, in_channels, H, W) -> logits (N, num_classes, H, W); H, W multiples of 16."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1, spatial_dims: int = 2, *,
                 widths: tuple[int, ...] = (64, 128, 256, 512)):
        super().__init__()
        if spatial_dims != 2:
            raise InputError(f"TinyU-Net is 2D only (bicubic upsampling), got spatial_dims={spatial_dims}")
        if in_channels < 1 or num_classes < 1:
            raise InputError(f"in_channels and num_classes must be >= 1, got {in_channels} and {num_classes}")
        widths = tuple(int(w) for w in widths)
        if len(widths) != 4:
            raise InputError(f"TinyU-Net takes 4 widths, got {widths}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.spatial_dims = 2
        inputs = (in_channels,) + widths[:-1]
        self.encoders = nn.ModuleList(TinyEncoder(c_in, c_out) for c_in, c_out in zip(inputs, widths))
        # dec4 upsamples the pooled enc4 output (no separate bottleneck block).
        deep = (widths[-1],) + widths[:0:-1]
        self.decoders = nn.ModuleList(
            TinyDecoder(c_deep, c_skip, c_skip) for c_deep, c_skip in zip(deep, widths[::-1])
        )
        self.head = layers.conv(2, widths[0], num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers.check_input(x, self.in_channels, 2, SIZE_DIVISOR, "TinyU-Net")
        skips = []
        for encoder in self.encoders:
            x, skip = encoder(x)
            skips.append(skip)
        for decoder, skip in zip(self.decoders, reversed(skips)):
            x = decoder(x, skip)
        return self.head(x)


register_model("tinyunet", "tinyunet",
               description="TinyU-Net 2D, RGB input, 1 class (the LGMSNet benchmark's TinyUNet(3, 1))",
               in_channels=3, num_classes=1, spatial_dims=2)
