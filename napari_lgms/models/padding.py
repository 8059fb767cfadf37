"""Pad inputs to a network's size divisor and crop the output back."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, divisor: int, mode: str = "reflect") -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad the spatial axes of ``x`` (N, C, *spatial) at the far end to multiples of ``divisor``.

    Returns the padded tensor and the original spatial shape. Reflect padding
    falls back to replicate where an axis is too short to reflect.
    """
    spatial = tuple(x.shape[2:])
    extra = [(-s) % divisor for s in spatial]
    if not any(extra):
        return x, spatial
    pad: list[int] = []
    for e in reversed(extra):
        pad += [0, e]
    if mode == "reflect" and any(e >= s for e, s in zip(extra, spatial)):
        mode = "replicate"
    return F.pad(x, pad, mode=mode), spatial


def crop_to(x: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """Crop the spatial axes of ``x`` (N, C, *spatial) back to ``spatial``."""
    index = (slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)
    return x[index]


def padded_forward(model: nn.Module, x: torch.Tensor, divisor: int | None = None) -> torch.Tensor:
    """Run ``model`` on ``x`` of any spatial size: logits of shape (N, classes, *x.shape[2:]).

    Pads to ``divisor`` (default: the model's ``size_divisor``).
    """
    divisor = int(divisor or getattr(model, "size_divisor", 1))
    padded, spatial = pad_to_multiple(x, divisor)
    return crop_to(model(padded), spatial)
