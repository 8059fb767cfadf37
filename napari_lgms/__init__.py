"""napari-lgms: lightweight medical image segmentation for napari.

Importing this package is cheap: no torch, no Qt. The Python API:

>>> from napari_lgms import load_model, segment          # doctest: +SKIP
>>> result = segment(image, load_model("lgmsnet-polyp"))  # doctest: +SKIP
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "load_model": "napari_lgms.zoo",
    "list_available_models": "napari_lgms.zoo",
    "save_model": "napari_lgms.zoo",
    "ModelCard": "napari_lgms.zoo",
    "create_model": "napari_lgms.models",
    "read_image": "napari_lgms.io",
    "write_mask": "napari_lgms.io",
    "segment": "napari_lgms.inference",
    "segment_steps": "napari_lgms.inference",
    "train": "napari_lgms.training",
    "finetune": "napari_lgms.training",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_lgms' has no attribute {name!r}")


__all__ = sorted(_LAZY) + ["__version__"]
