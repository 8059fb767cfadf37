"""The one schema every model card is checked against when it is read.

:func:`check_card_data` raises :class:`CardError` naming the first field that is
missing or wrong and what it accepts; :func:`napari_lgms.zoo.store.read_card`
turns it into a one-line :class:`~napari_lgms.zoo.store.ModelLoadError`. The
architecture's arguments are bounded here, before any network is built, so a
card cannot ask for a network that takes minutes or gigabytes to construct.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

from napari_lgms._words import plural
from napari_lgms.errors import InputError
from napari_lgms.zoo.names import validate_file_name, validate_model_name

MAX_CHANNELS = 256
MAX_CLASSES = 1024
MAX_ARGUMENT = 4096          # any integer among an architecture's arguments
MAX_ARGUMENT_ITEMS = 16      # any list among them
MAX_PATCH = 4096
MODES = ("resize", "tile", "sliding_window")
ACTIVATIONS = ("sigmoid", "softmax")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TEXT_FIELDS = ("version", "description", "licence", "intended_use", "created")
_DICT_FIELDS = ("training", "metrics", "lineage")


class CardError(ValueError):
    """A model card that does not follow the schema; the message names the field."""


def check_card_data(data: Any) -> None:
    """Raise :class:`CardError` unless ``data`` (parsed JSON) is a valid model card."""
    if not isinstance(data, dict):
        raise CardError("a model card must be a JSON object")
    missing = [k for k in ("name", "architecture", "arguments") if k not in data]
    if missing:
        raise CardError(f"lacks required {plural(len(missing), 'field')}: {', '.join(missing)}")
    _guard("name", lambda: validate_model_name(data["name"]))
    _check_architecture(data["architecture"])
    _check_arguments(data["arguments"])
    for key, check in _SECTIONS.items():
        if data.get(key) is not None:
            check(data[key])
    if data.get("prompt") is not None:
        from napari_lgms.zoo.card import PROMPT_CHANNELS

        prompts = len(data["prompt"].get("channels", PROMPT_CHANNELS))
    else:
        prompts = 0
    _expect(data["arguments"]["in_channels"] > prompts, "arguments.in_channels",
            "must exceed the number of prompt channels (the image needs at least one)")
    if data.get("input") is not None:
        _check_input(data["input"], data["arguments"], prompts)
    for key in _TEXT_FIELDS:
        _expect(isinstance(data.get(key, ""), str), key, "must be text")
    for key in _DICT_FIELDS:
        _expect(isinstance(data.get(key, {}), dict), key, "must be an object")
    _expect(_is_text_list(data.get("citation", [])), "citation", "must be a list of text")


def _guard(field: str, check: Callable[[], Any]) -> None:
    try:
        check()
    except InputError as error:
        raise CardError(f"{field}: {error}") from None


def _expect(condition: bool, field: str, accepted: str) -> None:
    if not condition:
        raise CardError(f"{field} {accepted}")


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_text_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_architecture(name: Any) -> None:
    from napari_lgms.models.registry import get_architecture

    _expect(isinstance(name, str) and 0 < len(name) <= 64, "architecture", "must be an architecture name")
    try:
        get_architecture(name)
    except KeyError as error:
        raise CardError(error.args[0]) from None


def _check_arguments(arguments: Any) -> None:
    _expect(isinstance(arguments, dict), "arguments", "must be an object of keyword arguments")
    _expect(_is_int(arguments.get("in_channels"), 1, MAX_CHANNELS), "arguments.in_channels",
            f"must be an integer from 1 to {MAX_CHANNELS}")
    _expect(_is_int(arguments.get("num_classes"), 1, MAX_CLASSES), "arguments.num_classes",
            f"must be an integer from 1 to {MAX_CLASSES}")
    _expect(arguments.get("spatial_dims", 2) in (2, 3), "arguments.spatial_dims", "must be 2 or 3")
    for key, value in arguments.items():
        _expect(_bounded_argument(value), f"arguments.{key}",
                f"must be a number of at most {MAX_ARGUMENT}, text, or a list of at most "
                f"{MAX_ARGUMENT_ITEMS} such values")


def _bounded_argument(value: Any, depth: int = 0) -> bool:
    """Numbers up to MAX_ARGUMENT, short text, booleans, null, or short (nested) lists of those."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) <= MAX_ARGUMENT
    if isinstance(value, float):
        return math.isfinite(value) and abs(value) <= MAX_ARGUMENT
    if isinstance(value, str):
        return len(value) <= 64
    if isinstance(value, list):
        return depth < 3 and len(value) <= MAX_ARGUMENT_ITEMS and all(_bounded_argument(v, depth + 1) for v in value)
    return False


