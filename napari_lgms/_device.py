"""Choosing the torch device: CUDA, then Apple MPS, then CPU; overridable."""
from __future__ import annotations

import os

DEVICE_ENV = "NAPARI_LGMS_DEVICE"
CHOICES = ("auto", "cpu", "cuda", "mps")


def select_device(preference: str | None = "auto"):
    """Return a ``torch.device``.

    ``preference`` is "auto", "cpu", "cuda", "cuda:N" or "mps"; "auto" honours
    ``$NAPARI_LGMS_DEVICE``, uses the CPU under CI (``$CI`` set), else the
    first available of CUDA, MPS, CPU. Asking for an absent device is an error.
    """
    import torch

    choice = (preference or "auto").lower()
    if choice == "auto":
        choice = os.environ.get(DEVICE_ENV, "auto").lower()
    if choice == "auto":
        if os.environ.get("CI"):
            return torch.device("cpu")
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    base = choice.split(":")[0]
    if base not in CHOICES:
        raise ValueError(f"unknown device {preference!r}; use one of auto, cpu, cuda, cuda:N, mps")
    if base == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
    if base == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' was asked for but Apple MPS is not available; use --device cpu or auto")
    return torch.device(choice)
