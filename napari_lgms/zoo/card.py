"""The JSON model card that travels beside every weights file.

A card says everything a caller needs to use the weights correctly, without
reading any code: which network and arguments, the input contract, the
normalisation, the voxel spacing (3D), the class names, where the training
data came from and under which terms, the validation metrics with their split,
the licence, the sha256 of the weights and the lineage of fine-tuned models.

``input`` (:class:`InputSpec`) and ``output`` (:class:`OutputSpec`) are typed; in JSON they are
objects with the same keys. ``normalization`` keys: ``kind`` plus its parameters, see
:mod:`napari_lgms.inference.normalize`. :mod:`napari_lgms.zoo.schema` checks a card's JSON when
it is read.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from napari_lgms._words import counted

FORMAT_VERSION = 1

NOT_A_MEDICAL_DEVICE = (
    "Research use only. This model is not a medical device and must not be used "
    "for diagnosis or treatment decisions."
)


@dataclass
class InputSpec:
    """What the network takes, beyond what its ``arguments`` say (the card derives the spatial
    dimensions, the image channels and the axes from those: :attr:`ModelCard.spatial_dims`,
    :attr:`ModelCard.image_channels`, :attr:`ModelCard.axes`).

    ``patch_size``: the training size per spatial axis; ``size_divisor``: every size fed to the
    network is padded to a multiple of it; ``mode``: "resize" (the whole image resized to the
    patch), "tile" or "sliding_window" (windows of the patch size), None for the dimension's
    default; ``spacing``: millimetres per spatial axis, None when unknown; ``max_resize_factor``:
    in "resize" mode, images up to this many patches per axis are resized whole (larger are tiled).

    Cards written before held ``spatial_dims``, ``channels`` and ``axes`` here too; they still
    load (:mod:`napari_lgms.zoo.schema` refuses them only where they contradict the arguments).
    """

    patch_size: list[int] | None = None
    size_divisor: int = 1
    mode: str | None = None
    spacing: list[float] | None = None
    max_resize_factor: float | None = None

    @classmethod
    def for_network(cls, patch_size, size_divisor: int, mode: str, spacing=None,
                    max_resize_factor: float | None = None) -> "InputSpec":
        """The input contract of a network trained on patches of ``patch_size``."""
        return cls([int(p) for p in patch_size], int(size_divisor), mode,
                   list(spacing) if spacing else None, max_resize_factor)


LEGACY_INPUT_FIELDS = ("spatial_dims", "channels", "axes")  # derived from the arguments now; old cards hold them


def input_axes(spatial_dims: int, image_channels: int) -> str:
    """The axes of an image as a network takes it: YX or ZYX, then C for more than one channel."""
    return ("ZYX" if spatial_dims == 3 else "YX") + ("C" if image_channels > 1 else "")


@dataclass
class OutputSpec:
    """What the network's logits mean: ``activation`` "sigmoid" or "softmax" (None: sigmoid for one
    output, else softmax), the foreground ``threshold``, and the engine's default
    ``test_time_augmentation`` ("none" | "flips"; None: "none")."""

    activation: str | None = None
    threshold: float = 0.5
    test_time_augmentation: str | None = None

    def activation_for(self, outputs: int) -> str:
        return self.activation or ("sigmoid" if outputs == 1 else "softmax")


PROMPT_CHANNELS = ("positive", "negative", "previous")
FIRST_VIEWS = ("whole", "window")


@dataclass
class PromptSpec:
    """How clicks reach a promptable network: extra input channels after the image's, in the order
    of ``channels``: "positive" and "negative" are disks (balls in 3D) of ``radius`` network pixels
    around each click, "previous" is the current mask (0/1). The first clicks on an empty mask are
    predicted in ``first_view``: "whole" (the whole image resized to the patch) or "window" (a
    patch-sized window of the image at its own resolution, centred on the clicks); later ones on a
    crop around the current object and all clicks (its bounding box ``expansion`` times larger, at
    least ``min_crop`` of the image per axis), resized to the patch. Without clicks and without a
    mask every prompt channel is zero."""

    channels: list[str] = field(default_factory=lambda: list(PROMPT_CHANNELS))
    radius: float = 5.0
    expansion: float = 1.4
    min_crop: float = 0.25
    first_view: str = "whole"


@dataclass
class ModelCard:
    name: str
    architecture: str
    arguments: dict[str, Any]
    input: InputSpec
    normalization: dict[str, Any]
    class_names: list[str]
    output: OutputSpec = field(default_factory=OutputSpec)
    version: str = "1"
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    licence: str = "unspecified"
    citation: list[str] = field(default_factory=list)
    intended_use: str = NOT_A_MEDICAL_DEVICE
    lineage: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    format_version: int = FORMAT_VERSION
    prompt: PromptSpec | None = None

    def __post_init__(self) -> None:
        if isinstance(self.input, dict):  # a card built from JSON-like data
            self.input = _from_known_fields(InputSpec, self.input)
        if isinstance(self.output, dict):
            self.output = _from_known_fields(OutputSpec, self.output)
        if isinstance(self.prompt, dict):
            self.prompt = _from_known_fields(PromptSpec, self.prompt)

    @property
    def spatial_dims(self) -> int:
        return int(self.arguments.get("spatial_dims", 2))

    @property
    def in_channels(self) -> int:
        return int(self.arguments["in_channels"])

    @property
    def num_classes(self) -> int:
        return int(self.arguments["num_classes"])

    @property
    def image_channels(self) -> int:
        """Channels of the image the network takes (its input channels less the prompt channels)."""
        return self.in_channels - (len(self.prompt.channels) if self.prompt is not None else 0)

    @property
    def axes(self) -> str:
        """The axes of the image the network takes (:func:`input_axes`)."""
        return input_axes(self.spatial_dims, self.image_channels)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["prompt"] is None:
            del data["prompt"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelCard":
        """A card from parsed JSON, checked against :mod:`napari_lgms.zoo.schema` (CardError otherwise)."""
        from napari_lgms.zoo.schema import check_card_data

        check_card_data(data)
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        values.setdefault("input", {})
        values.setdefault("normalization", {"kind": "percentile_zscore"})
        values.setdefault("class_names", default_class_names(int(data["arguments"]["num_classes"])))
        return cls(**values)

    def summary(self) -> str:
        """A few human lines: what it is, what it was trained on, how good it is."""
        dims = f"{self.spatial_dims}D"
        lines = [
            f"{self.name} v{self.version}: {self.architecture} {dims}, "
            f"{counted(self.image_channels, 'input channel')}, classes: {', '.join(self.class_names)}"
        ]
        data = self.training.get("data")
        if data:
            lines.append(f"trained on: {data}")
        scores = {k: v for k, v in self.metrics.items()
                  if isinstance(v, float) and k not in ("loss", "epoch", "steps")}
        if scores:
            split = str(self.metrics.get("split", "unspecified split")).removeprefix("validation: ")
            numbers = ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
            lines.append(f"validation: {numbers} ({split})")
        engine = self.metrics.get("engine")
        if isinstance(engine, dict) and isinstance(engine.get("dice"), float):
            numbers = ", ".join(f"{k} {engine[k]:.3f}" for k in ("iou", "dice", "mean_class_dice")
                                if isinstance(engine.get(k), float))
            tta = engine.get("test_time_augmentation") or "none"
            how = "engine, original resolution" + ("" if tta == "none" else f", test-time {tta}")
            lines.append(f"as users run it ({how}): {numbers} on {engine.get('images', '?')} validation images")
        clicks = self.metrics.get("clicks")
        if isinstance(clicks, dict) and isinstance(clicks.get("iou@3"), float):
            split = str(self.metrics.get("split", "")).removeprefix("validation: ")
            lines.append(f"with simulated clicks: NoC@85 {clicks['noc85']:.1f}, IoU {clicks['iou@3']:.3f} after 3 "
                         f"clicks ({split})")
        if self.lineage.get("parent"):
            made = "takes clicks; made from" if self.prompt is not None else "fine-tuned from"
            lines.append(f"{made}: {self.lineage['parent']}")
        return "\n".join(lines)


def _from_known_fields(cls, data: dict[str, Any]):
    """``cls`` from the keys of ``data`` it knows (others, and nulls, are ignored: its defaults apply)."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known and v is not None})


def default_class_names(num_classes: int) -> list[str]:
    """Background first; one logit (sigmoid) still means two classes."""
    if num_classes <= 1:
        return ["background", "foreground"]
    return ["background"] + [f"class {i}" for i in range(1, num_classes)]
