"""What the Segment and Fine-tune widgets share: the model list, the corrections store, signals.

``hub.models_changed`` fires when a model version is added or removed (a
fine-tuning run ended, a roll back): every widget refreshes its model list at
once. ``hub.model_chosen(path)`` asks Segment widgets to select a model.
``hub.store_changed(root)`` keeps the Fine-tune widget on the store the
Segment widget writes to.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from psygnal import Signal

UNTRAINED_NOTE = "untrained: random weights, the output is meaningless until it is trained or fine-tuned"
PREFERRED_MODELS = ("lgmsnet-polyp", "lgmsnet-breast-us", "lgmsnet3d-hippocampus")  # real-data, best first


class _Hub:
    models_changed = Signal()
    model_chosen = Signal(str)
    store_changed = Signal(str)

    def __init__(self) -> None:
        self.store_root: str | None = None  # the last store a Segment widget chose


hub = _Hub()


@dataclass
class ModelChoice:
    """One row of a model combo box: what the user reads and how to load it."""

    label: str
    source: str  # a card path, or a registry name for an untrained network
    trained: bool
    spatial_dims: int
    in_channels: int
    summary: str
    name: str = ""
    origin: str = ""  # "user", "shipped", "file" or "none yet"


def _describe(card, spatial_dims: int, in_channels: int) -> str:
    kind = "2D (slice by slice on volumes)" if spatial_dims == 2 else "3D (volumetric)"
    lines = [card.summary()] if card is not None else []
    lines.append(f"{kind}; {in_channels} input channel(s)")
    return "\n".join(lines)


def model_choices(include_untrained: bool = True) -> list[ModelChoice]:
    """User and shipped models first (newest user versions included), then untrained networks."""
    from napari_lgms.zoo import list_available_models

    choices = []
    for entry in list_available_models():
        if entry.origin == "none yet":
            if include_untrained:
                choices.append(ModelChoice(
                    f"{entry.name} (untrained)", entry.name, False, entry.spatial_dims, entry.in_channels,
                    f"{entry.architecture} {entry.spatial_dims}D, {entry.in_channels} input channel(s)\n"
                    f"{UNTRAINED_NOTE}", entry.name, entry.origin,
                ))
            continue
        label = f"{entry.name} ({'yours' if entry.origin == 'user' else entry.origin})"
        choices.append(ModelChoice(label, str(entry.card_path), True, entry.spatial_dims, entry.in_channels,
                                   _describe(entry.card, entry.spatial_dims, entry.in_channels),
                                   entry.name, entry.origin))
    return choices


def default_index(choices: list[ModelChoice]) -> int:
    """The first trained model; without any, the untrained LGMSNet (else the first row)."""
    for index, choice in enumerate(choices):
        if choice.trained:
            return index
    for index, choice in enumerate(choices):
        if choice.source == "lgmsnet":
            return index
    return 0


def suggested_index(choices: list[ModelChoice], *, spatial_ndim: int, channels: int,
                    hint: str | None = None) -> int:
    """The row a first click should use on an image with ``spatial_ndim`` (2 or 3) axes and
    ``channels`` (1 grey, 3 RGB).

    The model the image names (``hint``, from its layer metadata) if listed; else, among trained
    models a network of at most ``spatial_ndim`` dimensions can run on, the best fit (same
    dimensions and channels first), the user's own models before the shipped real-data
    LGMSNets (:data:`PREFERRED_MODELS`) before any other; else :func:`default_index`.
    """
    if hint:
        for index, choice in enumerate(choices):
            if choice.trained and choice.name == hint:
                return index

    def rank(choice: ModelChoice) -> tuple:
        fit = (choice.spatial_dims != spatial_ndim) + 2 * (choice.in_channels != channels)
        if choice.origin in ("user", "file"):
            source = 0
        elif choice.name in PREFERRED_MODELS:
            source = 1 + PREFERRED_MODELS.index(choice.name)
        else:
            source = 1 + len(PREFERRED_MODELS)
        return fit, source

    usable = [i for i, c in enumerate(choices) if c.trained and c.spatial_dims <= spatial_ndim]
    if usable:
        return min(usable, key=lambda i: (rank(choices[i]), i))
    return default_index(choices)


def choice_for_file(path: str | Path) -> ModelChoice:
    """A combo-box row for a model file the user picked (reads its card; raises on a bad file)."""
    from napari_lgms.zoo.locations import resolve_card_path
    from napari_lgms.zoo.store import read_card

    card_path = resolve_card_path(str(path))
    card = read_card(card_path.with_suffix(".json") if card_path.suffix in (".pt", ".pth") else card_path)
    return ModelChoice(f"{card.name} (file {Path(path).name})", str(path), True, card.spatial_dims,
                       card.in_channels, _describe(card, card.spatial_dims, card.in_channels), card.name, "file")


def load_choice(source: str, trained: bool, device=None):
    """Load a model chosen in a combo box (torch is imported here, never at module import)."""
    from napari_lgms._device import select_device
    from napari_lgms.zoo import load_model

    return load_model(source, select_device(device or "auto"), allow_untrained=not trained)


DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def connect_while_alive(signal, widget, slot) -> None:
    """Connect ``slot`` to ``signal`` (psygnal or napari event) until ``widget``'s Qt object is gone.

    The hub outlives every widget; a callback into a deleted Qt widget would raise.
    """
    import weakref

    widget_ref = weakref.ref(widget)

    def call(*args):
        alive = widget_ref()
        try:
            if alive is None:
                raise RuntimeError("widget collected")
            alive.objectName()  # raises RuntimeError once the C++ object is deleted
        except RuntimeError:
            signal.disconnect(call)
            return
        slot(*args)

    signal.connect(call)
