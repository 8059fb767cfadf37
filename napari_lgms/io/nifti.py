"""NIfTI-1/2 (.nii, .nii.gz) via nibabel.

Orientation convention (no resampling, no flips, lossless):

* file array ``(i, j, k[, t])`` -> returned array ``(k, j, i[, t])``, axes ``"ZYX[C]"``;
  a 4th dimension (time, channels, vector components) becomes the channel axis;
* world axes are reversed the same way, so the returned ``affine`` is
  ``J @ file_affine @ J`` with ``J`` the axis-reversing permutation: it maps
  ``(k, j, i)`` to world ``(S, A, R)`` millimetres for a RAS+ file. Given to napari
  (via :func:`napari_lgms.io.image.layer_kwargs`) every voxel sits at its scanner position;
* a file with a single slice (``k == 1``) is returned as 2D ``"YX[C]"`` with the
  3x3 in-plane part of that affine;
* writing a mask reverses the axes back, restores the single-slice axis, and
  copies the source header (qform, sform, codes, units) verbatim, so the mask
  overlays the source exactly in 3D Slicer / ITK-SNAP.

Data keep their stored dtype (int16 CT stays int16) unless the header has a
scaling slope/intercept, in which case nibabel's scaled values are returned.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_lgms._atomic import atomic_write_bytes
from napari_lgms.errors import ImageReadError, InputError
from napari_lgms.io.image import ImageData, suffix_of

_UNIT_NAMES = {"mm": "mm", "micron": "um", "meter": "m"}
_TIME_UNITS = ("sec", "msec", "usec")
_NAPARI_UNIT_TO_NIFTI = {"mm": "mm", "millimeter": "mm", "um": "micron", "µm": "micron",
                         "micron": "micron", "micrometer": "micron", "m": "meter", "meter": "meter"}


@dataclass
class NiftiGeometry:
    """What a mask written back needs: the source header and the file layout."""

    header: object             # nibabel Nifti1Header / Nifti2Header (a copy)
    file_affine: np.ndarray    # 4x4, file index (i, j, k) -> world (x, y, z)
    file_shape: tuple[int, ...]
    single_slice: bool         # the file had k == 1, returned as 2D
    rgb: bool = False          # RGB24/RGBA32 voxels


def reverse_axes_matrix(dims: int = 3) -> np.ndarray:
    """``(dims+1, dims+1)`` homogeneous permutation reversing the spatial axes (its own inverse)."""
    matrix = np.zeros((dims + 1, dims + 1))
    matrix[:dims, :dims] = np.eye(dims)[::-1]
    matrix[dims, dims] = 1.0
    return matrix


def napari_affine_from_file(file_affine: np.ndarray) -> np.ndarray:
    """4x4 file affine ``(i, j, k) -> (x, y, z)`` -> napari affine ``(k, j, i) -> (z, y, x)``."""
    flip = reverse_axes_matrix(3)
    return flip @ np.asarray(file_affine, dtype=float) @ flip


def file_affine_from_napari(affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`napari_affine_from_file`; a 3x3 (2D) affine gets an identity z axis."""
    affine = np.asarray(affine, dtype=float)
    if affine.shape == (3, 3):
        lifted = np.eye(4)
        lifted[1:, 1:] = affine
        affine = lifted
    if affine.shape != (4, 4):
        raise InputError(f"affine must be 3x3 or 4x4, got shape {affine.shape}")
    flip = reverse_axes_matrix(3)
    return flip @ affine @ flip


def _in_plane(affine4: np.ndarray) -> np.ndarray:
    """3x3 napari affine of the (y, x) plane of a 4x4 napari affine."""
    keep = [1, 2, 3]
    return affine4[np.ix_(keep, keep)]


def _load(path: Path):
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as error:
        raise ImageReadError(f"{path.name} is not a readable NIfTI file ({_short(error)})") from error
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageReadError(f"{path.name} is not a NIfTI image ({type(img).__name__})")
    try:
        data = np.asanyarray(img.dataobj)  # eager: truncated .nii.gz fails here, not later
    except Exception as error:
        raise ImageReadError(f"{path.name}: NIfTI voxel data are truncated or corrupt ({_short(error)})") from error
    return img, np.asarray(data)


def _short(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:150]


