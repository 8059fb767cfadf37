"""UNeXt (MICCAI'22): a convolutional encoder, tokenized shifted-MLP stages, additive skips.

Written from the reference code (jeya-maria-jose/UNeXt-pytorch). The default network
(3 input channels, 1 class, channels 16/32, embed_dims 128/160/256) has
1,471,921 parameters, as the reference does; UNeXt-S is
``channels=(8, 16), embed_dims=(32, 64, 128)`` (253,561).

Two deliberate departures from the official code, both documented bugs:

* the first convolution honours ``in_channels`` (the official one is
  hard-coded to 3); 1 input channel therefore has 288 fewer parameters;
* the second shift inside the shifted MLP reshapes the *hidden* activations
  with the hidden width, so ``mlp_ratio`` other than 1 works (the official
  code reshapes with the input width and crashes). With ``mlp_ratio=1``
  (the default) nothing changes.

Initialisation as in the reference: inside shifted-MLP blocks and patch
embeddings, Linear weights are truncated-normal (std 0.02) with zero bias,
LayerNorms are 1/0 and convolutions are normal with
std = sqrt(2 / (k*k*c_out/groups)) and zero bias; every other layer keeps the
PyTorch default. 2D only; inputs must be multiples of 32.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from napari_lgms.errors import InputError
from napari_lgms.models import layers
from napari_lgms.models.registry import register_architecture, register_model

SIZE_DIVISOR = 32
SHIFT_GROUPS = 5  # chunks shifted by -2, -1, 0, 1, 2 pixels


def _init_token_layers(module: nn.Module) -> None:
    """The reference ``_init_weights`` of shifted-MLP blocks and patch embeddings."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def tokens_to_image(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, H*W, C) -> (N, C, H, W)."""
    n, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(n, c, height, width)


