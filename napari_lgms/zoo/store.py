"""Save and load models: safetensors weights plus a JSON model card.

A model ``NAME`` is two files side by side: ``NAME.safetensors`` and
``NAME.json``. The card records the file name and sha256 of its weights;
loading recomputes the hash and refuses a mismatch. Nothing is ever
unpickled: legacy ``.pt`` state dicts go through ``torch.load(weights_only=True)``.

Saving over a model of the same name replaces the *pair* atomically: the new
weights are first written under a fresh hidden name (``.NAME.<token>.safetensors``),
then the card is switched to name them (the commit point), then they are copied
to ``NAME.safetensors`` and the card switched again. A kill at any moment
leaves a card that names existing weights with its hash: the old pair or the
new one. Hidden staged files no card names are removed when the models are
listed (:func:`remove_orphans`), once old enough not to be a save in progress.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import threading
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from napari_lgms._atomic import atomic_write_text, atomic_write_with, read_regular_file, remove_stale
from napari_lgms.errors import LgmsError
from napari_lgms.zoo.card import ModelCard
from napari_lgms.zoo.names import validate_model_name

MAX_CARD_BYTES = 4 << 20
MAX_PARAMETERS = 200_000_000  # the shipped networks have 0.5-6 M
MAX_PARAMETER_TENSORS = 4_000  # they have 80-330
LEGACY_PT_RULE = "legacy .pt files must be plain state dicts of tensors"


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


def weights_path_for(card_file: Path, card: ModelCard) -> Path:
    """The weights file a card names (checked by the schema to be a plain name), beside the card."""
    return Path(card_file).parent / (card.weights.get("file") or f"{Path(card_file).stem}.safetensors")


def staged_weights(directory: Path, name: str) -> list[Path]:
    """Hidden weights files of saves of ``name`` (in progress, or left by a killed one)."""
    return sorted(directory.glob(f".{name}.*.safetensors"))


def save_model(network, card: ModelCard, directory: str | Path, *, half: bool = False) -> Path:
    """Write ``card.name``.safetensors and ``card.name``.json into ``directory``; return the card path.

    ``half`` stores floating tensors as float16 (loading casts back to float32).
    The pair is replaced atomically (see the module docstring). The name must
    pass :func:`~napari_lgms.zoo.names.validate_model_name`.
    """
    validate_model_name(card.name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    card_file = directory / f"{card.name}.json"
    final = directory / f"{card.name}.safetensors"
    staged = directory / f".{card.name}.{secrets.token_hex(6)}.safetensors"
    state, metadata = _state_for_saving(network, card, half)
    card = replace(card, created=card.created or datetime.now(timezone.utc).isoformat(timespec="seconds"))
    try:
        atomic_write_with(staged, lambda tmp: _save_safetensors(state, tmp, metadata))
        weights = {"file": staged.name, "sha256": sha256_of(staged), "dtype": "float16" if half else "float32"}
        _write_card(card_file, card, weights)  # commit: the card names complete weights with their hash
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    atomic_write_with(final, lambda tmp: shutil.copyfile(staged, tmp))
    _write_card(card_file, card, {**weights, "file": final.name})
    staged.unlink(missing_ok=True)
    return card_file


def _state_for_saving(network, card: ModelCard, half: bool) -> tuple[dict, dict]:
    import torch

    state = {}
    for key, tensor in network.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        if half and tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        state[key] = tensor
    return state, {"architecture": card.architecture, "name": card.name}


def _save_safetensors(state: dict, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    save_file(state, str(path), metadata=metadata)


def _write_card(card_file: Path, card: ModelCard, weights: dict) -> None:
    atomic_write_text(card_file, replace(card, weights=weights).to_json())


def delete_model(card_file: str | Path) -> Path:
    """Delete the model version whose card is ``card_file``: the card first (it is no longer listed),
    then the weights it names and any staged ones; returns the card's path. Missing files are fine."""
    card_file = Path(card_file)
    weights = _named_weights(card_file) if card_file.is_file() else None
    card_file.unlink(missing_ok=True)
    names = {weights, f"{card_file.stem}.safetensors"} - {None}  # a card names a plain file name (schema)
    for path in [card_file.parent / name for name in names] + staged_weights(card_file.parent, card_file.stem):
        path.unlink(missing_ok=True)
    return card_file