def _check_input(section: Any, arguments: dict[str, Any], prompts: int) -> None:
    """``input`` of a card whose ``arguments`` (checked) take ``prompts`` prompt channels. The
    spatial dimensions, channels and axes follow from the arguments; an old card that still holds
    them is refused only where they contradict the arguments."""
    from napari_lgms.zoo.card import input_axes

    _expect(isinstance(section, dict), "input", "must be an object")
    dims = arguments.get("spatial_dims", 2)
    channels = arguments["in_channels"] - prompts
    derived = {"spatial_dims": dims, "channels": channels, "axes": input_axes(dims, channels)}
    for key, value in derived.items():
        old = section.get(key)
        _expect(old in (None, "", value), f"input.{key}",
                f"{old!r} contradicts the arguments, which give {value!r} (drop input.{key}: it is derived)")
    patch = section.get("patch_size")
    _expect(patch is None or (isinstance(patch, list) and len(patch) == dims
                              and all(_is_int(p, 1, MAX_PATCH) for p in patch)),
            "input.patch_size", f"must be {dims} integers from 1 to {MAX_PATCH}")
    _expect(section.get("size_divisor") is None or _is_int(section["size_divisor"], 1, MAX_PATCH),
            "input.size_divisor", "must be a positive integer")
    _expect(section.get("mode") is None or section["mode"] in MODES, "input.mode", f"must be one of {', '.join(MODES)}")
    spacing = section.get("spacing")
    _expect(spacing is None or (isinstance(spacing, list) and len(spacing) == dims
                                and all(_is_number(s) and s > 0 for s in spacing)),
            "input.spacing", f"must be null or {dims} positive numbers")
    factor = section.get("max_resize_factor")
    _expect(factor is None or (_is_number(factor) and factor > 0), "input.max_resize_factor",
            "must be a positive number")


def _check_normalization(section: Any) -> None:
    from napari_lgms.inference.normalize import KINDS

    _expect(isinstance(section, dict) and section.get("kind", KINDS[0]) in KINDS, "normalization",
            f"must be an object whose kind is one of {', '.join(KINDS)}")


def _check_output(section: Any) -> None:
    from napari_lgms.inference.augment import TEST_TIME_AUGMENTATIONS

    _expect(isinstance(section, dict), "output", "must be an object")
    _expect(section.get("activation") in (None, *ACTIVATIONS), "output.activation",
            f"must be one of {', '.join(ACTIVATIONS)}")
    threshold = section.get("threshold", 0.5)
    _expect(_is_number(threshold) and 0 <= threshold <= 1, "output.threshold", "must be a number from 0 to 1")
    tta = section.get("test_time_augmentation")
    _expect(tta is None or tta in TEST_TIME_AUGMENTATIONS, "output.test_time_augmentation",
            f"must be one of {', '.join(TEST_TIME_AUGMENTATIONS)}")


def _check_prompt(section: Any) -> None:
    from napari_lgms.zoo.card import FIRST_VIEWS, PROMPT_CHANNELS

    _expect(isinstance(section, dict), "prompt", "must be an object")
    channels = section.get("channels", list(PROMPT_CHANNELS))
    _expect(isinstance(channels, list) and len(channels) == len(set(channels)) >= 1
            and set(channels) <= set(PROMPT_CHANNELS), "prompt.channels",
            f"must list some of {', '.join(PROMPT_CHANNELS)}, each once")
    for key, high in (("radius", MAX_PATCH), ("expansion", 100), ("min_crop", 1)):
        value = section.get(key, 1)
        _expect(_is_number(value) and 0 < value <= high, f"prompt.{key}", f"must be a number in (0, {high}]")
    _expect(section.get("first_view", "whole") in FIRST_VIEWS, "prompt.first_view",
            f"must be one of {', '.join(FIRST_VIEWS)}")


def _check_weights(section: Any) -> None:
    _expect(isinstance(section, dict), "weights", "must be an object")
    if section.get("file") is not None:
        _guard("weights.file", lambda: validate_file_name(section["file"], "the weights file"))
    sha = section.get("sha256")
    _expect(sha is None or (isinstance(sha, str) and _SHA256.fullmatch(sha) is not None), "weights.sha256",
            "must be 64 lower-case hexadecimal digits")


def _check_class_names(names: Any) -> None:
    _expect(_is_text_list(names) and len(names) <= MAX_CLASSES + 1, "class_names", "must be a list of text")


_SECTIONS: dict[str, Callable[[Any], None]] = {
    "normalization": _check_normalization,
    "output": _check_output,
    "weights": _check_weights,
    "class_names": _check_class_names,
    "prompt": _check_prompt,
}
