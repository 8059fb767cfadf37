"""Training data: finding image/mask pairs, preprocessing, seeded grouped splits, datasets.

Sources (:func:`discover_examples`):

* two folders of images and masks paired by name stem (``a.jpg`` <-> ``a.jpg`` /
  ``a.png`` / ``a_mask.png``), any format :mod:`napari_lgms.io` reads; JPEG masks
  are thresholded by the reader;
* a folder holding ``images/`` and ``masks/``;
* a Medical Segmentation Decathlon task (``imagesTr/`` + ``labelsTr/``, same file
  names; hidden files such as macOS ``._*`` junk are skipped everywhere);
* a corrections store (``manifest.json`` / ``*.npz``) written by the napari widget.

Every example becomes a :class:`Sample`: ``image`` (C, *S) float32 normalised
exactly as inference normalises (:func:`napari_lgms.inference.normalize.normalize`
with the model card's spec), ``mask`` (*S) integer labels, and ``focus``, the
flat indices of the voxels patch sampling favours (voxels the user corrected,
else foreground).

Splits (:func:`split_examples`) are seeded and, optionally, grouped: images
whose thumbnails (grey, 32x32 or 16x16x16, z-scored) correlate at least
``duplicate_correlation`` are joined (union-find) and a group goes wholly to
training or to validation. (A 64-bit average hash chained BUSI's similar-looking
ultrasound frames into one group of hundreds; thumbnail correlation finds Kvasir's
4 known duplicate pairs and BUSI's re-exported copies without chaining.)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from napari_lgms._words import counted, plural
from napari_lgms.errors import InputError

MAX_FOCUS = 20000


def _io():
    import napari_lgms.io as io

    if hasattr(io, "read_image") and hasattr(io, "read_mask"):
        return io
    from napari_lgms.io import image as io_image

    return io_image


def visible_files(folder: Path) -> list[Path]:
    io = _io()
    return sorted(
        p for p in folder.iterdir()
        if not p.name.startswith(".") and (p.is_file() or p.is_dir()) and io.is_supported(p)
    )


def expand_path(text: str | os.PathLike) -> Path:
    """Expand ``~`` and ``$VARS``; an unset ``$NAPARI_LGMS_DATA`` is a clear error."""
    text = str(text)
    if "NAPARI_LGMS_DATA" in text and not os.environ.get("NAPARI_LGMS_DATA"):
        raise InputError(f"{text}: set NAPARI_LGMS_DATA to the datasets folder (e.g. ../shared/datasets)")
    return Path(os.path.expandvars(text)).expanduser()


# ----------------------------------------------------------------------------- raw examples
@dataclass
class RawExample:
    """Straight from disk: ``image`` (C, *S) in file intensities, ``mask`` (*S), ``region`` (*S) bool or None."""

    image: np.ndarray
    mask: np.ndarray
    region: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None


def _channels_first(array: np.ndarray, axes: str | None, spatial_ndim: int | None) -> np.ndarray:
    if axes is not None:
        return np.moveaxis(array, -1, 0) if axes.endswith("C") else array[None]
    if spatial_ndim is not None and array.ndim == spatial_ndim + 1:
        return np.moveaxis(array, -1, 0)
    return array[None]


@dataclass
class FilePair:
    """An image file and its mask file."""

    name: str
    image_path: Path
    mask_path: Path

    def load(self) -> RawExample:
        io = _io()
        image = io.read_image(self.image_path)
        mask = np.asarray(io.read_mask(self.mask_path))
        array = _channels_first(np.asarray(image.array), getattr(image, "axes", None), None)
        if array.shape[1:] != mask.shape:
            raise InputError(
                f"{self.mask_path.name}: mask shape {mask.shape} does not match image "
                f"{self.image_path.name} spatial shape {array.shape[1:]}"
            )
        spacing = getattr(image, "spacing", None)
        return RawExample(array, mask, None, tuple(float(s) for s in spacing) if spacing else None)


@dataclass
class StoredCorrection:
    """One example of a corrections store."""

    name: str
    root: Path
    key: str

    def load(self) -> RawExample:
        from napari_lgms.corrections import CorrectionsStore

        example = CorrectionsStore(self.root).load(self.key)
        mask = np.asarray(example.mask)
        axes = example.entry.geometry.get("axes")
        axes = axes if isinstance(axes, str) and len(axes) == np.asarray(example.image).ndim else None
        array = _channels_first(np.asarray(example.image), axes, mask.ndim)
        region = example.corrected_region
        spacing = example.entry.geometry.get("spacing")
        spacing = tuple(float(s) for s in spacing) if spacing and len(spacing) == mask.ndim else None
        return RawExample(array, mask, region if region.any() else None, spacing)


def pair_folders(images: Path, masks: Path) -> tuple[list[FilePair], list[str]]:
    """Pair every image with its mask (:func:`napari_lgms.evaluation.pair_files`); returns
    (pairs, unpaired image names)."""
    from napari_lgms.evaluation import pair_files
    from napari_lgms.io.image import stem_of

    for folder, what in ((images, "image"), (masks, "mask")):
        if not folder.is_dir():
            raise InputError(f"{folder}: {what} folder not found")
    paired, unpaired, _ = pair_files(visible_files(images), visible_files(masks))
    return [FilePair(stem_of(image), image, mask) for image, mask in paired], [p.name for p in unpaired]


def dataset_folders(root: Path) -> tuple[Path, Path, str] | None:
    """(images, masks, kind) of a dataset folder: an MSD task (``imagesTr/`` + ``labelsTr/``,
    kind "msd") or ``images/`` + ``masks/`` (kind "folders"); None for neither."""
    for images, masks, kind in (("imagesTr", "labelsTr", "msd"), ("images", "masks", "folders")):
        if (root / images).is_dir() and (root / masks).is_dir():
            return root / images, root / masks, kind
    return None


def discover_examples(data: str = "", images: str = "", masks: str = "") -> tuple[list, str, list[str]]:
    """Find the examples of a data source; returns (examples, kind, unpaired names).

    ``kind`` is "folders", "msd" or "corrections".
    """
    if images or masks:
        if not (images and masks):
            raise InputError("give both --images and --masks (folders paired by file name)")
        pairs, unpaired = pair_folders(expand_path(images), expand_path(masks))
        kind = "folders"
    else:
        root = expand_path(data)
        if not root.is_dir():
            raise InputError(f"{root}: data folder not found")
        layout = dataset_folders(root)
        if layout is not None:
            images_dir, masks_dir, kind = layout
            pairs, unpaired = pair_folders(images_dir, masks_dir)
        elif (root / "manifest.json").is_file() or any(root.glob("*.npz")):
            from napari_lgms.corrections import CorrectionsStore

            keys = [e.key for e in CorrectionsStore(root).entries()]
            pairs, unpaired, kind = [StoredCorrection(k, root, k) for k in keys], [], "corrections"
        else:
            raise InputError(
                f"{root}: not a dataset; expected images/ + masks/, imagesTr/ + labelsTr/ (MSD) "
                "or a corrections store (manifest.json)"
            )
    if not pairs:
        raise InputError(f"no image/mask pairs found in {data or images}")
    return pairs, kind, unpaired


# ----------------------------------------------------------------------------- preprocessing
@dataclass(frozen=True)
class PrepareSpec:
    """How raw examples become network inputs (the model card's input contract)."""

    in_channels: int
    num_classes: int  # network outputs; 1 = binary (sigmoid)
    spatial_dims: int
    patch_size: tuple[int, ...]
    input_mode: str  # "resize" | "patch"
    normalization: dict = field(default_factory=dict, hash=False)
    spacing: tuple[float, ...] | None = None  # "patch" mode: resample to it where an example's is known


@dataclass
class Sample:
    """A prepared example: ``image`` (C, *S) float32, ``mask`` (*S) uint8/int64, ``focus`` flat indices,
    ``region`` (*S) bool: where the user changed the model's prediction (corrections only)."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    focus: np.ndarray | None
    spacing: tuple[float, ...] | None = None
    original_shape: tuple[int, ...] = ()  # spatial shape before any resize
    region: np.ndarray | None = None


def _resize_labels(mask: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """(*S) -> (*size), nearest neighbour (labels are never blended)."""
    if tuple(mask.shape) == tuple(size):
        return mask
    import torch
    import torch.nn.functional as F

    labels = torch.from_numpy(np.ascontiguousarray(mask).astype(np.float32))[None, None]
    return F.interpolate(labels, size=size, mode="nearest")[0, 0].numpy().astype(mask.dtype)


def resize_image(image: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """(C, *S) -> (C, *size) with the inference engine's resampling."""
    import torch

    from napari_lgms.inference.geometry import resize

    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    return resize(tensor, size)[0].numpy()


def prepare(raw: RawExample, spec: PrepareSpec, name: str = "image") -> Sample:
    """Channel mapping, normalisation, resize (resize mode) or resampling to ``spec.spacing``
    (patch mode, as inference resamples), label checks, focus voxels."""
    from napari_lgms.inference.geometry import match_channels, resampled_shape
    from napari_lgms.inference.normalize import normalize

    image = raw.image
    if image.ndim - 1 != spec.spatial_dims:
        raise InputError(
            f"{name}: has {image.ndim - 1} spatial axes, the model is {spec.spatial_dims}D"
        )
    # The same channel mapping, normalisation and resampling, in the same order, as inference.
    try:
        image = match_channels(image, spec.in_channels)
    except InputError as error:
        raise InputError(f"{name}: {error}") from None
    image = normalize(image, spec.normalization)
    mask = np.asarray(raw.mask)
    region, spacing = raw.region, raw.spacing
    size = None
    if spec.input_mode == "resize":
        size = tuple(spec.patch_size)
    elif spec.spacing is not None and spacing is not None and len(spacing) == mask.ndim:
        size = resampled_shape(tuple(mask.shape), spacing, spec.spacing)
        spacing = tuple(spec.spacing) if size else spacing
    if size is not None:
        if region is not None:
            region = _resize_labels(region.astype(np.uint8), size).astype(bool)
        image, mask = resize_image(image, size), _resize_labels(mask, size)
    if spec.num_classes == 1:
        mask = (mask > 0).astype(np.uint8)
    else:
        top = int(mask.max()) if mask.size else 0
        if top >= spec.num_classes:
            raise InputError(
                f"{name}: mask has label {top}, the model has {spec.num_classes} classes (labels 0..{spec.num_classes - 1})"
            )
        mask = mask.astype(np.int64)
    source = region if region is not None and region.any() else mask > 0
    focus = np.flatnonzero(source)
    if len(focus) > MAX_FOCUS:
        focus = np.random.default_rng(0).choice(focus, MAX_FOCUS, replace=False)
    return Sample(name, image, mask, focus if len(focus) else None, spacing, tuple(raw.image.shape[1:]),
                  region if region is not None and region.any() else None)


# ----------------------------------------------------------------------------- near duplicates & split
def thumbnail(image: np.ndarray) -> np.ndarray:
    """(C, *S) -> flat float32 z-scored grey thumbnail: area-downsampled to 32x32 (2D) or 16x16x16 (3D)."""
    import torch
    import torch.nn.functional as F

    grey = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).mean(0, keepdim=True)[None]
    pool = F.adaptive_avg_pool2d if grey.ndim == 4 else F.adaptive_avg_pool3d
    small = pool(grey, (32, 32) if grey.ndim == 4 else (16, 16, 16)).flatten()
    return ((small - small.mean()) / (small.std(unbiased=False) + 1e-6)).numpy()


