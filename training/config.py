"""Training configuration: one flat dataclass, loadable from YAML, every field also a CLI flag.

Precedence: dataclass defaults < YAML file < command-line flags. Paths may use
``$NAPARI_LGMS_DATA`` (or any environment variable); it is expanded when the
data are read, so a config file never hard-codes where the data live.
"""
from __future__ import annotations

import argparse
import json
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from napari_lgms._words import plural
from napari_lgms.errors import InputError
from napari_lgms.inference.augment import TEST_TIME_AUGMENTATIONS


@dataclass
class TrainConfig:
    # -- what to train ------------------------------------------------------------------------
    name: str = "model"  # output model name (NAME.safetensors + NAME.json)
    model: str = "lgmsnet"  # registry name, or a model name/path to start from
    model_args: dict = field(default_factory=dict)  # e.g. {"in_channels": 1, "num_classes": 3}
    class_names: list = field(default_factory=list)  # background first; default from num_classes
    imports: list = field(default_factory=list)  # modules to import first (custom architectures)
    # -- data -----------------------------------------------------------------------------------
    data: str = ""  # a folder with images/ + masks/, an MSD task (imagesTr/ + labelsTr/), or a corrections store
    images: str = ""  # alternatively: a folder of images ...
    masks: str = ""  # ... and a folder of masks paired by name stem
    data_description: str = ""
    data_terms: str = ""
    normalization: dict = field(default_factory=lambda: {"kind": "percentile_zscore", "lower": 0.5, "upper": 99.5})
    input_mode: str = "resize"  # "resize": whole 2D image to patch_size; "patch": random patches (3D, large 2D)
    patch_size: list = field(default_factory=lambda: [256, 256])
    spacing: list = field(default_factory=list)  # recorded in the card (mm, spatial order); empty: from the files
    cache: bool = True  # keep decoded, resized images in memory
    workers: int = 0  # DataLoader worker processes
    # -- split -----------------------------------------------------------------------------------
    val_fraction: float = 0.2
    split_seed: int = 41
    group_duplicates: bool = True  # near-duplicates never straddle the split
    duplicate_correlation: float = 0.95  # thumbnails correlating at least this much are near-duplicates
    split_file: str = ""  # a recorded split (a run's split.json) to reuse instead of drawing one
    # -- optimisation ---------------------------------------------------------------------------
    seed: int = 41
    epochs: int = 100
    max_steps: int = 0  # >0: stop after this many steps in total
    batch_size: int = 8
    samples_per_epoch: int = 0  # >0: draw this many (patch) samples per epoch
    optimizer: str = "sgd"  # "sgd" | "adamw"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "poly"  # "poly" | "cosine" | "constant"
    poly_power: float = 0.9
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    precision: str = "auto"  # "auto" | "fp32" | "fp16" | "bf16"
    device: str = "auto"
    grad_clip: float = 0.0
    # -- augmentation (probabilities per sample) --------------------------------------------
    rot90_p: float = 0.5
    flip_p: float = 0.5
    intensity_p: float = 0.0
    scale_p: float = 0.0
    scale_range: list = field(default_factory=lambda: [0.75, 1.25])
    elastic_p: float = 0.0
    noise_p: float = 0.0
    foreground_bias: float = 0.5  # share of patches centred on foreground / corrected voxels
    # -- distillation: learn from a trained model's predictions as well as the labels ------------
    teacher: str = ""  # a model name or card path; empty: labels only
    distill_weight: float = 0.5  # loss = (1 - w) · labels loss + w · loss against the teacher's probabilities
    teacher_test_time_augmentation: str = "none"  # "flips": the teacher's logits averaged over flips
    # -- validation, selection, stopping --------------------------------------------------------
    val_every: int = 1
    selection_metric: str = "auto"  # "iou" | "dice"; auto: iou for binary, dice for multi-class
    early_stop_patience: int = 0  # >0: stop after this many validations without improvement
    # -- output ------------------------------------------------------------------------------------
    output: str = "runs/model"
    resume: bool = False  # continue from OUTPUT/checkpoint.pt
    save_half: bool = False
    # -- model card --------------------------------------------------------------------------------
    version: str = "1"
    description: str = ""
    licence: str = "unspecified"
    citation: list = field(default_factory=list)
    intended_use: str = ""
    test_time_augmentation: str = "none"  # the card's inference default: "none" | "flips"

    @property
    def num_classes(self) -> int:
        return int(self.model_args.get("num_classes", 0)) or 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> "TrainConfig":
        choices = {
            "input_mode": ("resize", "patch"),
            "optimizer": ("sgd", "adamw"),
            "schedule": ("poly", "cosine", "constant"),
            "precision": ("auto", "fp32", "fp16", "bf16"),
            "selection_metric": ("auto", "iou", "dice"),
            "test_time_augmentation": TEST_TIME_AUGMENTATIONS,
            "teacher_test_time_augmentation": TEST_TIME_AUGMENTATIONS,
        }
        for name, accepted in choices.items():
            if getattr(self, name) not in accepted:
                raise InputError(f"{name} {getattr(self, name)!r} is not accepted; use one of {', '.join(accepted)}")
        if not self.data and not (self.images and self.masks):
            raise InputError("no training data: give --data FOLDER, or --images DIR and --masks DIR")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 < self.duplicate_correlation <= 1.0:
            raise InputError(f"duplicate_correlation must be in (0, 1], got {self.duplicate_correlation}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise InputError(f"distill_weight must be in [0, 1], got {self.distill_weight}")
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError("epochs and batch_size must be at least 1")
        if not self.patch_size or any(int(s) < 1 for s in self.patch_size):
            raise InputError(f"patch_size must be positive sizes, got {self.patch_size}")
        return self


def _field_types() -> dict[str, type]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in fields(TrainConfig)}


