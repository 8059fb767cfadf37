"""The corrections store: examples a user corrected in napari, kept for fine-tuning.

Pure Python + numpy (no Qt, no torch). A store is a folder::

    ROOT/manifest.json                  index: key -> entry (rewritten atomically)
    ROOT/<slug>-<hash>-<token>.npz      one file per saved version of an example

Each ``.npz`` holds ``image`` (the pixels the model saw, any shape with the
spatial axes first as in napari, channels last if any), ``mask`` (the corrected
labels, spatial shape), optionally ``prediction`` (the model's original
labels, spatial shape) and ``meta`` (a JSON string: key, file, model, timestamp,
geometry, shapes, and the clicks that made the mask when click mode made it). A file is written once under a new unique name and never
changed, and its own ``meta`` describes its pixels, so metadata and pixels
always change together. The manifest says which file is current for a key:

* saving writes the new file first, then switches the manifest to it (the
  commit point), then deletes the previous version. A crash before the switch
  leaves a newer file the manifest does not list yet: opening the store adopts
  it (its ``meta`` says everything), so an example is never lost; a crash after
  it leaves an older version no entry names, removed once stale;
* deleting removes the example's files first, then the manifest entry. A crash
  between the two leaves a manifest entry without a file: it is dropped on
  opening, so a deleted example never comes back;
* a crash inside a write leaves at most a hidden ``.*.tmp`` file, ignored and
  cleaned up once stale.

Entries are data, not instructions: a manifest entry whose ``file`` is not a
plain ``.npz`` name inside the store is refused (left out of listings with a
warning; :meth:`CorrectionsStore.load` and :meth:`~CorrectionsStore.delete`
raise), and an unreadable or truncated file is left out with a warning, so
training uses the rest. Saving the same key again replaces the example.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import warnings
import zipfile
import zlib
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from napari_lgms._atomic import STALE_SECONDS, atomic_write_text, atomic_write_with, read_regular_file, remove_stale
from napari_lgms.errors import InputError, OutputError

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20
FORMAT_VERSION = 1
STORE_DIR_ENV = "NAPARI_LGMS_CORRECTIONS_DIR"
STALE_TEMP_SECONDS = STALE_SECONDS  # a write in progress is seconds old; older leftovers are from a crash
_PLAIN_NPZ = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,200}\.npz")
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
    clicks: list[dict[str, Any]] = field(default_factory=list)  # each {"position", "positive", "label"}


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


class StoreWarning(UserWarning):
    """An entry or file of a corrections store that was left out (the message says which and why)."""


def _key_prefix(key: str) -> str:
    """The start of every file name of ``key``'s versions: a readable slug and a hash of the key."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:48] or "example"
    digest = hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{slug}-{digest}"