def duplicate_groups(thumbnails: list[np.ndarray], min_correlation: float) -> list[int]:
    """Union-find over pairs whose thumbnails correlate >= ``min_correlation``; a group id per item."""
    vectors = np.stack(thumbnails).astype(np.float32) if len(thumbnails) else np.zeros((0, 1), np.float32)
    n, length = vectors.shape
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, n, 512):
        correlation = vectors[start:start + 512] @ vectors.T / length
        rows, cols = np.nonzero(correlation >= min_correlation)
        for r, c in zip(rows + start, cols):
            if r < c:
                a, b = find(int(r)), find(int(c))
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return [find(i) for i in range(n)]


@dataclass
class Split:
    """Indices of a seeded split and how it was made (recorded in the model card)."""

    train: list[int]
    val: list[int]
    seed: int
    val_fraction: float
    grouped: bool
    groups: int
    validated_on_training: bool = False
    source: str = ""  # the split file it was read from, if any

    def describe(self) -> str:
        if self.source:
            return f"recorded split {self.source}: {len(self.val)} validation / {len(self.train)} training"
        if self.validated_on_training:
            return f"training examples (only {len(self.train)}: too few to hold any out)"
        how = f"near-duplicate groups ({self.groups} groups)" if self.grouped else "examples"
        return (f"seeded random split of {how}: {len(self.val)} validation / {len(self.train)} training, "
                f"val_fraction {self.val_fraction}, seed {self.seed}")


