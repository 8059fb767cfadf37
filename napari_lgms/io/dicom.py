"""DICOM series folder (one volume, slices as files) via pydicom, when it is installed.

:func:`looks_like_dicom` recognises DICOM files by their preamble, with or without
pydicom; without pydicom :func:`read_dicom_series` raises a one-line
:class:`ImageReadError` saying how to enable it.

Layout follows the NIfTI convention of :mod:`napari_lgms.io.nifti`: array
``(slice, row, column)`` = ``"ZYX"``; world axes are RAS reversed ``(S, A, R)``
in millimetres, so a mask written as NIfTI with this image as reference lands
in the scanner position of the series (DICOM LPS is converted to RAS).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from napari_lgms.errors import ImageReadError
from napari_lgms.io.image import ImageData

_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def pydicom_available() -> bool:
    return importlib.util.find_spec("pydicom") is not None


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def visible_files(folder: Path) -> list[Path]:
    """The regular, non-hidden files of ``folder``, sorted ([] when it cannot be listed)."""
    try:
        return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError:
        return []


def looks_like_dicom(path: str | Path) -> bool:
    """A ``.dcm`` file or a folder whose first files carry the DICOM preamble (pydicom not needed)."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".dcm" or _has_dicom_preamble(path)
    if not path.is_dir():
        return False
    files = visible_files(path)[:3]
    return bool(files) and all(p.suffix.lower() == ".dcm" or _has_dicom_preamble(p) for p in files)


def read_dicom_series(path: str | Path) -> ImageData:
    """Folder of single-frame slices (or one ``.dcm`` file) -> ``"ZYX"`` volume / ``"YX"`` image."""
    path = Path(path)
    if not pydicom_available():
        raise ImageReadError(f"{path.name}: reading DICOM needs the optional package pydicom (pip install pydicom)")
    import pydicom

    files = [path] if path.is_file() else visible_files(path)
    slices = []
    for file in files:
        try:
            slices.append(pydicom.dcmread(str(file)))
        except Exception:
            continue  # DICOMDIR, thumbnails and stray files are skipped
    slices = [s for s in slices if "PixelData" in s]
    if not slices:
        raise ImageReadError(f"{path.name}: no DICOM image slices found")
    series_ids = {getattr(s, "SeriesInstanceUID", None) for s in slices}
    if len(series_ids) > 1:
        raise ImageReadError(f"{path.name}: holds {len(series_ids)} DICOM series; put one series per folder")
    row_cosine, column_cosine = _orientation(slices[0])
    normal = np.cross(row_cosine, column_cosine)
    slices.sort(key=lambda s: float(np.dot(_position(s), normal)))
    try:
        planes = [_rescaled(s) for s in slices]
    except Exception as error:
        raise ImageReadError(f"{path.name}: DICOM pixel data cannot be decoded ({' '.join(str(error).split())[:120]})") from error
    shapes = {p.shape for p in planes}
    if len(shapes) != 1 or planes[0].ndim != 2:
        raise ImageReadError(f"{path.name}: DICOM slices differ in size or are multi-frame ({sorted(shapes)})")
    volume = np.stack(planes)
    row_spacing, column_spacing = (float(v) for v in getattr(slices[0], "PixelSpacing", (1.0, 1.0)))
    if len(slices) > 1:
        positions = np.array([np.dot(_position(s), normal) for s in slices])
        slice_spacing = float(np.median(np.diff(positions))) or 1.0
    else:
        slice_spacing = float(getattr(slices[0], "SliceThickness", 1.0) or 1.0)
    origin = _position(slices[0]) * _LPS_TO_RAS
    columns_ras = [normal * _LPS_TO_RAS * slice_spacing,
                   column_cosine * _LPS_TO_RAS * row_spacing,
                   row_cosine * _LPS_TO_RAS * column_spacing]
    affine = np.eye(4)
    for axis, column in enumerate(columns_ras):
        affine[:3, axis] = column[::-1]
    affine[:3, 3] = origin[::-1]
    spacing = (slice_spacing, row_spacing, column_spacing)
    if volume.shape[0] == 1:
        return ImageData(volume[0], "YX", spacing[1:], ("mm", "mm"), affine[np.ix_([1, 2, 3], [1, 2, 3])],
                         path, "dicom", None)
    return ImageData(volume, "ZYX", spacing, ("mm",) * 3, affine, path, "dicom", None)


def _orientation(dataset) -> tuple[np.ndarray, np.ndarray]:
    values = [float(v) for v in getattr(dataset, "ImageOrientationPatient", (1, 0, 0, 0, 1, 0))]
    return np.array(values[:3]), np.array(values[3:])


def _position(dataset) -> np.ndarray:
    return np.array([float(v) for v in getattr(dataset, "ImagePositionPatient", (0, 0, 0))])


def _rescaled(dataset) -> np.ndarray:
    pixels = dataset.pixel_array
    slope = float(getattr(dataset, "RescaleSlope", 1) or 1)
    intercept = float(getattr(dataset, "RescaleIntercept", 0) or 0)
    if slope == 1 and intercept.is_integer():
        shifted = pixels.astype(np.int32) + int(intercept)
        if shifted.min() >= np.iinfo(np.int16).min and shifted.max() <= np.iinfo(np.int16).max:
            return shifted.astype(np.int16)
        return shifted
    return (pixels * slope + intercept).astype(np.float32)
