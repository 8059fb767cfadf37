"""Training checkpoints: everything needed to resume exactly, written atomically.

A checkpoint holds the network, optimiser, scheduler and grad-scaler states,
the RNG states (python, numpy, torch CPU and CUDA), the epoch just finished,
the global step, the best validation value with its weights and epoch, the
early-stopping counter and the history of logged epochs. It is a plain
``torch.save`` dict of tensors and builtins, loaded with ``weights_only=True``.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np

from napari_lgms._atomic import atomic_write_with
from napari_lgms.errors import InputError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 1


def rng_states() -> dict[str, Any]:
    import torch

    numpy_state = np.random.get_state()
    states = {
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
        "numpy": {"keys": torch.from_numpy(numpy_state[1].astype(np.int64)), "pos": int(numpy_state[2]),
                  "has_gauss": int(numpy_state[3]), "gauss": float(numpy_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus format and RNG states) atomically to ``path``."""
    import torch

    payload = {"format": FORMAT, "rng": rng_states(), **state}
    atomic_write_with(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no checkpoint to resume from (train without --resume first)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or foreign file
        raise InputError(f"{path}: not a readable training checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path}: not a napari-lgms training checkpoint (format {FORMAT})")
    return state
