"""Training and fine-tuning engine (installed as ``napari_lgms.training``).

Import is cheap (no torch until a function runs):

* :func:`train` / :func:`train_steps` with a :class:`TrainConfig` (or a dict);
* :func:`finetune` / :func:`finetune_steps` from a corrections store or folders;
* :func:`review_items` / :func:`accept_review`: the user's blind A/B review of a run's new model.
"""
from __future__ import annotations

_LAZY = {
    "TrainConfig": "napari_lgms.training.config",
    "TrainProgress": "napari_lgms.training.engine",
    "TrainResult": "napari_lgms.training.engine",
    "train": "napari_lgms.training.engine",
    "train_steps": "napari_lgms.training.engine",
    "finetune": "napari_lgms.training.finetuning",
    "finetune_steps": "napari_lgms.training.finetuning",
    "FinetuneResult": "napari_lgms.training.finetuning",
    "review_items": "napari_lgms.training.review",
    "review_items_steps": "napari_lgms.training.review",
    "accept_review": "napari_lgms.training.review",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_lgms.training' has no attribute {name!r}")


__all__ = sorted(_LAZY)