def _new_file_name(key: str) -> str:
    """A file name no earlier version of ``key`` used."""
    return f"{_key_prefix(key)}-{secrets.token_hex(4)}.npz"


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

    def _read_manifest(self) -> dict:
        """The manifest's entries as stored (possibly malformed: checked by :meth:`_scan`)."""
        data = _read_json(self._manifest_path())
        entries = data.get("entries") if isinstance(data, dict) else None
        return dict(entries) if isinstance(entries, dict) else {}  # else rebuilt from the data files

    def _write_manifest(self, entries: dict[str, dict]) -> None:
        payload = {"format_version": FORMAT_VERSION, "entries": entries}
        try:
            atomic_write_text(self._manifest_path(), json.dumps(payload, indent=1, sort_keys=True))
        except OSError as error:
            raise OutputError(f"{self.root}: cannot write the corrections manifest ({error})") from None

    def _data_file(self, name: object) -> Path | None:
        """``ROOT/name`` when ``name`` is a plain ``.npz`` file name (nothing outside the store), else None."""
        return self.root / name if isinstance(name, str) and _PLAIN_NPZ.fullmatch(name) else None

    def _read_meta(self, file: Path) -> dict | None:
        """The ``meta`` a data file holds about itself; None when unreadable or not describing ``file``."""
        try:
            with np.load(file, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
        except (OSError, ValueError, KeyError, EOFError, RecursionError, zipfile.BadZipFile):
            return None
        return meta if _entry_from_meta(meta) is not None and meta.get("file") == file.name else None

    # -- reconciling ----------------------------------------------------------------------
    def _scan(self) -> tuple[dict[str, dict], dict[str, str]]:
        """(entries whose data file exists, refused keys -> reason) with unlisted newer files adopted."""
        entries: dict[str, dict] = {}
        refused: dict[str, str] = {}
        for key, meta in self._read_manifest().items():
            file = self._data_file(meta.get("file") if isinstance(meta, dict) else None)
            if file is None or _entry_from_meta(meta) is None or meta["key"] != key:
                refused[key] = f"{self.root}: manifest entry {key!r} is malformed or names a file outside the store"
            elif file.is_file():
                entries[key] = meta
        listed = {meta["file"] for meta in entries.values()}
        for file in self._unlisted_files(listed):
            meta = self._read_meta(file)
            if meta is None:
                continue
            current = entries.get(meta["key"])
            if current is None or meta["timestamp"] > current["timestamp"]:
                entries[meta["key"]] = meta  # a save that stopped before switching the manifest
                refused.pop(meta["key"], None)  # a file in the store outranks a malformed entry
        return entries, refused

    def _unlisted_files(self, listed: set[str]) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(f for f in self.root.glob("*.npz")
                      if not f.name.startswith(".") and f.name not in listed and f.is_file())

    def _reconciled(self) -> dict[str, dict]:
        """:meth:`_scan`'s entries, written back when the manifest lagged, crash leftovers removed."""
        listed = self._read_manifest()
        entries, refused = self._scan()
        for reason in refused.values():
            warnings.warn(reason, StoreWarning, stacklevel=3)
        if self.root.is_dir():
            self._remove_leftovers(entries)
            if entries != {k: v for k, v in listed.items() if k not in refused}:
                try:
                    self._write_manifest({**{k: listed[k] for k in refused}, **entries})
                except OutputError:
                    pass  # read-only store: the reconciled view is still correct
        return entries

    def _remove_leftovers(self, entries: dict[str, dict]) -> None:
        """Delete stale temporary files and stale superseded versions of an example."""
        current = {meta["file"] for meta in entries.values()}
        prefixes = tuple(_key_prefix(key) + "-" for key in entries)
        superseded = [f for f in self._unlisted_files(current) if f.name.startswith(prefixes)
                      and (self._read_meta(f) or {}).get("key") in entries]
        remove_stale(superseded + list(self.root.glob(".*.tmp")))

    def _checked(self, key: str) -> dict:
        """The entry of ``key``; InputError when refused, KeyError (naming the keys) when absent."""
        entries, refused = self._scan()
        if key in refused:
            raise InputError(refused[key])
        if key not in entries:
            raise KeyError(f"no example {key!r} in {self.root}; stored: {', '.join(sorted(entries)) or 'none'}")
        return entries[key]

    # -- public API -----------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        """Every readable example, oldest first; unreadable ones are left out with a StoreWarning.

        Each entry is read from its data file's own ``meta``, so it describes the
        pixels that :meth:`load` returns. Training uses these keys.
        """
        rows = []
        for key, meta in self._reconciled().items():
            own = self._read_meta(self.root / meta["file"])
            if own is None or own["key"] != key:
                warnings.warn(f"{self.root}: example {key!r} left out: its file {meta['file']} is unreadable "
                              "or truncated", StoreWarning, stacklevel=2)
                continue
            rows.append(_entry_from_meta(own))
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
        clicks: list[dict] | None = None,
    ) -> Entry:
        """Store (or replace) an example; returns its entry.

        ``image`` is (*spatial) or (*spatial, C); ``mask`` and ``prediction``
        are integer labels of the spatial shape; ``geometry`` holds JSON-able
        values (scale, translate, spacing, affine, axes, layer, slice or box);
        ``clicks``: the clicks that made the mask (``position`` in the example's
        index coordinates, ``positive``, ``label``).
        """
        if not isinstance(example_key, str) or not example_key:
            raise InputError("an example key must be a non-empty string")
        arrays = _checked_arrays(image, mask, prediction)
        entry = Entry(
            key=example_key,
            file=_new_file_name(example_key),
            model=str(model),
            timestamp=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            geometry=_jsonable(dict(geometry or {})),
            image_shape=list(arrays["image"].shape),
            mask_shape=list(arrays["mask"].shape),
            has_prediction="prediction" in arrays,
            clicks=_jsonable(list(clicks or [])),
        )
        meta = asdict(entry)
        arrays["meta"] = np.array(json.dumps(meta))
        previous = self._reconciled().get(example_key, {}).get("file")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_with(self.root / entry.file, lambda tmp: _write_npz(tmp, arrays))
        except OSError as error:
            raise OutputError(f"{self.root}: cannot write example {example_key!r} ({error})") from None
        entries = self._reconciled()
        entries[example_key] = meta
        self._write_manifest(entries)  # the commit point: the key now names the new file
        if previous and previous != entry.file:
            (self.root / previous).unlink(missing_ok=True)
        return entry

    def load(self, key: str) -> Example:
        """The arrays of one example with the entry its file holds.

        KeyError names the known keys when absent; InputError (one line) when the
        entry is refused or its file is unreadable.
        """
        meta = self._checked(key)
        file = self.root / meta["file"]
        try:
            with np.load(file, allow_pickle=False) as data:
                own = _entry_from_meta(json.loads(str(data["meta"])))
                image = np.array(data["image"])
                mask = np.array(data["mask"])
                prediction = np.array(data["prediction"]) if "prediction" in data.files else None
        except (OSError, ValueError, KeyError, EOFError, RecursionError, zipfile.BadZipFile, zlib.error) as error:
            raise InputError(f"{self.root}: example {key!r} is unreadable ({file.name}: "
                             f"{' '.join(str(error).split())[:120]})") from None
        if own is None or own.key != key or own.file != file.name:
            raise InputError(f"{self.root}: example {key!r}: {file.name} describes another example")
        return Example(own, image, mask, prediction)

    def delete(self, key: str) -> None:
        """Remove an example (its files first, then its manifest entry); InputError for a refused entry."""
        meta = self._checked(key)
        for file in [self.root / meta["file"], *self.root.glob(f"{_key_prefix(key)}-*.npz")]:
            if (self._read_meta(file) or meta)["key"] == key:
                file.unlink(missing_ok=True)
        entries = self._reconciled()
        entries.pop(key, None)
        self._write_manifest(entries)

    def __repr__(self) -> str:
        return f"CorrectionsStore({str(self.root)!r})"


def _read_json(path: Path) -> object:
    """Parsed JSON of ``path``; None when missing, unreadable, malformed or nested too deeply."""
    try:
        return json.loads(read_regular_file(path, MAX_MANIFEST_BYTES).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


_ENTRY_TYPES = {"key": str, "file": str, "model": str, "timestamp": str, "geometry": dict,
                "image_shape": list, "mask_shape": list, "has_prediction": bool, "clicks": list}


def _entry_from_meta(meta: object) -> Entry | None:
    """An Entry from stored metadata, or None when a field is missing or of the wrong type."""
    if not isinstance(meta, dict):
        return None
    known = {f.name for f in fields(Entry)}
    values = {k: v for k, v in meta.items() if k in known}
    required = ("key", "file", "model", "timestamp")
    if any(k not in values for k in required):
        return None
    if not all(isinstance(v, _ENTRY_TYPES[k]) for k, v in values.items()):
        return None
    return Entry(**values)


def _checked_arrays(image, mask, prediction) -> dict[str, np.ndarray]:
    """The arrays to store, checked (InputError otherwise): image, mask, optional prediction."""
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
    return arrays


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    with open(path, "wb") as handle:
        handle.write(buffer.getvalue())
