"""Format-independent image I/O: :class:`ImageData`, reading, mask writing, napari layer kwargs.

Layout convention (every format): the array holds the spatial axes first in napari
order (``Z, Y, X`` for volumes, ``Y, X`` for 2D images) and at most one channel axis
last, e.g. ``"YX"``, ``"YXC"``, ``"ZYX"``, ``"ZYXC"``. ``spacing``, ``units`` and
``affine`` are given in the same order (array index -> world coordinate).

NIfTI orientation convention (see :mod:`napari_lgms.io.nifti`): voxels are never
resampled or flipped. The file's ``(i, j, k[, t])`` array is returned with the
spatial axes reversed, ``(k, j, i[, t])``, and the world axes are reversed the same
way, so ``affine = J @ file_affine @ J`` maps ``(k, j, i)`` to ``(S, A, R)`` world
millimetres (``J`` swaps axis order). Writing reverses the axes back and reuses the
source header, so masks overlay the source exactly in other viewers.

Heavy readers (nibabel, tifffile, Pillow) are imported lazily: importing this module
is cheap and never imports torch or Qt.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_lgms.errors import ImageReadError, InputError, LgmsError, OutputError

SPATIAL_AXES = "ZYX"
SUPPORTED_SUFFIXES: tuple[str, ...] = (
    ".nii", ".nii.gz", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp",
)
MASK_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz", ".tif", ".tiff", ".png")
_FORMAT_BY_SUFFIX = {
    ".nii": "nifti", ".nii.gz": "nifti", ".tif": "tiff", ".tiff": "tiff",
    ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".bmp": "bmp",
}
RASTER_FORMATS = ("png", "jpeg", "bmp")
MAX_LABEL = 65535


@dataclass
class ImageData:
    """An image or volume with its geometry.

    ``array``: spatial axes first (napari order), channel axis last if any.
    ``spacing``/``units``: one entry per spatial axis, in array order.
    ``affine``: ``(d+1, d+1)`` for ``d`` spatial axes, array index -> world.
    ``header``: format-specific information used to write masks back (e.g. the
    NIfTI header and the original file layout).
    """

    array: np.ndarray
    axes: str
    spacing: tuple[float, ...] | None
    units: tuple[str, ...] | None
    affine: np.ndarray | None
    source: Path | None
    format: str
    header: object | None = None

    @property
    def channel_axis(self) -> int | None:
        index = self.axes.find("C")
        return None if index < 0 else index

    @property
    def spatial_dims(self) -> int:
        return sum(axis in SPATIAL_AXES for axis in self.axes)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(
            int(size) for size, axis in zip(self.array.shape, self.axes) if axis in SPATIAL_AXES
        )

    @property
    def channels(self) -> int:
        axis = self.channel_axis
        return 1 if axis is None else int(self.array.shape[axis])

    def without_array(self) -> "ImageData":
        """Copy whose ``array`` is a zero-memory, read-only placeholder of the same shape and dtype."""
        placeholder = np.broadcast_to(np.zeros((), dtype=self.array.dtype), self.array.shape)
        return dataclasses.replace(self, array=placeholder)

    def __deepcopy__(self, memo: dict) -> "ImageData":
        # A placeholder array (zero strides) must stay a placeholder, not become a full copy.
        if self.array.size and all(stride == 0 for stride in self.array.strides):
            array = np.broadcast_to(np.zeros((), dtype=self.array.dtype), self.array.shape)
        else:
            array = self.array.copy()
        fields = {
            field.name: copy.deepcopy(getattr(self, field.name), memo)
            for field in dataclasses.fields(self)
            if field.name != "array"
        }
        return ImageData(array=array, **fields)


# --------------------------------------------------------------------------- suffixes


def suffix_of(path: str | Path) -> str:
    """Lower-case suffix, treating ``.nii.gz`` as one suffix."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def stem_of(path: str | Path) -> str:
    name = Path(path).name
    suffix = suffix_of(path)
    return name[: len(name) - len(suffix)] if suffix else name


