"""Where models live, and resolving a name or a path to a loaded model.

Three places, searched in this order for a name:

1. the user's model folder: ``$NAPARI_LGMS_MODEL_DIR`` or the platform's user
   data folder (``platformdirs.user_data_dir("napari-lgms")/models``); fine-tuned
   versions are saved here. A data folder rather than a cache folder, because
   cache cleaners must never delete a user's fine-tuned model;
2. the models shipped inside the wheel (``napari_lgms/resources/models``);
3. the registry's architectures, untrained ("none yet").

Any path to a ``.json`` card, a ``.safetensors`` file with its card beside it,
or a folder holding one card, is accepted too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from napari_lgms.zoo.card import InputSpec, ModelCard, OutputSpec, default_class_names
from napari_lgms.zoo.store import (
    LoadedModel,
    ModelLoadError,
    load_legacy_state_dict,
    load_network_from_card,
    read_card,
    remove_orphans,
    staged_weights,
)

MODEL_DIR_ENV = "NAPARI_LGMS_MODEL_DIR"


@dataclass
class ModelEntry:
    """One row of ``napari-lgms models``."""

    name: str
    architecture: str
    spatial_dims: int
    in_channels: int
    num_classes: int
    origin: str  # "user" | "shipped" | "none yet"
    card_path: Path | None
    card: ModelCard | None


def user_model_dir() -> Path:
    override = os.environ.get(MODEL_DIR_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-lgms", appauthor=False)) / "models"


def shipped_model_dir() -> Path:
    return Path(str(resources.files("napari_lgms.resources"))) / "models"


def _cards_in(directory: Path) -> list[Path]:
    """Model cards in ``directory``: visible ``.json`` files with weights beside them."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.json") if not p.name.startswith(".") and _has_weights(p))


def _has_weights(card_file: Path) -> bool:
    """Weights beside the card: ``NAME.safetensors``, or those of a save that stopped after its commit."""
    return card_file.with_suffix(".safetensors").exists() or bool(staged_weights(card_file.parent, card_file.stem))


def scan_models() -> tuple[list[ModelEntry], list[str]]:
    """(user models, shipped models, then untrained registry configurations; one line per bad card).

    A card that cannot be read or fails the schema is left out and named in the
    second list; stale leftovers of killed saves are removed from the user folder first.
    """
    from napari_lgms.models.registry import list_model_configs

    remove_orphans(user_model_dir())
    entries: list[ModelEntry] = []
    problems: list[str] = []
    seen: set[str] = set()
    for origin, directory in (("user", user_model_dir()), ("shipped", shipped_model_dir())):
        for card_file in _cards_in(directory):
            try:
                card = read_card(card_file)
            except ModelLoadError as error:
                problems.append(str(error))
                continue
            if card.name not in seen:
                seen.add(card.name)
                entries.append(ModelEntry(card.name, card.architecture, card.spatial_dims, card.in_channels,
                                          card.num_classes, origin, card_file, card))
    for config in list_model_configs():
        if config.name not in seen:
            entries.append(ModelEntry(config.name, config.architecture, config.spatial_dims,
                                      config.in_channels, config.num_classes, "none yet", None, None))
    return entries, problems


def list_available_models() -> list[ModelEntry]:
    """User models, shipped models, then untrained registry configurations (bad cards left out)."""
    return scan_models()[0]


def resolve_card_path(name_or_path: str | os.PathLike) -> Path | None:
    """The card file for a model name or path; None for a bare registry name."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.suffix in (".json", ".safetensors", ".pt", ".pth") or path.is_dir() or os.sep in text:
        if path.is_dir():
            cards = _cards_in(path)
            if len(cards) != 1:
                raise ModelLoadError(f"{path}: expected one model card (.json beside .safetensors), found {len(cards)}")
            return cards[0]
        if not path.exists():
            raise ModelLoadError(f"{path}: no such model file")
        if path.suffix == ".safetensors":
            return path.with_suffix(".json")
        return path
    for directory in (user_model_dir(), shipped_model_dir()):
        candidate = directory / f"{text}.json"
        if candidate.is_file() and _has_weights(candidate):
            return candidate
    return None


def untrained_card(name: str, **overrides) -> ModelCard:
    """A card for a registry configuration with random weights."""
    from napari_lgms.models.registry import get_architecture, get_model_config

    config = get_model_config(name)
    arguments = {**config.arguments, **overrides}
    dims = int(arguments.get("spatial_dims", 2))
    return ModelCard(
        name=name,
        architecture=config.architecture,
        arguments=arguments,
        description=f"untrained {config.architecture} ({config.description})",
        input=InputSpec.for_network([96, 96, 96] if dims == 3 else [256, 256],
                                    get_architecture(config.architecture).size_divisor,
                                    "sliding_window" if dims == 3 else "resize"),
        normalization={"kind": "percentile_zscore", "lower": 0.5, "upper": 99.5},
        class_names=default_class_names(int(arguments["num_classes"])),
        output=OutputSpec("sigmoid" if int(arguments["num_classes"]) == 1 else "softmax", 0.5),
        licence="n/a (random weights)",
    )


def load_model(name_or_path: str | os.PathLike, device="cpu", *, allow_untrained: bool = False) -> LoadedModel:
    """Load a model by name (user folder, then shipped) or by path.

    ``allow_untrained`` lets a bare registry name give random weights (for
    training from scratch); otherwise a name without weights is an error.
    """
    from napari_lgms.models.registry import create_model, get_model_config

    card_file = resolve_card_path(name_or_path)
    if card_file is None:
        try:
            get_model_config(str(name_or_path))
        except KeyError:
            available = ", ".join(e.name for e in list_available_models() if e.origin != "none yet")
            raise ModelLoadError(
                f"unknown model {str(name_or_path)!r}: give a model name ({available or 'none with weights yet'}) "
                "or a path to a .json card / .safetensors file"
            ) from None
        if not allow_untrained:
            raise ModelLoadError(
                f"model {str(name_or_path)!r} has no trained weights yet; train or fine-tune one first"
            )
        card = untrained_card(str(name_or_path))
        network = create_model(str(name_or_path)).to(device).eval()
        return LoadedModel(network, card, None, "untrained")
    if card_file.suffix in (".pt", ".pth"):
        card = read_card(card_file.with_suffix(".json"))
        return LoadedModel(load_legacy_state_dict(card_file, card, device), card, card_file, "path")
    network, card = load_network_from_card(card_file, device)
    origin = "path"
    if card_file.parent.resolve() == user_model_dir().resolve():
        origin = "user"
    elif card_file.parent.resolve() == shipped_model_dir().resolve():
        origin = "shipped"
    return LoadedModel(network, card, card_file, origin)