def split_examples(count: int, val_fraction: float, seed: int, groups: list[int] | None = None,
                   min_for_holdout: int = 3) -> Split:
    """Shuffle the groups with ``numpy.random.default_rng(seed)``; validation takes whole groups
    in that order until it holds at least ``round(val_fraction * count)`` examples (at least 1),
    passing over any group that would overshoot that by more than 10 % (big groups train).

    Fewer than ``min_for_holdout`` examples, or ``val_fraction == 0``: validate on the training set.
    """
    if count < min_for_holdout or val_fraction <= 0:
        everything = list(range(count))
        return Split(everything, everything, seed, val_fraction, False, count, validated_on_training=True)
    group_of = list(groups) if groups is not None else list(range(count))
    unique = sorted(set(group_of))
    order = np.random.default_rng(seed).permutation(len(unique))
    wanted = max(1, int(round(val_fraction * count)))
    ceiling = wanted + max(1, wanted // 10)
    members: dict[int, list[int]] = {}
    for index, g in enumerate(group_of):
        members.setdefault(g, []).append(index)
    val: list[int] = []
    for position in order:
        if len(val) >= wanted:
            break
        candidate = members[unique[position]]
        if len(val) + len(candidate) >= count or (val and len(val) + len(candidate) > ceiling):
            continue
        val.extend(candidate)
    val_set = set(val)
    train = [i for i in range(count) if i not in val_set]
    return Split(train, sorted(val), seed, val_fraction, groups is not None, len(unique))


def read_split(path: str | os.PathLike, what: str = "split_file") -> dict:
    """A run's ``split.json`` with its ``"val"`` example names (name stems) as a list of str;
    ``what`` names the setting or flag it came from in the error message."""
    import json

    try:
        record = json.loads(Path(path).expanduser().read_text())
        record["val"] = [str(name) for name in record["val"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{what} {path}: not a readable split.json with a \"val\" list ({error})") from None
    return record


def split_from_file(path: Path, names: list[str]) -> Split:
    """The split recorded in ``path`` (a run's ``split.json``: ``"val"`` example names, plus its
    ``seed``/``val_fraction``); every other example trains. Listed names that are missing are an error."""
    record = read_split(path)
    wanted = record["val"]
    index = {name: i for i, name in enumerate(names)}
    missing = [name for name in wanted if name not in index]
    if missing:
        raise InputError(f"split_file {path}: {counted(len(missing), 'validation example')} "
                         f"{plural(len(missing), 'is', 'are')} not in the data, e.g. {missing[0]!r}; "
                         "use the data the split was made on")
    val = sorted(index[name] for name in wanted)
    chosen = set(val)
    train = [i for i in range(len(names)) if i not in chosen]
    return Split(train, val, int(record.get("seed", 0)), float(record.get("val_fraction", 0.0)),
                 bool(record.get("grouped_near_duplicates", False)), int(record.get("groups", 0)),
                 source=Path(path).as_posix())


# ----------------------------------------------------------------------------- dataset
class SampleCache:
    """Prepared samples by index, loaded on first use and kept (if ``keep``)."""

    def __init__(self, examples: list, spec: PrepareSpec, keep: bool = True):
        self.examples = examples
        self.spec = spec
        self.keep = keep
        self._samples: dict[int, Sample] = {}

    def __len__(self) -> int:
        return len(self.examples)

    def get(self, index: int) -> Sample:
        sample = self._samples.get(index)
        if sample is None:
            example = self.examples[index]
            sample = prepare(example.load(), self.spec, example.name)
            if self.keep:
                self._samples[index] = sample
        return sample

    def preload(self, indices: list[int] | None = None) -> Iterator[int]:
        """Load everything now (yields how many are done), so training never waits on disk."""
        for done, index in enumerate(indices if indices is not None else range(len(self)), 1):
            self.get(index)
            yield done


class TrainingDataset:
    """Map-style dataset of augmented ``(image (C, *P) float32, mask (*P) int64)`` tensors.

    Item ``i`` of epoch ``e`` draws its patch and augmentation from
    ``numpy.random.default_rng([seed, e, i])``: identical across runs, resumes
    and worker layouts. ``samples_per_epoch`` > 0 cycles over the examples.
    """

    def __init__(self, cache: SampleCache, indices: list[int], augment_params, seed: int,
                 foreground_bias: float = 0.5, samples_per_epoch: int = 0, patch_size=None):
        self.cache = cache
        self.indices = list(indices)
        self.augment_params = augment_params
        self.seed = int(seed)
        self.foreground_bias = float(foreground_bias)
        self.samples_per_epoch = int(samples_per_epoch)
        self.patch_size = tuple(patch_size or cache.spec.patch_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch or len(self.indices)

    def __getitem__(self, item: int):
        import torch

        from napari_lgms.training.augment import augment, sample_patch

        rng = np.random.default_rng([self.seed, self.epoch, int(item)])
        sample = self.cache.get(self.indices[int(item) % len(self.indices)])
        image, mask = sample.image, sample.mask
        if self.cache.spec.input_mode == "patch" or tuple(mask.shape) != self.patch_size:
            image, mask = sample_patch(image, mask, self.patch_size, rng, sample.focus, self.foreground_bias)
        image, mask = augment(image, mask, rng, self.augment_params)
        return torch.from_numpy(image), torch.from_numpy(mask.astype(np.int64))


def near_duplicate_groups(cache: SampleCache, min_correlation: float) -> list[int]:
    """A group id per example of ``cache`` (see :func:`duplicate_groups`)."""
    return duplicate_groups([thumbnail(cache.get(i).image) for i in range(len(cache))], min_correlation)
