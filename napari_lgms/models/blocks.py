"""Building blocks shared by CMUNeXt and LGMSNet, for 2D and 3D.

Every block takes ``spatial_dims`` (2 or 3) and, where the reference networks
differ between 2D and 3D, a ``norm`` choice: ``"batch"`` (BatchNorm, the 2D
networks) or ``"instance"`` (InstanceNorm without affine parameters, LGMSNet 3D).

Shapes are written for 2D, (N, C, H, W); in 3D read (N, C, D, H, W).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from napari_lgms.errors import InputError
from napari_lgms.models import layers

NORMS = ("batch", "instance")

_ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
    "gelu": nn.GELU,  # exact erf form, as in the reference networks
}


def make_norm(norm: str, spatial_dims: int, channels: int) -> nn.Module:
    """A BatchNorm or a parameter-free InstanceNorm over ``channels``."""
    if norm == "batch":
        return layers.batch_norm(spatial_dims, channels)
    if norm == "instance":
        return layers.instance_norm(spatial_dims, channels)
    raise InputError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")


def make_activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise InputError(f"activation must be one of {', '.join(_ACTIVATIONS)}, got {name!r}") from None


class ConvNormAct(nn.Sequential):
    """Convolution, normalisation, activation: (N, c_in, H, W) -> (N, c_out, H, W).

    The default (no bias, SiLU) is the reference ``ConvBNSiLU`` helper of the
    LMS and GMS blocks; ``bias=True, act="relu"`` is the stem ``conv_block``.
    """

    def __init__(self, spatial_dims: int, c_in: int, c_out: int, kernel_size: int = 3, *,
                 norm: str = "batch", act: str = "silu", bias: bool = False, groups: int = 1):
        super().__init__(
            layers.conv(spatial_dims, c_in, c_out, kernel_size, groups=groups, bias=bias),
            make_norm(norm, spatial_dims, c_out),
            make_activation(act),
        )


class ConvActNorm(nn.Sequential):
    """Convolution with bias, activation, then normalisation (CMUNeXt's order).

    (N, c_in, H, W) -> (N, c_out, H, W).
    """

    def __init__(self, spatial_dims: int, c_in: int, c_out: int, kernel_size: int = 1, *,
                 norm: str = "batch", act: str = "gelu", groups: int = 1):
        super().__init__(
            layers.conv(spatial_dims, c_in, c_out, kernel_size, groups=groups, bias=True),
            make_activation(act),
            make_norm(norm, spatial_dims, c_out),
        )


def stem_conv(spatial_dims: int, c_in: int, c_out: int, *, norm: str = "batch") -> ConvNormAct:
    """The reference ``conv_block``: 3x3 conv with bias, norm, ReLU. (N, c_in, H, W) -> (N, c_out, H, W)."""
    return ConvNormAct(spatial_dims, c_in, c_out, 3, norm=norm, act="relu", bias=True)


class UpConv(nn.Sequential):
    """2x linear upsampling then a stem conv: (N, c_in, H, W) -> (N, c_out, 2H, 2W).

    Bilinear in 2D, trilinear in 3D, ``align_corners=False``.
    """

    def __init__(self, spatial_dims: int, c_in: int, c_out: int, *, norm: str = "batch"):
        super().__init__(
            layers.Upsample(spatial_dims, scale_factor=2, mode="linear"),
            stem_conv(spatial_dims, c_in, c_out, norm=norm),
        )


class SkipFusion(nn.Sequential):
    """CMUNeXt's skip-fusion block on concatenated [skip, decoder] features.

    A 3x3 grouped conv (2 groups, c_in -> c_in), a 1x1 conv c_in -> 4*c_out and a
    1x1 conv 4*c_out -> c_out, each with bias and followed by GELU then norm.
    (N, c_in, H, W) -> (N, c_out, H, W); ``c_in`` must be even.
    """

    def __init__(self, spatial_dims: int, c_in: int, c_out: int, *, norm: str = "batch"):
        if c_in % 2:
            raise InputError(f"skip fusion needs an even number of input channels, got {c_in}")
        super().__init__(
            ConvActNorm(spatial_dims, c_in, c_in, 3, norm=norm, groups=2),
            ConvActNorm(spatial_dims, c_in, 4 * c_out, 1, norm=norm),
            ConvActNorm(spatial_dims, 4 * c_out, c_out, 1, norm=norm),
        )


class Decoder(nn.Module):
    """One decoder step: upsample the deep feature, concatenate [skip, up], fuse.

    ``up``: (N, c_deep, H/2, W/2) -> (N, c_up, H, W); ``fuse``: takes the
    concatenation (N, c_skip + c_up, H, W) to the stage output.
    """

    def __init__(self, up: nn.Module, fuse: nn.Module):
        super().__init__()
        self.up = up
        self.fuse = fuse

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat((skip, self.up(deep)), dim=1))
