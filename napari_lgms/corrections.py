"""The corrections store: examples a user corrected in napari, kept for fine-tuning.

Pure Python + numpy (no Qt, no torch). A store is a folder::

    ROOT/manifest.json          index of entries (rewritten atomically)
    ROOT/<slug>-<hash>.npz      one file per example (written atomically)

Each ``.npz`` holds ``image`` (the pixels the model saw, any shape with the
spatial axes first as in napari, channels last if any), ``mask`` (the corrected
labels, spatial shape), optionally ``prediction`` (the model's original
labels, spatial shape) and ``meta`` (a JSON string: key, model, timestamp,
geometry). The data files are the source of truth; the manifest is an index:

* saving writes the data file first, then the manifest. A crash between the two
  leaves a data file the manifest does not list yet: opening the store adopts it
  (its ``meta`` says everything), so an example is never lost;
* deleting removes the data file first, then the manifest entry. A crash
  between the two leaves a manifest entry without a file: it is dropped on
  opening, so a deleted example never comes back;
* a crash inside a write leaves the previous file untouched (atomic rename) and
  at most a hidden ``.*.tmp`` file, which is ignored and cleaned up.

Saving the same key again replaces the example (one entry per key).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from napari_lgms._atomic import atomic_write_text, atomic_write_with
from napari_lgms.errors import InputError, OutputError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
STORE_DIR_ENV = "NAPARI_LGMS_CORRECTIONS_DIR"
STALE_TEMP_SECONDS = 300.0  # a write in progress is seconds old; older temp files are crash leftovers
_PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class Entry:
    """One stored example (without its arrays)."""

    key: str
    file: str
    model: str
    timestamp: str
    geometry: dict[str, Any] = field(default_factory=dict)
    image_shape: list[int] = field(default_factory=list)
    mask_shape: list[int] = field(default_factory=list)
    has_prediction: bool = True


@dataclass
class Example:
    """A loaded example: ``image`` (spatial..., [C]), ``mask`` and ``prediction`` (spatial)."""

    entry: Entry
    image: np.ndarray
    mask: np.ndarray
    prediction: np.ndarray | None

    @property
    def corrected_region(self) -> np.ndarray:
        """Boolean (spatial) map of where the correction differs from the prediction.

        Without a prediction, the whole corrected foreground counts as corrected.
        """
        if self.prediction is None:
            return np.asarray(self.mask) > 0
        return np.asarray(self.mask) != np.asarray(self.prediction)


def default_store_root(project: str = "default") -> Path:
    """The per-project store folder: ``$NAPARI_LGMS_CORRECTIONS_DIR/<project>`` or the user data folder."""
    if not _PROJECT_NAME.match(project or ""):
        raise InputError(
            f"project name {project!r} is not usable as a folder name; use letters, digits, '.', '_' or '-'"
        )
    base = os.environ.get(STORE_DIR_ENV)
    if base:
        return Path(base).expanduser() / project
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-lgms", appauthor=False)) / "corrections" / project


def _file_name_for(key: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:48] or "example"
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:10]
    return f"{slug}-{digest}.npz"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def _label_array(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise InputError(f"{what} must hold integer labels, got non-integer float values")
        array = array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise InputError(f"{what} must hold integer labels, got dtype {array.dtype}")
    if array.size and array.min() < 0:
        raise InputError(f"{what} has negative labels; labels are 0 (background) or positive integers")
    top = int(array.max()) if array.size else 0
    return array.astype(np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32)


class CorrectionsStore:
    """A folder of corrected examples; see the module docstring for the layout and guarantees."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()

    # -- manifest -------------------------------------------------------------------------
    def _manifest_path(self) -> Path:
        return self.root / MANIFEST

    def _read_manifest(self) -> dict[str, dict]:
        path = self._manifest_path()
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return dict(data.get("entries", {}))
        except (OSError, ValueError, AttributeError):
            return {}  # rebuilt from the data files below

    def _write_manifest(self, entries: dict[str, dict]) -> None:
        payload = {"format_version": FORMAT_VERSION, "entries": entries}
        try:
            atomic_write_text(self._manifest_path(), json.dumps(payload, indent=1, sort_keys=True))
        except OSError as error:
            raise OutputError(f"{self.root}: cannot write the corrections manifest ({error})") from None

    def _read_meta(self, file: Path) -> dict | None:
        try:
            with np.load(file, allow_pickle=False) as data:
                return json.loads(str(data["meta"]))
        except (OSError, ValueError, KeyError, EOFError):
            return None

    def _remove_stale_temp_files(self) -> None:
        """Delete ``.*.tmp`` files a killed write left behind (old enough not to be a live write)."""
        now = time.time()
        for temp in self.root.glob(".*.tmp"):
            try:
                if now - temp.stat().st_mtime > STALE_TEMP_SECONDS:
                    temp.unlink()
            except OSError:
                pass  # gone already, or a read-only store

    def _reconciled(self) -> dict[str, dict]:
        """Manifest entries whose file exists, plus data files the manifest lags behind on."""
        listed = self._read_manifest()
        entries = {k: v for k, v in listed.items() if (self.root / v.get("file", "")).is_file()}
        known_files = {v["file"] for v in entries.values()}
        if self.root.is_dir():
            self._remove_stale_temp_files()
            for file in sorted(self.root.glob("*.npz")):
                if file.name.startswith(".") or file.name in known_files:
                    continue
                meta = self._read_meta(file)
                if meta and "key" in meta and meta.get("file") == file.name:
                    entries[meta["key"]] = meta
        if entries != listed and self.root.is_dir():
            try:
                self._write_manifest(entries)
            except OutputError:
                pass  # read-only store: the reconciled view is still correct
        return entries

    # -- public API -----------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        """Every example, oldest first."""
        known = {f.name for f in fields_of(Entry)}
        rows = [Entry(**{k: v for k, v in m.items() if k in known}) for m in self._reconciled().values()]
        return sorted(rows, key=lambda e: (e.timestamp, e.key))

    def __len__(self) -> int:
        return len(self._reconciled())

    def __contains__(self, key: str) -> bool:
        return key in self._reconciled()

    def save(
        self,
        example_key: str,
        image: np.ndarray,
        mask: np.ndarray,
        prediction: np.ndarray | None,
        *,
        model: str,
        geometry: dict | None = None,
    ) -> Entry:
        """Store (or replace) an example; returns its entry.

        ``image`` is (*spatial) or (*spatial, C); ``mask`` and ``prediction``
        are integer labels of the spatial shape; ``geometry`` holds JSON-able
        values (scale, translate, spacing, affine, axes, layer, slice or box).
        """
        if not isinstance(example_key, str) or not example_key:
            raise InputError("an example key must be a non-empty string")
        image = np.asarray(image)
        if image.dtype.kind not in "biuf" or image.ndim < 2:
            raise InputError(f"image must be a numeric array with at least 2 axes, got {image.dtype} {image.shape}")
        mask = _label_array(mask, "mask")
        if image.shape[: mask.ndim] != mask.shape:
            raise InputError(
                f"mask shape {mask.shape} does not match the image's spatial shape {image.shape[: mask.ndim]}"
            )
        arrays = {"image": image, "mask": mask}
        if prediction is not None:
            prediction = _label_array(prediction, "prediction")
            if prediction.shape != mask.shape:
                raise InputError(f"prediction shape {prediction.shape} does not match mask shape {mask.shape}")
            arrays["prediction"] = prediction
        entry = Entry(
            key=example_key,
            file=_file_name_for(example_key),
            model=str(model),
            timestamp=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            geometry=_jsonable(dict(geometry or {})),
            image_shape=list(image.shape),
            mask_shape=list(mask.shape),
            has_prediction=prediction is not None,
        )
        meta = asdict(entry)
        arrays["meta"] = np.array(json.dumps(meta))
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_with(self.root / entry.file, lambda tmp: _write_npz(tmp, arrays))
        except OSError as error:
            raise OutputError(f"{self.root}: cannot write example {example_key!r} ({error})") from None
        entries = self._reconciled()
        entries[example_key] = meta
        self._write_manifest(entries)
        return entry

    def load(self, key: str) -> Example:
        """The arrays of one example; KeyError names the known keys when absent."""
        entries = self._reconciled()
        if key not in entries:
            raise KeyError(f"no example {key!r} in {self.root}; stored: {', '.join(sorted(entries)) or 'none'}")
        meta = entries[key]
        known = {f.name for f in fields_of(Entry)}
        entry = Entry(**{k: v for k, v in meta.items() if k in known})
        with np.load(self.root / entry.file, allow_pickle=False) as data:
            image = np.array(data["image"])
            mask = np.array(data["mask"])
            prediction = np.array(data["prediction"]) if "prediction" in data.files else None
        return Example(entry, image, mask, prediction)

    def delete(self, key: str) -> None:
        """Remove an example (its file first, then its manifest entry)."""
        entries = self._reconciled()
        if key not in entries:
            raise KeyError(f"no example {key!r} in {self.root}")
        (self.root / entries[key]["file"]).unlink(missing_ok=True)
        del entries[key]
        self._write_manifest(entries)

    def __repr__(self) -> str:
        return f"CorrectionsStore({str(self.root)!r})"


def fields_of(cls):
    from dataclasses import fields

    return fields(cls)


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    with open(path, "wb") as handle:
        handle.write(buffer.getvalue())
