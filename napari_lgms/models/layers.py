"""Dimension-generic layer factories: one network implementation serves 2D and 3D.

Every network takes ``spatial_dims`` (2 or 3) and builds its layers through
these helpers, as MONAI's ``basic_unet`` does, instead of naming Conv2d/Conv3d.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from napari_lgms.errors import InputError
from napari_lgms.models.layout import channels_last_input

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BATCH_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCE_NORM = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_MAX_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVG_POOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


def _check(spatial_dims: int) -> int:
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return spatial_dims


def conv(spatial_dims: int, c_in: int, c_out: int, kernel_size: int = 3, *, stride: int = 1,
         padding: int | None = None, groups: int = 1, bias: bool = True) -> nn.Module:
    """A cubic-kernel convolution; ``padding`` defaults to "same" for odd kernels."""
    if padding is None:
        padding = kernel_size // 2
    return _CONV[_check(spatial_dims)](c_in, c_out, kernel_size, stride=stride, padding=padding,
                                       groups=groups, bias=bias)


class _LayoutChoice:
    """A depthwise convolution that can run on a channels-last copy of its input (``channels_last``,
    set by :mod:`napari_lgms.models.layout` where it pays) and returns a standard-layout tensor;
    a plain Conv2d/Conv3d otherwise, with the same parameter names."""

    channels_last = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.channels_last:
            return super().forward(x)
        return super().forward(channels_last_input(x)).contiguous()


class DepthwiseConv2d(_LayoutChoice, nn.Conv2d):
    pass


class DepthwiseConv3d(_LayoutChoice, nn.Conv3d):
    pass


def depthwise_conv(spatial_dims: int, channels: int, kernel_size: int, *, bias: bool = True) -> nn.Module:
    """A depthwise ``kernel_size`` convolution, "same" padding: (N, C, *S) -> (N, C, *S)."""
    kind = {2: DepthwiseConv2d, 3: DepthwiseConv3d}[_check(spatial_dims)]
    return kind(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=bias)


def conv_transpose(spatial_dims: int, c_in: int, c_out: int, kernel_size: int = 2, *, stride: int = 2,
                   padding: int = 0, output_padding: int = 0, bias: bool = True) -> nn.Module:
    return _CONV_T[_check(spatial_dims)](c_in, c_out, kernel_size, stride=stride, padding=padding,
                                         output_padding=output_padding, bias=bias)


def batch_norm(spatial_dims: int, channels: int, **kwargs) -> nn.Module:
    return _BATCH_NORM[_check(spatial_dims)](channels, **kwargs)


def instance_norm(spatial_dims: int, channels: int, **kwargs) -> nn.Module:
    """InstanceNorm with PyTorch defaults (no affine parameters, no running stats)."""
    return _INSTANCE_NORM[_check(spatial_dims)](channels, **kwargs)


def max_pool(spatial_dims: int, kernel_size: int = 2, stride: int | None = None) -> nn.Module:
    return _MAX_POOL[_check(spatial_dims)](kernel_size, stride)


def avg_pool(spatial_dims: int, kernel_size: int = 2, stride: int | None = None, padding: int = 0,
             **kwargs) -> nn.Module:
    return _AVG_POOL[_check(spatial_dims)](kernel_size, stride, padding, **kwargs)


def linear_upsample_mode(spatial_dims: int) -> str:
    """"bilinear" in 2D, "trilinear" in 3D."""
    return {1: "linear", 2: "bilinear", 3: "trilinear"}[_check(spatial_dims)]


class Upsample(nn.Module):
    """Scale-factor upsampling; ``mode="linear"`` picks bi-/trilinear by dimension."""

    def __init__(self, spatial_dims: int, scale_factor: int = 2, mode: str = "linear",
                 align_corners: bool | None = False):
        super().__init__()
        self.scale_factor = scale_factor
        self.mode = linear_upsample_mode(spatial_dims) if mode == "linear" else mode
        self.align_corners = align_corners if self.mode not in ("nearest",) else None

    def forward(self, x):
        return F.interpolate(x, scale_factor=self.scale_factor, mode=self.mode,
                             align_corners=self.align_corners)


def check_input(x: torch.Tensor, in_channels: int, spatial_dims: int, divisor: int, network: str) -> None:
    """Raise :class:`InputError` unless ``x`` is (N, in_channels, *spatial), each size a multiple of ``divisor``."""
    if x.dim() != spatial_dims + 2 or x.shape[1] != in_channels:
        axes = ", ".join("DHW"[3 - spatial_dims:])
        raise InputError(f"{network} ({spatial_dims}D) takes a (N, {in_channels}, {axes}) tensor, "
                         f"got shape {tuple(x.shape)}")
    spatial = tuple(x.shape[2:])
    if any(s % divisor for s in spatial):
        raise InputError(f"{network} needs every spatial size to be a multiple of {divisor}, got {spatial}; "
                         "pad the input (see napari_lgms.models.padding.padded_forward)")