def format_of(path: str | Path) -> str | None:
    """``"nifti" | "tiff" | "png" | "jpeg" | "bmp" | "dicom"`` or None when unsupported (folders: DICOM)."""
    path = Path(path)
    if path.is_dir() or suffix_of(path) == ".dcm":
        return "dicom"
    return _FORMAT_BY_SUFFIX.get(suffix_of(path))


def is_supported(path: str | Path) -> bool:
    """True when the suffix is one :func:`read_image` reads (no file access except for folders)."""
    path = Path(path)
    if suffix_of(path) in SUPPORTED_SUFFIXES:
        return True
    from napari_lgms.io import dicom

    return dicom.looks_like_dicom(path)


def mask_suffix_for(image_path: str | Path) -> str:
    """Suffix for a mask of ``image_path``: NIfTI -> same NIfTI suffix, TIFF -> same, 2D rasters -> ``.png``."""
    fmt = format_of(image_path)
    suffix = suffix_of(image_path)
    if fmt in ("nifti", "tiff"):
        return suffix
    if fmt in RASTER_FORMATS:
        return ".png"
    if fmt == "dicom":
        return ".nii.gz"
    raise InputError(
        f"no mask format for {Path(image_path).name!r}; accepted images: {', '.join(SUPPORTED_SUFFIXES)}"
    )


# --------------------------------------------------------------------------- reading


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def read_image(path: str | Path) -> ImageData:
    """Read an image or volume; raises :class:`ImageReadError` (one line) when it cannot."""
    path = Path(path)
    check_source(path)
    fmt = format_of(path)
    if fmt is None:
        raise ImageReadError(
            f"unsupported image type {suffix_of(path) or '(no suffix)'!r} for {path.name!r}; "
            f"accepted: {', '.join(SUPPORTED_SUFFIXES)} or a DICOM series folder"
        )
    try:
        image = _read_by_format(path, fmt)
    except LgmsError as error:
        raise ImageReadError(_one_line(str(error))) from error
    except MemoryError as error:
        raise ImageReadError(f"{path.name}: not enough memory to read this image") from error
    except Exception as error:  # any library failure on a broken file
        detail = _one_line(f"{type(error).__name__}: {error}")
        raise ImageReadError(f"cannot read {path.name} as {fmt}: {detail}") from error
    validate_image(image, path.name)
    return image


