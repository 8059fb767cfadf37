"""ESDMR-Net, reconstructed: an APPROXIMATION, not a reproduction of the paper.

ESDMR-Net (Khan, Naqvi, Meijering; arXiv 2312.10585) has no official code and
only the abstract of the paper could be read. This module implements the
best-effort reconstruction from that abstract, for 2D and 3D from one code
path (``spatial_dims``). What the abstract fixes, and is kept:

* fully convolutional encoder-decoder for resource-constrained hardware;
* Expand-Squeeze (ES) blocks: a depthwise separable *expansion* feeding a
  *squeeze* bottleneck, giving multiscale features;
* Dual Multiscale Residual (DMR) blocks placed in the skip connections;
* about 0.7 M parameters (a figure only from an unofficial re-implementation).

Network, 2D shapes (3D adds a leading D axis everywhere)::

    stem    3x3 conv + BN + ReLU, ES                      (N, w1, H, W)      -> skip 1
    enc k   2x2 max-pool, separable 3x3 + BN + ReLU, ES   (N, wk, H/2^(k-1)) -> skip k   (k = 2..4)
    bottom  2x2 max-pool, separable 3x3 + BN + ReLU, ES   (N, w5, H/16, W/16)
    dec k   2x up (bi/trilinear), concat [up, DMR(skip k)], 1x1 conv + BN + ReLU, ES  -> (N, wk, ...)
    head    1x1 conv with bias                             (N, num_classes, H, W)

Default widths (12, 24, 48, 80, 128): 2D, 3 input channels, 1 class ->
**721,821 parameters** (1 input channel: 721,605), 1.96 GMAC at 256 x 256
(torch FlopCounterMode). The 3D network has more parameters (970,727 for
1 channel, 3 classes) because its depthwise kernels are k^3; 30.7 GMAC at 96^3.
Inputs must be multiples of 16 along every spatial axis.

How each open ambiguity of §4 is resolved here (all **[inferred]**):

1. *Expansion factor.* "Expand" changes the channel count: the depthwise k x k
   convolution is followed by a pointwise 1x1 C -> t*C (``expansion=2``),
   BN, ReLU; the *squeeze* is a 1x1 t*C -> C bottleneck, then BN.
2. *ES kernel sizes.* Three ES branches with k = 3, 5, 7 run in parallel
   (``kernel_sizes``); their outputs are concatenated and fused by a 1x1
   convolution + BN, then added to the block input (residual) and ReLU'd.
3. *Norm/activation order.* Post-activation (conv -> BN -> ReLU), unlike the
   pre-activation ReLU of both unofficial re-implementations, so that the
   residual sums of BN outputs are rectified once, ResNet-style.
4. *DMR weight sharing.* No sharing: the DMR block is the MSRB-style two-level
   structure of re-implementation A (level 1: 3x3 and 5x5 on the input;
   level 2: 3x3 and 5x5 on the concatenated level-1 features; 1x1 fusion;
   plus a 1x1 conv + BN + ReLU shortcut), each level with its own weights. To
   fit the budget, its convolutions are depthwise separable (depthwise k x k,
   pointwise 1x1, BN) instead of full k x k convolutions; with separable
   convolutions, re-implementation A's crossed concatenation order would only
   permute weights, so both level-2 convolutions read ``[f1, f2]``.
5. *Resampling.* 2x2 max-pooling down (cheap, dimension-generic), bilinear
   (2D) / trilinear (3D) 2x upsampling with align_corners=False; no strided or
   transposed convolutions.
6. *Levels and widths.* A 4-level U-Net (four skips at H .. H/8) plus a
   bottleneck at H/16, i.e. 5 resolutions as in re-implementation A; widths
   (12, 24, 48, 80, 128) chosen to land at about 0.7 M parameters while keeping
   full-resolution work small (12 channels at H x W; (16, 32, 64, 80, 96)
   has about as many parameters but 1.5x the multiply-adds).
7. *"Dual-stream information flow within encoder-decoder pairs".* Read as two
   streams meeting at each decoder stage: the upsampled deep stream and the
   DMR-refined skip stream, concatenated. There is no second decoder.
8. *Loss, optimiser, input size, schedule.* Not part of the network; the
   plugin's training recipe applies (BCE+Dice etc.).
9. *Datasets and scores.* Unknown; no claim is made that this network matches
   the paper's numbers.

Other choices: convolutions feeding BN have no bias; convolution weights use
Kaiming-normal (fan_out, ReLU) initialisation as re-implementation A does;
BN uses PyTorch defaults.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from napari_lgms.errors import InputError
from napari_lgms.models import layers
from napari_lgms.models.registry import register_architecture, register_model

SIZE_DIVISOR = 16
DEFAULT_WIDTHS = (12, 24, 48, 80, 128)


class DepthwiseConv(nn.Module):
    """Depthwise k x k convolution without bias: (N, C, *S) -> (N, C, *S).

    :func:`layers.depthwise_conv` (whose layout :mod:`napari_lgms.models.layout` switches) inside a
    container, so that the shipped weights keep their names (``....conv.weight``).
    """

    def __init__(self, spatial_dims: int, channels: int, kernel_size: int):
        super().__init__()
        self.conv = layers.depthwise_conv(spatial_dims, channels, kernel_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SeparableConvBN(nn.Sequential):
    """Depthwise k x k, pointwise 1x1 (both without bias), BN: (N, c_in, *S) -> (N, c_out, *S)."""

    def __init__(self, spatial_dims: int, c_in: int, c_out: int, kernel_size: int = 3):
        super().__init__(
            DepthwiseConv(spatial_dims, c_in, kernel_size),
            layers.conv(spatial_dims, c_in, c_out, 1, bias=False),
            layers.batch_norm(spatial_dims, c_out),
        )


class ConvBNReLU(nn.Sequential):
    """k x k conv without bias, BN, ReLU: (N, c_in, *S) -> (N, c_out, *S)."""

    def __init__(self, spatial_dims: int, c_in: int, c_out: int, kernel_size: int = 1):
        super().__init__(
            layers.conv(spatial_dims, c_in, c_out, kernel_size, bias=False),
            layers.batch_norm(spatial_dims, c_out),
            nn.ReLU(inplace=True),
        )


class ExpandSqueeze(nn.Sequential):
    """One ES branch: depthwise k x k, 1x1 expand C -> t*C, BN, ReLU, 1x1 squeeze -> C, BN.

    (N, C, *S) -> (N, C, *S). Parameters: k^d*C + 2*t*C^2 + 2*t*C + 2*C.
    """

    def __init__(self, spatial_dims: int, channels: int, kernel_size: int, expansion: int = 2):
        hidden = channels * expansion
        super().__init__(
            DepthwiseConv(spatial_dims, channels, kernel_size),
            layers.conv(spatial_dims, channels, hidden, 1, bias=False),
            layers.batch_norm(spatial_dims, hidden),
            nn.ReLU(inplace=True),
            layers.conv(spatial_dims, hidden, channels, 1, bias=False),
            layers.batch_norm(spatial_dims, channels),
        )


class ESBlock(nn.Module):
    """Parallel ES branches (k = 3, 5, 7) fused by 1x1 conv + BN, plus residual, ReLU.

    (N, C, *S) -> (N, C, *S).
    """

    def __init__(self, spatial_dims: int, channels: int, kernel_sizes: tuple[int, ...] = (3, 5, 7),
                 expansion: int = 2):
        super().__init__()
        self.branches = nn.ModuleList(
            ExpandSqueeze(spatial_dims, channels, k, expansion) for k in kernel_sizes
        )
        self.fuse = nn.Sequential(
            layers.conv(spatial_dims, channels * len(kernel_sizes), channels, 1, bias=False),
            layers.batch_norm(spatial_dims, channels),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))
        return self.act(x + fused)


class DMRBlock(nn.Module):
    """Dual multiscale residual block for a skip connection: (N, C, *S) -> (N, C, *S).

    f1 = sep3(x), f2 = sep5(x); f3 = ReLU(sep3([f1, f2])), f4 = ReLU(sep5([f1, f2]));
    out = 1x1([f4, f3]) + ReLU(BN(1x1(x))). ``sep`` is depthwise separable + BN.
    """

    def __init__(self, spatial_dims: int, channels: int):
        super().__init__()
        d, c = spatial_dims, channels
        self.small1 = SeparableConvBN(d, c, c, 3)
        self.large1 = SeparableConvBN(d, c, c, 5)
        self.small2 = SeparableConvBN(d, 2 * c, c, 3)
        self.large2 = SeparableConvBN(d, 2 * c, c, 5)
        self.fuse = layers.conv(d, 2 * c, c, 1, bias=False)
        self.shortcut = ConvBNReLU(d, c, c, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level1 = torch.cat([self.small1(x), self.large1(x)], dim=1)
        f3 = self.act(self.small2(level1))
        f4 = self.act(self.large2(level1))
        return self.fuse(torch.cat([f4, f3], dim=1)) + self.shortcut(x)


class ESDown(nn.Module):
    """2x2 max-pool, separable 3x3 + BN + ReLU, ES block: (N, c_in, *S) -> (N, c_out, *S/2)."""

    def __init__(self, spatial_dims: int, c_in: int, c_out: int, kernel_sizes, expansion: int):
        super().__init__()
        self.pool = layers.max_pool(spatial_dims, 2)
        self.project = SeparableConvBN(spatial_dims, c_in, c_out, 3)
        self.act = nn.ReLU(inplace=True)
        self.block = ESBlock(spatial_dims, c_out, kernel_sizes, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.act(self.project(self.pool(x))))


class ESUp(nn.Module):
    """2x upsampling, concat [up, DMR(skip)], 1x1 conv + BN + ReLU, ES block.

    (N, c_deep, *S/2), (N, c_skip, *S) -> (N, c_skip, *S).
    """

    def __init__(self, spatial_dims: int, c_deep: int, c_skip: int, kernel_sizes, expansion: int):
        super().__init__()
        self.upsample = layers.Upsample(spatial_dims, 2, mode="linear", align_corners=False)
        self.refine_skip = DMRBlock(spatial_dims, c_skip)
        self.merge = ConvBNReLU(spatial_dims, c_deep + c_skip, c_skip, 1)
        self.block = ESBlock(spatial_dims, c_skip, kernel_sizes, expansion)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        merged = self.merge(torch.cat([self.upsample(deep), self.refine_skip(skip)], dim=1))
        return self.block(merged)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Conv3d)):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@register_architecture("esdmrnet", spatial_dims=(2, 3), size_divisor=SIZE_DIVISOR, onnxruntime_faster=True,
                       description="ESDMR-Net (approximate reconstruction): ES blocks + DMR skips, ~0.7 M parameters")
class ESDMRNet(nn.Module):
    """ESDMR-Net approximation: (N, in_channels, *S) -> logits (N, num_classes, *S).

    S is (H, W) or (D, H, W), every size a multiple of 16. See the module
    docstring for how each ambiguity of the paper is resolved.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, spatial_dims: int = 2, *,
                 widths: tuple[int, ...] = DEFAULT_WIDTHS, kernel_sizes: tuple[int, ...] = (3, 5, 7),
                 expansion: int = 2):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise InputError(f"ESDMR-Net supports spatial_dims 2 or 3, got {spatial_dims}")
        if in_channels < 1 or num_classes < 1:
            raise InputError(f"in_channels and num_classes must be >= 1, got {in_channels} and {num_classes}")
        widths = tuple(int(w) for w in widths)
        kernel_sizes = tuple(int(k) for k in kernel_sizes)
        if len(widths) != 5 or min(widths) < 1:
            raise InputError(f"ESDMR-Net takes 5 positive widths (4 levels + bottleneck), got {widths}")
        if not kernel_sizes or any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise InputError(f"ES kernel sizes must be odd and positive, got {kernel_sizes}")
        if expansion < 1:
            raise InputError(f"expansion must be >= 1, got {expansion}")
        d = spatial_dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.spatial_dims = d
        self.stem = nn.Sequential(
            ConvBNReLU(d, in_channels, widths[0], 3),
            ESBlock(d, widths[0], kernel_sizes, expansion),
        )
        self.encoders = nn.ModuleList(
            ESDown(d, c_in, c_out, kernel_sizes, expansion) for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        self.decoders = nn.ModuleList(
            ESUp(d, c_deep, c_skip, kernel_sizes, expansion)
            for c_deep, c_skip in zip(widths[:0:-1], widths[-2::-1])
        )
        self.head = layers.conv(d, widths[0], num_classes, 1, bias=True)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers.check_input(x, self.in_channels, self.spatial_dims, SIZE_DIVISOR, "ESDMR-Net")
        skips = [self.stem(x)]
        for encoder in self.encoders:
            skips.append(encoder(skips[-1]))
        x = skips.pop()
        for decoder, skip in zip(self.decoders, reversed(skips)):
            x = decoder(x, skip)
        return self.head(x)


register_model("esdmrnet", "esdmrnet",
               description="ESDMR-Net 2D (approximate reconstruction, ~0.7 M parameters), RGB input, 1 class",
               in_channels=3, num_classes=1, spatial_dims=2)
register_model("esdmrnet3d", "esdmrnet",
               description="ESDMR-Net 3D (approximate reconstruction), 1 input channel, 3 classes",
               in_channels=1, num_classes=3, spatial_dims=3)