def read_nifti(path: str | Path) -> ImageData:
    """Read a NIfTI file in the layout documented in this module."""
    path = Path(path)
    img, data = _load(path)
    rgb = False
    if data.dtype.names:  # RGB24 / RGBA32 structured voxels -> trailing channel axis
        data = np.stack([data[name] for name in data.dtype.names], axis=-1)
        rgb = True
    file_shape = tuple(int(n) for n in img.shape)
    values = data
    # 5D+ with singleton extra axes (e.g. vector images stored (x, y, z, 1, c)) collapse to 4D.
    while values.ndim > 4 and 1 in values.shape[3:]:
        drop = 3 + values.shape[3:].index(1)
        values = values.reshape(values.shape[:drop] + values.shape[drop + 1:])
    if values.ndim > 4:
        raise ImageReadError(
            f"{path.name}: {values.ndim}D NIfTI (shape {values.shape}) is not supported; "
            "accepted: 2D, 3D, or 3D + one channel/time axis"
        )
    if values.ndim < 2:
        raise ImageReadError(f"{path.name}: NIfTI with shape {values.shape} has fewer than 2 spatial axes")
    _refuse_time_series(img, path)
    has_channels = values.ndim == 4
    if values.ndim == 2:
        values = values[:, :, np.newaxis]
    single_slice = values.shape[2] == 1
    # (i, j, k[, c]) -> (k, j, i[, c])
    order = (2, 1, 0, 3) if has_channels else (2, 1, 0)
    array = np.ascontiguousarray(np.transpose(values, order))
    affine = napari_affine_from_file(img.affine)
    spacing3 = tuple(float(s) if s > 0 else 1.0 for s in np.linalg.norm(affine[:3, :3], axis=0))
    unit_code = img.header.get_xyzt_units()[0]
    unit = _UNIT_NAMES.get(unit_code)
    if single_slice:
        array = array[0]
        axes = "YXC" if has_channels else "YX"
        affine = _in_plane(affine)
        spacing = spacing3[1:]
    else:
        axes = "ZYXC" if has_channels else "ZYX"
        spacing = spacing3
    geometry = NiftiGeometry(
        header=img.header.copy(),
        file_affine=np.asarray(img.affine, dtype=float),
        file_shape=file_shape,
        single_slice=single_slice,
        rgb=rgb,
    )
    return ImageData(
        array=array,
        axes=axes,
        spacing=spacing,
        units=(unit,) * len(spacing) if unit else None,
        affine=affine,
        source=path,
        format="nifti",
        header=geometry,
    )


def _refuse_time_series(img, path: Path) -> None:
    """A 4D file whose header gives its 4th axis a time unit is a time series, not channels: refuse it.

    Channels (modalities, vector components) are a 4th axis without a time unit, a 5th
    axis (intent vector), or RGB voxels; a time series would otherwise be read as channels.
    """
    shape = tuple(int(n) for n in img.shape)
    time_unit = img.header.get_xyzt_units()[1]
    if len(shape) == 4 and shape[3] > 1 and time_unit in _TIME_UNITS:
        raise ImageReadError(
            f"{path.name}: a time series ({shape[3]} time points, shape {shape}); napari-lgms reads one "
            "volume: save the time point you need as its own file, or store channels without a time unit"
        )


def _mask_in_file_layout(mask: np.ndarray) -> np.ndarray:
    """``(k, j, i)`` or ``(j, i)`` -> ``(i, j, k)``; a 2D mask gets ``k = 1``."""
    file_layout = np.transpose(mask)
    if file_layout.ndim == 2:
        file_layout = file_layout[:, :, np.newaxis]
    return np.asfortranarray(file_layout)


def write_nifti_mask(labels: np.ndarray, path: Path, reference: ImageData | None) -> None:
    """Write ``labels`` (napari layout, uint8/uint16) as NIfTI; gzip when the suffix is ``.nii.gz``."""
    write_nifti_array(labels, path, reference, intent="label")


def write_nifti_array(data: np.ndarray, path: Path, reference: ImageData | None, *,
                      has_classes: bool = False, intent: str = "none") -> None:
    """Write ``data`` ((*spatial) or, with ``has_classes``, (K, *spatial), napari layout) as NIfTI.

    The class axis becomes the 4th file axis. With a NIfTI reference its header
    is reused, so qform/sform and their codes stay exactly as in the source.
    """
    import nibabel as nib

    spatial_dims = data.ndim - int(has_classes)
    if has_classes:
        file_data = np.asfortranarray(np.stack([_mask_in_file_layout(c) for c in data], axis=-1))
    else:
        file_data = _mask_in_file_layout(data)
    geometry = reference.header if reference is not None else None
    if isinstance(geometry, NiftiGeometry):
        header = geometry.header.copy()
        image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        if not has_classes and len(geometry.file_shape) == 2 and file_data.shape[2] == 1:
            file_data = file_data[:, :, 0]  # the source file itself was 2D
        header.set_data_shape(file_data.shape)
        header.set_data_dtype(file_data.dtype)
        header.set_slope_inter(1.0, 0.0)
        header["cal_min"] = 0
        header["cal_max"] = 0
        header.set_intent(intent)
        # affine=None keeps the header's qform/sform and their codes exactly as in the source.
        image = image_class(file_data, None, header)
    else:
        file_affine = _affine_without_nifti_header(reference, spatial_dims)
        image = nib.Nifti1Image(file_data, file_affine)
        image.set_qform(file_affine, code=1)
        image.set_sform(file_affine, code=1)
        unit = reference.units[0] if reference is not None and reference.units else None
        image.header.set_xyzt_units(xyz=_NAPARI_UNIT_TO_NIFTI.get(str(unit), "mm") if unit else "mm")
        image.header.set_intent(intent)
    payload = image.to_bytes()
    if suffix_of(path) == ".nii.gz":
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    atomic_write_bytes(path, payload)


def _affine_without_nifti_header(reference: ImageData | None, mask_dims: int) -> np.ndarray:
    if reference is not None and reference.affine is not None:
        return file_affine_from_napari(reference.affine)
    spacing = list(reference.spacing) if reference is not None and reference.spacing else [1.0] * mask_dims
    if len(spacing) == 2:
        spacing = [1.0] + spacing
    napari_affine = np.diag([float(s) for s in spacing] + [1.0])
    return file_affine_from_napari(napari_affine)