def check_source(path: Path, what: str = "image") -> None:
    """Refuse, without opening it, anything but a regular file or a DICOM series folder.

    A FIFO, socket or device would block or never end; a folder is read only as a
    DICOM series, so an empty folder and a folder of other files get their own message.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ImageReadError(f"{what} not found: {path}") from None
    except OSError as error:
        raise ImageReadError(f"cannot access {path}: {error.strerror or type(error).__name__}") from None
    if stat.S_ISREG(mode):
        return
    if not stat.S_ISDIR(mode):
        raise ImageReadError(f"{path}: not a regular file (a pipe, socket or device); give an image file")
    from napari_lgms.io import dicom

    if dicom.looks_like_dicom(path):
        return
    if not dicom.visible_files(path):
        raise ImageReadError(f"{path}: empty folder; give an image file or a folder of DICOM slices")
    raise ImageReadError(f"{path}: a folder, not an image file; folders are read as DICOM series only, "
                         "and its files carry no DICOM header")


def _read_by_format(path: Path, fmt: str) -> ImageData:
    if fmt == "nifti":
        from napari_lgms.io import nifti

        return nifti.read_nifti(path)
    if fmt == "tiff":
        from napari_lgms.io import tiff

        return tiff.read_tiff(path)
    if fmt == "dicom":
        from napari_lgms.io import dicom

        return dicom.read_dicom_series(path)
    from napari_lgms.io import raster

    return raster.read_raster(path, fmt)


def validate_image(image: ImageData, name: str = "image") -> None:
    """Reject empty arrays, anything beyond 2-3 spatial axes + 1 channel axis, and inconsistent axes."""
    array = image.array
    if len(image.axes) != array.ndim:
        raise ImageReadError(f"{name}: axes {image.axes!r} do not match the array shape {array.shape}")
    if array.ndim > 4:
        raise ImageReadError(
            f"{name}: {array.ndim}D data (shape {array.shape}) is not supported; "
            "accepted: 2D or 3D images with at most one channel axis"
        )
    if array.size == 0:
        raise ImageReadError(f"{name}: the image is empty (shape {array.shape})")
    if image.spatial_dims not in (2, 3):
        raise ImageReadError(f"{name}: expected 2 or 3 spatial axes, got axes {image.axes!r}")
    if image.axes.count("C") > 1:
        raise ImageReadError(f"{name}: more than one channel axis ({image.axes!r})")
    if array.dtype.kind not in "biuf":
        raise ImageReadError(f"{name}: unsupported pixel type {array.dtype}; accepted: integer or float")


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask as integer labels with the spatial shape of the matching image.

    JPEG masks (lossy) are thresholded at half the range of their dtype
    (``>= 128`` for 8 bit) -> ``{0, 1}``. PNG/BMP/TIFF/NIfTI values are kept as
    labels (palette PNGs give palette indices; colour-coded RGB masks give one
    label per colour, black = 0). Float masks must hold whole numbers, or lie in
    ``[0, 1]`` (thresholded at 0.5). Returns uint8 when labels fit, else uint16/int32.
    """
    path = Path(path)
    fmt = format_of(path)
    if fmt in ("png", "bmp"):
        check_source(path, "mask")
        from napari_lgms.io import raster

        try:
            values = raster.read_raster_labels(path)
        except Exception as error:
            raise ImageReadError(
                f"cannot read mask {path.name}: {_one_line(f'{type(error).__name__}: {error}')}"
            ) from error
        return _to_labels(_collapse_channels(values, "YXC" if values.ndim == 3 else "YX", path.name), path.name)
    image = read_image(path)
    if fmt == "jpeg":  # lossy: channels differ by noise, so average them before thresholding
        values = image.array
        if image.channel_axis is not None:
            colour = np.moveaxis(values, image.channel_axis, -1)
            colour = colour[..., :3] if colour.shape[-1] == 4 else colour
            values = np.rint(colour.mean(axis=-1)).astype(image.array.dtype)
        return _threshold_half_range(values)
    values = _collapse_channels(image.array, image.axes, path.name)
    return _to_labels(values, path.name)


def _collapse_channels(values: np.ndarray, axes: str, name: str) -> np.ndarray:
    """Drop the channel axis: identical channels -> one; RGB colour codes -> one label per colour."""
    if "C" not in axes:
        return values
    channel_axis = axes.index("C")
    values = np.moveaxis(values, channel_axis, -1)
    if values.shape[-1] in (2, 4):  # grey+alpha or RGBA: ignore alpha
        values = values[..., :-1]
    if all(np.array_equal(values[..., 0], values[..., c]) for c in range(1, values.shape[-1])):
        return values[..., 0]
    if values.shape[-1] != 3:
        raise InputError(f"mask {name} has {values.shape[-1]} different channels; expected a single-channel label image")
    colours, inverse = np.unique(values.reshape(-1, 3), axis=0, return_inverse=True)
    labels = inverse.reshape(values.shape[:-1]) + 1
    black = np.flatnonzero((colours == 0).all(axis=1))
    if black.size:
        labels[labels == black[0] + 1] = 0
        labels[labels > black[0] + 1] -= 1
    return labels