def config_from_dict(values: dict[str, Any], *, source: str = "config") -> TrainConfig:
    """Build a config from a mapping; unknown keys are an error naming the known ones."""
    known = _field_types()
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InputError(f"{source}: unknown {plural(len(unknown), 'setting')} {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known))}")
    converted = {}
    for key, value in values.items():
        converted[key] = _coerce(key, value, known[key], source)
    for key, element in (("patch_size", int), ("scale_range", float), ("spacing", float)):
        if key in converted:
            try:
                converted[key] = [element(v) for v in converted[key]]
            except (TypeError, ValueError):
                raise InputError(f"{source}: setting {key!r} needs numbers, got {converted[key]!r}") from None
    return TrainConfig(**converted)


def _coerce(key: str, value: Any, kind: type, source: str) -> Any:
    try:
        if kind is bool:
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if kind in (int, float, str):
            return kind(value)
        if kind is list:
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            return list(value) if isinstance(value, (list, tuple)) else [value]
        if kind is dict:
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, dict):
                raise TypeError("not a mapping")
            return dict(value)
    except (TypeError, ValueError) as error:
        raise InputError(f"{source}: setting {key!r} has a bad value {value!r} ({error})") from None
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise InputError(f"{path}: cannot read the config file ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        raise InputError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config file must be a mapping of setting: value")
    return data


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--setting-name`` flag per config field; absent flags leave the YAML value."""
    group = parser.add_argument_group("settings (override the YAML file)")
    for name, kind in _field_types().items():
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
        elif kind is list:
            group.add_argument(flag, dest=name, nargs="+", default=argparse.SUPPRESS, metavar="VALUE")
        elif kind is dict:
            group.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar="JSON")
        else:
            group.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then ``args.config`` (YAML), then every flag given."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_yaml(args.config))
    known = _field_types()
    values.update({k: v for k, v in vars(args).items() if k in known})
    return config_from_dict(values, source=str(getattr(args, "config", None) or "flags"))


def default_value(name: str) -> Any:
    for f in fields(TrainConfig):
        if f.name == name:
            return f.default_factory() if f.default is MISSING else f.default
    raise KeyError(name)