def image_to_tokens(image: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W, C)."""
    return image.flatten(2).transpose(1, 2)


def shift_channel_groups(image: torch.Tensor, dim: int) -> torch.Tensor:
    """Zero-filled shift of 5 channel chunks by -2..2 pixels along ``dim`` (2 = H, 3 = W).

    Same result as the reference's pad-by-2 / ``torch.roll`` / crop; chunk sizes
    follow ``torch.chunk`` (for C = 256: 52, 52, 52, 52, 48). (N, C, H, W) -> same.
    """
    reach = SHIFT_GROUPS // 2
    size = image.shape[dim]
    pad = [0, 0, 0, 0]
    pad[(3 - dim) * 2: (3 - dim) * 2 + 2] = [reach, reach]  # F.pad lists the last axis first
    shifted = []
    for chunk, shift in zip(torch.chunk(image, SHIFT_GROUPS, dim=1), range(-reach, reach + 1)):
        padded = F.pad(chunk, pad)
        shifted.append(padded.narrow(dim, reach - shift, size))
    return torch.cat(shifted, dim=1)


class ShiftedMLP(nn.Module):
    """Shift along H, Linear, depthwise 3x3, GELU, shift along W, Linear.

    Tokens (N, H*W, C) -> (N, H*W, C); hidden width ``C * mlp_ratio``.
    """

    def __init__(self, dim: int, mlp_ratio: float = 1.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        if hidden < 1:
            raise InputError(f"mlp_ratio must give at least 1 hidden channel, got {mlp_ratio}")
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = layers.conv(2, hidden, hidden, 3, groups=hidden, bias=True)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = shift_channel_groups(tokens_to_image(tokens, height, width), dim=2)
        x = self.fc1(image_to_tokens(x))
        x = self.act(self.dwconv(tokens_to_image(x, height, width)))
        x = shift_channel_groups(x, dim=3)
        return self.fc2(image_to_tokens(x))


class ShiftedBlock(nn.Module):
    """Tokens + ShiftedMLP(LayerNorm(tokens)): (N, H*W, C) -> (N, H*W, C)."""

    def __init__(self, dim: int, mlp_ratio: float = 1.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = ShiftedMLP(dim, mlp_ratio)
        self.apply(_init_token_layers)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return tokens + self.mlp(self.norm(tokens), height, width)


class OverlapPatchEmbed(nn.Module):
    """Stride-2 3x3 convolution, then LayerNorm over tokens.

    (N, c_in, H, W) -> tokens (N, H/2*W/2, c_out), H/2, W/2.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.proj = layers.conv(2, c_in, c_out, 3, stride=2, padding=1, bias=True)
        self.norm = nn.LayerNorm(c_out)
        self.apply(_init_token_layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[2:]
        return self.norm(image_to_tokens(x)), height, width


class TokenStage(nn.Module):
    """One shifted-MLP block then LayerNorm, on an image: (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, dim: int, mlp_ratio: float = 1.0):
        super().__init__()
        self.block = ShiftedBlock(dim, mlp_ratio)
        self.norm = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[2:]
        tokens = self.norm(self.block(image_to_tokens(image), height, width))
        return tokens_to_image(tokens, height, width)


class TokenEncoderStage(nn.Module):
    """Patch embedding, shifted-MLP block, LayerNorm: (N, c_in, H, W) -> (N, c_out, H/2, W/2)."""

    def __init__(self, c_in: int, c_out: int, mlp_ratio: float = 1.0):
        super().__init__()
        self.embed = OverlapPatchEmbed(c_in, c_out)
        self.block = ShiftedBlock(c_out, mlp_ratio)
        self.norm = nn.LayerNorm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, height, width = self.embed(x)
        tokens = self.norm(self.block(tokens, height, width))
        return tokens_to_image(tokens, height, width)


class ConvEncoderStage(nn.Module):
    """3x3 conv with bias, BN, 2x2 max-pool, ReLU: (N, c_in, H, W) -> (N, c_out, H/2, W/2)."""

    norm_follows_conv = True  # forward applies self.norm to self.conv's output first (BN can be folded)

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = layers.conv(2, c_in, c_out, 3, bias=True)
        self.norm = layers.batch_norm(2, c_out)
        self.pool = layers.max_pool(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pool(self.norm(self.conv(x))))


class UpStage(nn.Module):
    """3x3 conv with bias, BN (optional), bilinear 2x upsampling, ReLU.

    (N, c_in, H, W) -> (N, c_out, 2H, 2W); the caller adds the skip.
    """

    norm_follows_conv = True  # forward applies self.norm to self.conv's output first (BN can be folded)

    def __init__(self, c_in: int, c_out: int, batch_norm: bool = True):
        super().__init__()
        self.conv = layers.conv(2, c_in, c_out, 3, bias=True)
        self.norm = layers.batch_norm(2, c_out) if batch_norm else nn.Identity()
        self.upsample = layers.Upsample(2, 2, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.upsample(self.norm(self.conv(x))))


@register_architecture("unext", spatial_dims=(2,), size_divisor=SIZE_DIVISOR, onnxruntime_faster=True,
                       description="UNeXt (MICCAI'22): conv encoder + shifted-MLP tokens, 1.47 M parameters")
class UNeXt(nn.Module):
    """UNeXt: (N, in_channels, H, W) -> logits (N, num_classes, H, W); H, W multiples of 32."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1, spatial_dims: int = 2, *,
                 channels: tuple[int, int] = (16, 32), embed_dims: tuple[int, int, int] = (128, 160, 256),
                 mlp_ratio: float = 1.0):
        super().__init__()
        if spatial_dims != 2:
            raise InputError(f"UNeXt is 2D only, got spatial_dims={spatial_dims}")
        if in_channels < 1 or num_classes < 1:
            raise InputError(f"in_channels and num_classes must be >= 1, got {in_channels} and {num_classes}")
        if len(channels) != 2 or len(embed_dims) != 3:
            raise InputError(f"UNeXt takes 2 channels and 3 embed_dims, got {channels} and {embed_dims}")
        c1, c2 = (int(c) for c in channels)
        e1, e2, e3 = (int(e) for e in embed_dims)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.spatial_dims = 2
        self.encoder1 = ConvEncoderStage(in_channels, c1)  # t1: H/2
        self.encoder2 = ConvEncoderStage(c1, c2)           # t2: H/4
        self.encoder3 = ConvEncoderStage(c2, e1)           # t3: H/8
        self.encoder4 = TokenEncoderStage(e1, e2, mlp_ratio)  # t4: H/16
        self.bottleneck = TokenEncoderStage(e2, e3, mlp_ratio)  # H/32
        self.up4 = UpStage(e3, e2)
        self.refine4 = TokenStage(e2, mlp_ratio)
        self.up3 = UpStage(e2, e1)
        self.refine3 = TokenStage(e1, mlp_ratio)
        self.up2 = UpStage(e1, c2)
        self.up1 = UpStage(c2, c1)
        self.up0 = UpStage(c1, c1, batch_norm=False)
        self.head = layers.conv(2, c1, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers.check_input(x, self.in_channels, 2, SIZE_DIVISOR, "UNeXt")
        t1 = self.encoder1(x)
        t2 = self.encoder2(t1)
        t3 = self.encoder3(t2)
        t4 = self.encoder4(t3)
        out = self.bottleneck(t4)
        out = self.refine4(self.up4(out) + t4)
        out = self.refine3(self.up3(out) + t3)
        out = self.up2(out) + t2
        out = self.up1(out) + t1
        return self.head(self.up0(out))


register_model("unext", "unext", description="UNeXt 2D, RGB input, 1 class (the official default)",
               in_channels=3, num_classes=1, spatial_dims=2)