def _threshold_half_range(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "ui":
        half = (int(np.iinfo(values.dtype).max) + 1) / 2
    else:
        half = 0.5
    return (values >= half).astype(np.uint8)


def _to_labels(values: np.ndarray, name: str) -> np.ndarray:
    if values.dtype == bool:
        return values.astype(np.uint8)
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.all():
            raise InputError(f"mask {name} contains NaN or infinite values")
        if np.array_equal(values, np.round(values)):
            values = values.astype(np.int64)
        elif values.min() >= 0 and values.max() <= 1:
            return (values >= 0.5).astype(np.uint8)
        else:
            raise InputError(f"mask {name} holds fractional values outside [0, 1]; expected integer labels")
    if values.size and values.min() < 0:
        raise InputError(f"mask {name} holds negative values; expected labels >= 0")
    top = int(values.max()) if values.size else 0
    dtype = np.uint8 if top <= 255 else np.uint16 if top <= MAX_LABEL else np.int32
    return values.astype(dtype, copy=False)


# --------------------------------------------------------------------------- writing


def label_array_for_writing(mask: np.ndarray) -> np.ndarray:
    """Labels as uint8 when they fit, else uint16; rejects negatives, fractions and labels > 65535."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    if mask.dtype.kind not in "uif":
        raise InputError(f"mask dtype {mask.dtype} is not supported; expected integer labels")
    if mask.dtype.kind == "f" and not np.array_equal(mask, np.round(mask)):
        raise InputError("mask holds fractional values; expected integer labels")
    if mask.size and mask.min() < 0:
        raise InputError("mask holds negative values; expected labels >= 0")
    top = int(mask.max()) if mask.size else 0
    if top > MAX_LABEL:
        raise InputError(f"mask label {top} is larger than {MAX_LABEL}; at most {MAX_LABEL} labels can be written")
    return mask.astype(np.uint8 if top <= 255 else np.uint16)


def write_mask(mask: np.ndarray, path: str | Path, reference: ImageData | None = None) -> Path:
    """Write a label mask atomically; the format comes from the suffix (.nii/.nii.gz/.tif/.tiff/.png).

    ``mask``: spatial shape of ``reference`` (napari order, no channel axis) when given.
    NIfTI reuses the reference affine and header, TIFF keeps the voxel size, PNG is 2D only.
    Raises :class:`InputError` for a bad mask and :class:`OutputError` for a bad destination.
    """
    path = Path(path)
    suffix = suffix_of(path)
    if suffix not in MASK_SUFFIXES:
        raise OutputError(
            f"cannot write a mask as {suffix or '(no suffix)'!r} ({path.name}); accepted: {', '.join(MASK_SUFFIXES)}"
        )
    mask = np.asarray(mask)
    if mask.ndim not in (2, 3):
        raise InputError(f"mask must be 2D or 3D, got shape {mask.shape}")
    if reference is not None and tuple(mask.shape) != reference.spatial_shape:
        raise InputError(
            f"mask shape {mask.shape} does not match the image's spatial shape {reference.spatial_shape}"
        )
    labels = label_array_for_writing(mask)
    fmt = _FORMAT_BY_SUFFIX[suffix]
    with _as_output_error(path):
        if fmt == "nifti":
            from napari_lgms.io import nifti

            nifti.write_nifti_mask(labels, path, reference)
        elif fmt == "tiff":
            from napari_lgms.io import tiff

            tiff.write_tiff_mask(labels, path, reference)
        else:
            if labels.ndim != 2:
                raise InputError(f"PNG masks must be 2D, got shape {labels.shape}; use .nii.gz or .tif for volumes")
            from napari_lgms.io import raster

            raster.write_png_mask(labels, path)
    return path


PROBABILITY_SUFFIXES = (".nii.gz", ".nii", ".tif", ".tiff")


def write_probabilities(probabilities: np.ndarray, path: str | Path, reference: ImageData) -> Path:
    """Write float32 probabilities, (*spatial) or (K, *spatial), as NIfTI or TIFF, atomically.

    NIfTI reuses the reference header and affine (class axis as the 4th file
    axis); TIFF is ImageJ-style with the class axis as channels.
    """
    path = Path(path)
    suffix = suffix_of(path)
    if suffix not in PROBABILITY_SUFFIXES:
        raise OutputError(f"cannot write probabilities as {suffix or '(no suffix)'!r} ({path.name}); "
                          f"accepted: {', '.join(PROBABILITY_SUFFIXES)}")
    data = np.asarray(probabilities, dtype=np.float32)
    has_classes = data.ndim == len(reference.spatial_shape) + 1
    if tuple(data.shape[int(has_classes):]) != reference.spatial_shape:
        raise InputError(f"probabilities of shape {data.shape} do not match the image's spatial shape "
                         f"{reference.spatial_shape}")
    with _as_output_error(path):
        if _FORMAT_BY_SUFFIX[suffix] == "nifti":
            from napari_lgms.io import nifti

            nifti.write_nifti_array(data, path, reference, has_classes=has_classes)
        else:
            from napari_lgms.io import tiff

            tiff.write_tiff_array(data, path, reference, has_classes=has_classes)
    return path


@contextlib.contextmanager
def _as_output_error(path: Path):
    """Turn an OS error while writing ``path`` into a one-line :class:`OutputError`."""
    try:
        yield
    except LgmsError:
        raise
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise OutputError(f"cannot write {path}: {_one_line(reason)}") from error


# --------------------------------------------------------------------------- napari


def spatial_axis_labels(image: ImageData) -> tuple[str, ...]:
    return tuple(axis.lower() for axis in image.axes if axis in SPATIAL_AXES)


def is_rgb(image: ImageData) -> bool:
    """True for 3/4-channel raster images and TIFF/NIfTI images stored as RGB(A) samples."""
    if image.channel_axis is None or image.channels not in (3, 4):
        return False
    return image.format in RASTER_FORMATS or bool(getattr(image.header, "rgb", False))


def layer_kwargs(image: ImageData) -> dict[str, Any]:
    """Keyword arguments for ``viewer.add_image(image.array, **kwargs)`` or a reader's layer tuple.

    Geometry: ``scale`` = spacing; when the image has an affine, ``affine`` is the
    affine with the scale divided out, so napari's ``affine @ diag(scale)`` equals
    ``image.affine``. RGB(A) images get ``rgb=True``; other multi-channel images get
    ``channel_axis`` (one layer per channel). Metadata carries the image without its
    pixels under ``"lgms_image"`` so labels drawn on it can be saved with its geometry.
    """
    dims = image.spatial_dims
    spacing = tuple(
        float(s) if np.isfinite(s) and s > 0 else 1.0 for s in (image.spacing or (1.0,) * dims)
    )
    kwargs: dict[str, Any] = {
        "scale": spacing,
        "axis_labels": spatial_axis_labels(image),
        "metadata": {
            "lgms_image": image.without_array(),
            "lgms_source": str(image.source) if image.source else None,
        },
    }
    if image.source is not None:
        kwargs["name"] = stem_of(image.source)
    if image.affine is not None:
        affine = np.asarray(image.affine, dtype=float)
        unscale = np.diag([1.0 / s for s in spacing] + [1.0])
        kwargs["affine"] = affine @ unscale
    if image.units and all(unit for unit in image.units):
        kwargs["units"] = tuple(image.units)
    if is_rgb(image):
        kwargs["rgb"] = True
    elif image.channel_axis is not None:
        kwargs["channel_axis"] = image.channel_axis
    return kwargs


def data_to_world(kwargs: dict[str, Any]) -> np.ndarray:
    """The ``(d+1, d+1)`` matrix napari builds from ``scale``/``translate``/``affine`` kwargs."""
    scale = np.asarray(kwargs.get("scale"), dtype=float)
    dims = scale.size
    translate = np.asarray(kwargs.get("translate", np.zeros(dims)), dtype=float)
    inner = np.eye(dims + 1)
    inner[:dims, :dims] = np.diag(scale)
    inner[:dims, dims] = translate
    outer = np.asarray(kwargs.get("affine", np.eye(dims + 1)), dtype=float)
    return outer @ inner