def remove_orphans(directory: str | Path) -> list[Path]:
    """Delete stale staged weights no card names and stale ``.*.tmp`` files; returns those deleted."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    named = {_named_weights(card_file) for card_file in directory.glob("*.json")}
    leftovers = [p for p in directory.glob(".*.safetensors") if p.name not in named]
    return remove_stale(leftovers + list(directory.glob(".*.tmp")))


def _named_weights(card_file: Path) -> str | None:
    """The weights file name a card names, without validating the rest of it (None when unreadable)."""
    try:
        return read_card(card_file).weights.get("file")
    except ModelLoadError:
        return None


def read_card(path: str | Path) -> ModelCard:
    """Read and validate a card (see :mod:`napari_lgms.zoo.schema`); one-line ModelLoadError otherwise."""
    path = Path(path)
    try:
        data = json.loads(read_regular_file(path, MAX_CARD_BYTES).decode("utf-8"))
        return ModelCard.from_dict(data)
    except RecursionError:
        reason = "JSON nested too deeply"
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as error:
        reason = " ".join(str(error).split())[:300]
    raise ModelLoadError(f"{path}: not a valid model card ({reason})")


def load_network_from_card(card_file: str | Path, device="cpu", *, verify: bool = True):
    """Build the card's network and load its weights; returns (network, card)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    card_file = Path(card_file)
    card = read_card(card_file)
    weights_path = weights_path_for(card_file, card)
    if not weights_path.is_file():
        raise ModelLoadError(f"{card_file}: weights file {weights_path.name} is missing beside the card")
    if verify:
        _verify_hash(card_file, card, weights_path)
    network = _build(card, card_file)
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelLoadError(f"{weights_path}: not a readable safetensors file ({_one_line(error)})") from None
    _load_state(network, state, weights_path)
    network.to(device).eval()
    return network, card


def _verify_hash(card_file: Path, card: ModelCard, weights_path: Path) -> None:
    expected = card.weights.get("sha256")
    if not expected:
        raise ModelLoadError(f"{card_file}: the card has no sha256 for its weights; refusing to load")
    actual = sha256_of(weights_path)
    if actual != expected:
        raise ModelLoadError(
            f"{weights_path}: sha256 mismatch (card says {expected[:12]}..., file is {actual[:12]}...); "
            "the file is corrupt or was changed"
        )


def load_legacy_state_dict(pt_path: str | Path, card: ModelCard, device="cpu"):
    """Load a legacy ``.pt`` state dict for ``card``'s architecture, safely (weights_only)."""
    import torch

    pt_path = Path(pt_path)
    if not pt_path.is_file():
        raise ModelLoadError(f"{pt_path}: not a regular file")
    try:
        state = torch.load(pt_path, map_location="cpu", weights_only=True)
    except Exception:  # torch's restricted unpickler raises many types, with multi-line advice
        raise ModelLoadError(f"{pt_path}: {LEGACY_PT_RULE}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{pt_path}: {LEGACY_PT_RULE}")
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    network = _build(card, pt_path)
    _load_state(network, state, pt_path)
    network.to(device).eval()
    return network


def parameter_count(architecture: str, arguments: dict, source: object) -> int:
    """Parameters of the network the arguments describe, built on torch's meta device (no memory).

    Construction stops as soon as it passes :data:`MAX_PARAMETERS` parameters or
    :data:`MAX_PARAMETER_TENSORS` tensors, so a card asking for a huge network costs
    milliseconds. Raises ModelLoadError (naming ``source``) when the network cannot
    be built or is too large.
    """
    import torch

    budget = _ParameterBudget()
    try:
        with torch.device("meta"), budget:
            network = _construct(architecture, arguments, source)
    except _TooLarge:
        raise ModelLoadError(f"{source}: {architecture} with these arguments would have more than "
                             f"{MAX_PARAMETERS:,} parameters or {MAX_PARAMETER_TENSORS:,} weight tensors; "
                             "refusing to build it") from None
    return sum(p.numel() for p in network.parameters())


class _TooLarge(Exception):
    """Raised inside a network's construction when it passes the parameter budget."""


class _ParameterBudget:
    """Context: counts the parameters registered by this thread and raises _TooLarge past the bounds."""

    _active = threading.local()

    def __enter__(self) -> "_ParameterBudget":
        import torch

        self._active.counts = [0, 0]
        self._handle = torch.nn.modules.module.register_module_parameter_registration_hook(self._count)
        return self

    def __exit__(self, *exc_info) -> None:
        self._handle.remove()
        self._active.counts = None

    @classmethod
    def _count(cls, module, name, parameter) -> None:
        counts = getattr(cls._active, "counts", None)
        if counts is None or parameter is None:
            return  # another thread's construction, outside any budget
        counts[0] += parameter.numel()
        counts[1] += 1
        if counts[0] > MAX_PARAMETERS or counts[1] > MAX_PARAMETER_TENSORS:
            raise _TooLarge()


def _build(card: ModelCard, source: Path):
    """The card's network, after checking on the meta device that it is buildable and bounded."""
    parameter_count(card.architecture, card.arguments, source)
    return _construct(card.architecture, card.arguments, source)


def _construct(architecture: str, arguments: dict, source: object):
    from napari_lgms.models.registry import build_network

    try:
        return build_network(architecture, dict(arguments))
    except KeyError as error:
        raise ModelLoadError(f"{source}: {error.args[0]}") from None
    except (TypeError, ValueError, AssertionError, RuntimeError) as error:
        raise ModelLoadError(f"{source}: bad arguments for {architecture}: {_one_line(error)}") from None


def _one_line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_state(network, state: dict, source: Path) -> None:
    import torch

    reference = network.state_dict()
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    if missing or unexpected:
        raise ModelLoadError(
            f"{source}: weights do not fit the architecture "
            f"({len(missing)} missing, {len(unexpected)} unexpected tensors, e.g. "
            f"{(missing or unexpected)[0]!r})"
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
