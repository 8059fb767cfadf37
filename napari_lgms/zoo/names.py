"""Model names and the file names derived from them.

A model name becomes file names (``NAME.json``, ``NAME.safetensors``,
``NAME.onnx``), so it must be a *name*, never a path: letters, digits and
``-``, ``_``, ``.``, not starting with a dot, at most :data:`MAX_NAME_LENGTH`
characters. :func:`validate_model_name` is the one check, used wherever a name
becomes a path (saving, exporting, reading a card, fine-tuning).
"""
from __future__ import annotations

import re

from napari_lgms.errors import InputError

MAX_NAME_LENGTH = 100
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
NAME_RULE = (f"letters, digits, '-', '_' or '.', not starting with '.', at most {MAX_NAME_LENGTH} characters")


def validate_model_name(name: object) -> str:
    """Return ``name`` when it is a usable model name; raise :class:`InputError` (one line) otherwise."""
    if not isinstance(name, str) or not name:
        raise InputError(f"a model name must be a non-empty string; accepted: {NAME_RULE}")
    if len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        raise InputError(f"model name {_shown(name)} is not a plain name; accepted: {NAME_RULE}")
    return name


def validate_file_name(name: object, what: str = "file name") -> str:
    """Return ``name`` when it names a file in the same folder (no folder part, not hidden-relative)."""
    if not isinstance(name, str) or not name or len(name) > 255 or name in (".", "..") \
            or "/" in name or "\\" in name or "\0" in name:
        raise InputError(f"{what} {_shown(name)} must be a plain file name in the same folder")
    return name


def _shown(value: object) -> str:
    """A short, single-line, printable representation of a rejected value."""
    text = ascii(value)
    return text if len(text) <= 60 else text[:57] + "..."
