"""Where the networks' depthwise convolutions run on a channels-last copy of their input.

A performance choice that belongs to the callers (the training loops and the inference engine),
not to the networks: PyTorch's CPU backward pass for depthwise 5x5 and 7x7 kernels is about 5x (2D)
to 20x (3D) slower on the standard layout, and the 3D forward pass is faster channels-last too,
while 2D inference is faster on the standard layout. ONNX export needs the standard layout.
"""
from __future__ import annotations

import torch

_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}  # by tensor rank


def set_depthwise_layout(network: torch.nn.Module, channels_last: bool) -> int:
    """Switch every module with a ``channels_last`` flag (the depthwise convolutions); returns how many."""
    switched = 0
    for module in network.modules():
        if hasattr(module, "channels_last"):
            module.channels_last = bool(channels_last)
            switched += 1
    return switched


def prefer_channels_last(device, *, training: bool, spatial_dims: int) -> bool:
    """The measured choice: channels-last on the CPU while training, and for 3D inference."""
    return torch.device(device).type == "cpu" and (training or spatial_dims == 3)


def use_layout_for(network: torch.nn.Module, device, *, training: bool) -> int:
    """:func:`set_depthwise_layout` as :func:`prefer_channels_last` says for ``network`` on ``device``."""
    arguments = getattr(network, "arguments", None) or {}
    dims = int(arguments.get("spatial_dims", 2))
    return set_depthwise_layout(network, prefer_channels_last(device, training=training, spatial_dims=dims))


def channels_last_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, *S), 2D or 3D, as a channels-last tensor."""
    return x.contiguous(memory_format=_CHANNELS_LAST[x.ndim])
