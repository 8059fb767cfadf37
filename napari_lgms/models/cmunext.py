"""CMUNeXt (ISBI 2024): large-kernel depthwise blocks in a U-shaped network (2D).

Default configuration: 3,149,185 parameters (3 -> 1 channels), as the reference
code (FengheTan9/CMUNeXt) has. Shapes: (N, C, H, W).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from napari_lgms.errors import InputError
from napari_lgms.models import layers
from napari_lgms.models.blocks import (
    ConvActNorm,
    Decoder,
    SkipFusion,
    UpConv,
    stem_conv,
)
from napari_lgms.models.registry import register_architecture, register_model


class DepthwiseResidual(nn.Module):
    """Depthwise k x k conv with bias, GELU, BN, plus the input: (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, spatial_dims: int, channels: int, kernel_size: int):
        super().__init__()
        self.body = ConvActNorm(spatial_dims, channels, channels, kernel_size, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class CMUNeXtBlock(nn.Sequential):
    """``depth`` x [depthwise residual, 1x1 expand x4, 1x1 project], then a stem conv.

    (N, c_in, H, W) -> (N, c_out, H, W); the channel change happens in the final
    3x3 conv (bias, BN, ReLU).
    """

    def __init__(self, spatial_dims: int, c_in: int, c_out: int, depth: int = 1, kernel_size: int = 3):
        repeats = []
        for _ in range(depth):
            repeats += [
                DepthwiseResidual(spatial_dims, c_in, kernel_size),
                ConvActNorm(spatial_dims, c_in, 4 * c_in, 1),
                ConvActNorm(spatial_dims, 4 * c_in, c_in, 1),
            ]
        super().__init__(*repeats, stem_conv(spatial_dims, c_in, c_out))


@register_architecture(
    "cmunext", spatial_dims=(2,), size_divisor=16, onnxruntime_faster=True,
    description="CMUNeXt: large-kernel depthwise convolutional U-Net with skip fusion (2D)",
)
class CMUNeXt(nn.Module):
    """CMUNeXt: (N, in_channels, H, W) -> logits (N, num_classes, H, W).

    H and W must be multiples of 16. ``dims``, ``depths`` and ``kernels`` give the
    width, repeat count and depthwise kernel size of the five encoder stages
    (kernels must be odd).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, spatial_dims: int = 2, *,
                 dims: Sequence[int] = (16, 32, 128, 160, 256),
                 depths: Sequence[int] = (1, 1, 1, 3, 1),
                 kernels: Sequence[int] = (3, 3, 7, 7, 7)):
        super().__init__()
        if spatial_dims != 2:
            raise InputError(f"CMUNeXt is 2D only (spatial_dims 2), got {spatial_dims}")
        if in_channels < 1 or num_classes < 1:
            raise InputError(f"CMUNeXt needs in_channels >= 1 and num_classes >= 1, got {in_channels}, {num_classes}")
        dims, depths, kernels = ([int(v) for v in seq] for seq in (dims, depths, kernels))
        for name, values in (("dims", dims), ("depths", depths), ("kernels", kernels)):
            if len(values) != 5 or min(values) < 1:
                raise InputError(f"CMUNeXt {name} must be 5 positive integers, got {values}")
        if any(k % 2 == 0 for k in kernels):
            raise InputError(f"CMUNeXt kernels must be odd, got {kernels}")

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.spatial_dims = 2
        sd = 2
        self.stem = stem_conv(sd, in_channels, dims[0])
        widths = [dims[0], *dims]
        self.encoders = nn.ModuleList(
            CMUNeXtBlock(sd, widths[i], widths[i + 1], depths[i], kernels[i]) for i in range(5)
        )
        self.pool = layers.max_pool(sd, 2)
        # decoders[i] brings dims[i + 1] up to dims[i] and fuses with encoder i's output.
        self.decoders = nn.ModuleList(
            Decoder(UpConv(sd, dims[i + 1], dims[i]), SkipFusion(sd, 2 * dims[i], dims[i])) for i in range(4)
        )
        self.head = layers.conv(sd, dims[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers.check_input(x, self.in_channels, 2, 16, "CMUNeXt")
        features = [self.encoders[0](self.stem(x))]
        for encoder in self.encoders[1:]:
            features.append(encoder(self.pool(features[-1])))
        out = features.pop()
        for decoder in reversed(self.decoders):
            out = decoder(out, features.pop())
        return self.head(out)


register_model("cmunext", "cmunext", description="CMUNeXt 2D (ISBI'24 default)",
               in_channels=3, num_classes=1, spatial_dims=2)
