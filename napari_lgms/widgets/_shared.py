"""What the Segment and Fine-tune widgets share: the model list, the corrections store, signals.

``hub.models_changed`` fires when a model version is added or removed (a
fine-tuning run ended, a roll back): every widget refreshes its model list at
once. ``hub.model_chosen(path)`` asks Segment widgets to select a model.
``hub.store_changed(root)`` keeps the Fine-tune widget on the store the
Segment widget writes to, and up to date when a correction is saved or deleted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from psygnal import Signal

from napari_lgms._words import counted
from napari_lgms.widgets._workers import Failure, returning_failures

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
    modality: str = ""  # what the card says it was made for: "ultrasound", "colonoscopy", "MRI" or ""
    details: str = ""  # the whole card summary, shown on demand (tooltip)
    card: object = None  # the ModelCard, when there is one

    def text(self, prediction: str = "auto") -> str:
        """The card as the widget shows it, its one validation figure for ``prediction`` (engine value)."""
        if self.card is None:
            return self.summary
        return _describe(self.card, self.spatial_dims, self.in_channels, prediction)


# Words in a card (description, intended use, training data) -> the imaging modality it names.
MODALITY_WORDS = {
    "ultrasound": ("ultrasound",),
    "colonoscopy": ("colonoscopy", "polyp", "endoscop"),
    "MRI": ("mri", "hippocampus"),
}


def modality_of(card) -> str:
    """The modality a model card names ("" when it names none, or several)."""
    if card is None:
        return ""
    text = " ".join(str(part) for part in (card.description, getattr(card, "intended_use", ""),
                                           card.training.get("data", ""))).lower()
    found = [name for name, words in MODALITY_WORDS.items() if any(word in text for word in words)]
    return found[0] if len(found) == 1 else ""


def _scores(metrics: dict) -> str:
    if isinstance(metrics.get("mean_class_dice"), float):
        return f"mean Dice {metrics['mean_class_dice']:.3f}"
    return ", ".join(f"{label} {metrics[key]:.3f}" for key, label in (("iou", "IoU"), ("dice", "Dice"))
                     if isinstance(metrics.get(key), float))


def validation_line(card, prediction: str = "auto") -> str:
    """ONE validation figure: as users run it (the engine; one pass when ``prediction`` is "none"
    and the card measured it, else the card's own choice) and its split."""
    engine = card.metrics.get("engine")
    if isinstance(engine, dict) and _scores(engine):
        one_pass = engine.get("one_pass")
        if prediction == "none" and isinstance(one_pass, dict) and _scores(one_pass):
            engine = {**engine, **one_pass, "test_time_augmentation": "none"}
        flips = (engine.get("test_time_augmentation") or "none") != "none"
        how = "averaged over flips" if flips else "one pass"
        split = str(engine.get("split", "")).split(":")[0] or "a held-out split"
        return f"validation, as you run it ({how}): {_scores(engine)} on {engine.get('images', '?')} " \
               f"held-out images ({split})"
    clicks = card.metrics.get("clicks")
    if isinstance(clicks, dict) and isinstance(clicks.get("iou@3"), float):
        split = str(card.metrics.get("split", "unspecified split")).removeprefix("validation: ")
        return f"validation (simulated clicks): IoU {clicks['iou@3']:.3f} after 3 clicks ({split})"
    if _scores(card.metrics):
        split = str(card.metrics.get("split", "unspecified split")).removeprefix("validation: ")
        return f"validation: {_scores(card.metrics)} ({split})"
    return "validation: none recorded"


def _describe(card, spatial_dims: int, in_channels: int, prediction: str = "auto") -> str:
    kind = "2D (slice by slice on volumes)" if spatial_dims == 2 else "3D (volumetric)"
    if card is None:
        return f"{kind}; {counted(in_channels, 'input channel')}"
    channels = counted(in_channels, "input channel")
    lines = [f"{card.name} v{card.version}: {card.architecture} {kind}, {channels}"]
    if card.training.get("data"):
        lines.append(f"trained on: {card.training['data']}")
    lines.append(validation_line(card, prediction))
    if card.lineage.get("parent"):
        made = "takes clicks; made from" if card.prompt is not None else "fine-tuned from"
        lines.append(f"{made}: {card.lineage['parent']}")
    return "\n".join(lines)


def _details(card) -> str:
    """Every figure of the card, for the tooltip (the label shows one)."""
    if card is None:
        return ""
    lines = [card.summary()]
    one_pass = (card.metrics.get("engine") or {}).get("one_pass")
    if isinstance(one_pass, dict) and _scores(one_pass):
        lines.append(f"one pass through the engine: {_scores(one_pass)}")
    split = (card.metrics.get("engine") or {}).get("split")
    if split:
        lines.append(f"split: {split}")
    return "\n".join(lines)


def _choice_for_card(label: str, source: str, card, origin: str) -> ModelChoice:
    return ModelChoice(label, source, True, card.spatial_dims, card.image_channels,
                       _describe(card, card.spatial_dims, card.image_channels), card.name, origin,
                       modality_of(card), _details(card), card)


def takes_clicks(choice: ModelChoice | None) -> bool:
    """Whether a model row is a click model (its card has a prompt)."""
    return choice is not None and getattr(choice.card, "prompt", None) is not None


def model_choices(include_untrained: bool = True) -> list[ModelChoice]:
    """User models (the newest saved first, so that it is the one suggested), shipped models, then
    untrained networks."""
    from napari_lgms.zoo import list_available_models

    entries = list_available_models()
    users = sorted((e for e in entries if e.origin == "user"), key=_saved_at, reverse=True)
    choices = []
    for entry in users + [e for e in entries if e.origin != "user"]:
        if entry.origin == "none yet":
            if include_untrained:
                choices.append(ModelChoice(
                    f"{entry.name} (untrained)", entry.name, False, entry.spatial_dims, entry.in_channels,
                    f"{entry.architecture} {entry.spatial_dims}D, "
                    f"{counted(entry.in_channels, 'input channel')}\n{UNTRAINED_NOTE}", entry.name, entry.origin,
                ))
            continue
        label = f"{entry.name} ({'yours' if entry.origin == 'user' else entry.origin})"
        choices.append(_choice_for_card(label, str(entry.card_path), entry.card, entry.origin))
    return choices


def _saved_at(entry) -> float:
    try:
        return entry.card_path.stat().st_mtime
    except (OSError, AttributeError):
        return 0.0


def default_index(choices: list[ModelChoice]) -> int:
    """The first trained model; without any, the untrained LGMSNet (else the first row)."""
    for index, choice in enumerate(choices):
        if choice.trained and not takes_clicks(choice):
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
    LGMSNets (:data:`PREFERRED_MODELS`) before any other, automatic models before click models
    (click mode finds a click model from the automatic one); else :func:`default_index`.
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
        return takes_clicks(choice), fit, source

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
    return _choice_for_card(f"{card.name} (file {Path(path).name})", str(path), card, "file")


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


def _models_imported() -> bool:
    import sys

    return "napari_lgms.models.registry" in sys.modules


def list_models_then(widget, callback, include_untrained: bool = True) -> None:
    """Call ``callback(choices)`` on the main thread with :func:`model_choices`, or with the exception
    that broke the listing (a broken model folder must not break a widget).

    Listing models imports the network registry, hence torch (about 1.5 s on a laptop CPU): the
    first listing of a session runs in a worker thread, so opening a widget never freezes napari;
    later ones are a few card reads and run at once. ``callback`` is skipped once ``widget`` is gone.
    """
    listing = returning_failures(model_choices)  # a worker that returns an exception raises it instead

    def deliver(listed) -> None:
        callback(listed.error if isinstance(listed, Failure) else listed)

    if _models_imported():
        deliver(listing(include_untrained))
        return
    from napari.qt.threading import create_worker

    worker = create_worker(listing, include_untrained, _start_thread=False)
    connect_while_alive(worker.returned, widget, deliver)
    worker.start()


def suggested_for_layer(choices: list[ModelChoice], layer) -> int:
    """The row that suits the Image ``layer`` (:func:`suggested_index`); :func:`default_index` for None."""
    from napari_lgms.samples import MODEL_HINT_KEY

    if layer is None:
        return default_index(choices)
    spatial_ndim, channels = image_kind(layer)
    hint = (getattr(layer, "metadata", None) or {}).get(MODEL_HINT_KEY)
    return suggested_index(choices, spatial_ndim=spatial_ndim, channels=channels, hint=hint)


def image_kind(layer) -> tuple[int, int]:
    """(spatial axes 2 or 3, channels 1 or 3) of an Image layer; a grey image stored as RGB is grey."""
    from napari_lgms.io.raster import channels_are_equal

    rgb = bool(getattr(layer, "rgb", False))
    if rgb:
        data = layer.data[-1] if getattr(layer, "multiscale", False) else layer.data  # the smallest level
        rgb = not channels_are_equal(np.asarray(data), max_elements=2_000_000)
    return min(3, max(2, layer.ndim)), 3 if rgb else 1
