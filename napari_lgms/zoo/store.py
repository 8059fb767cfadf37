"""Save and load models: safetensors weights plus a JSON model card.

A model ``NAME`` is two files side by side: ``NAME.safetensors`` and
``NAME.json``. The card records the sha256 of the weights file; loading
recomputes it and refuses a mismatch. Nothing is ever unpickled: legacy
``.pt`` state dicts go through ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from napari_lgms.errors import LgmsError
from napari_lgms._atomic import atomic_write_text, atomic_write_with
from napari_lgms.zoo.card import ModelCard


class ModelLoadError(LgmsError, ValueError):
    """A model file could not be loaded; the message says why and what is accepted."""


@dataclass
class LoadedModel:
    """A ready network (eval mode, on its device) with its card and where it came from."""

    network: "object"  # torch.nn.Module; typed loosely to keep torch out of import time
    card: ModelCard
    path: Path | None
    origin: str  # "shipped" | "user" | "path" | "untrained"


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def card_path_for(weights: Path) -> Path:
    return weights.with_suffix(".json")


def save_model(network, card: ModelCard, directory: str | Path, *, half: bool = False) -> Path:
    """Write ``card.name``.safetensors and ``card.name``.json into ``directory``; return the card path.

    ``half`` stores floating tensors as float16 (loading casts back to float32).
    Both files are written atomically, weights first, so a crash leaves either
    the previous model or the new one, never a card pointing at other weights.
    """
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights_path = directory / f"{card.name}.safetensors"
    state = {}
    for key, tensor in network.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        if half and tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        state[key] = tensor
    metadata = {"architecture": card.architecture, "name": card.name}
    atomic_write_with(weights_path, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    card = replace(
        card,
        weights={
            "file": weights_path.name,
            "sha256": sha256_of(weights_path),
            "dtype": "float16" if half else "float32",
        },
        created=card.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    card_file = card_path_for(weights_path)
    atomic_write_text(card_file, card.to_json())
    return card_file


def read_card(path: str | Path) -> ModelCard:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ModelCard.from_dict(data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError, TypeError) as error:
        raise ModelLoadError(f"{path}: not a valid model card ({error})") from None


def load_network_from_card(card_file: str | Path, device="cpu", *, verify: bool = True):
    """Build the card's network and load its weights; returns (network, card)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file


    card_file = Path(card_file)
    card = read_card(card_file)
    weights_name = card.weights.get("file") or f"{card_file.stem}.safetensors"
    weights_path = card_file.parent / weights_name
    if not weights_path.is_file():
        raise ModelLoadError(f"{card_file}: weights file {weights_name} is missing beside the card")
    expected = card.weights.get("sha256")
    if verify:
        if not expected:
            raise ModelLoadError(f"{card_file}: the card has no sha256 for its weights; refusing to load")
        actual = sha256_of(weights_path)
        if actual != expected:
            raise ModelLoadError(
                f"{weights_path}: sha256 mismatch (card says {expected[:12]}..., file is {actual[:12]}...); "
                "the file is corrupt or was changed"
            )
    network = _build(card, card_file)
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelLoadError(f"{weights_path}: not a readable safetensors file ({error})") from None
    _load_state(network, state, weights_path)
    network.to(device).eval()
    return network, card


def load_legacy_state_dict(pt_path: str | Path, card: ModelCard, device="cpu"):
    """Load a legacy ``.pt`` state dict for ``card``'s architecture, safely (weights_only)."""
    import pickle

    import torch

    pt_path = Path(pt_path)
    try:
        state = torch.load(pt_path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as error:
        raise ModelLoadError(
            f"{pt_path}: not a plain tensor state dict (only weights_only=True loads are allowed: {error})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{pt_path}: expected a state dict, found {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    network = _build(card, pt_path)
    _load_state(network, state, pt_path)
    network.to(device).eval()
    return network


def _build(card: ModelCard, source: Path):
    from napari_lgms.models.registry import build_network, get_architecture

    try:
        get_architecture(card.architecture)
    except KeyError as error:
        raise ModelLoadError(f"{source}: {error.args[0]}") from None
    try:
        return build_network(card.architecture, dict(card.arguments))
    except (TypeError, ValueError, AssertionError) as error:
        raise ModelLoadError(f"{source}: bad arguments for {card.architecture}: {error}") from None


def _load_state(network, state: dict, source: Path) -> None:
    import torch

    reference = network.state_dict()
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    if missing or unexpected:
        raise ModelLoadError(
            f"{source}: weights do not fit the architecture "
            f"({len(missing)} missing, {len(unexpected)} unexpected tensors, e.g. "
            f"{(missing or unexpected)[0]})"
        )
    converted = {}
    for key, value in state.items():
        target = reference[key]
        if value.shape != target.shape:
            raise ModelLoadError(
                f"{source}: tensor {key} has shape {tuple(value.shape)}, the architecture needs {tuple(target.shape)}"
            )
        converted[key] = value.to(target.dtype) if target.is_floating_point() else value
    with torch.no_grad():
        network.load_state_dict(converted, strict=True)
