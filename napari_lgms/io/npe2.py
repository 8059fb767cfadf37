"""napari (npe2) reader and labels writer contributions.

``get_reader`` reads the file(s) eagerly and returns None when any cannot be read
(unknown suffix, corrupt or truncated file, a folder that is not a DICOM series),
so napari can fall back to another plugin; the returned reader hands back the
already-read layers. It never raises; a file of a supported kind that cannot be read
gets a one-line warning saying why (napari shows it as a notification).

``write_labels`` writes a labels layer as NIfTI/TIFF/PNG by suffix, reusing the
source image geometry stored by :func:`napari_lgms.io.image.layer_kwargs` in the
layer metadata (``"lgms_image"``), else the layer's scale/translate/affine.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from napari_lgms.io.image import (
    ImageData, format_of, is_supported, layer_kwargs, read_image, write_mask,
)

LayerData = tuple[Any, dict[str, Any], str]


def _as_paths(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path] | None:
    if isinstance(path, (str, os.PathLike)):
        return [Path(path)]
    try:
        paths = [Path(p) for p in path]
    except TypeError:
        return None
    return paths or None


def get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader hook: a reader for ``path`` (one path or a list), or None when it cannot be read."""
    try:
        paths = _as_paths(path)
        if paths is None or not all(is_supported(p) for p in paths):
            return None
    except Exception:  # napari expects None, never an exception, for files we cannot read
        return None
    layers = []
    for one in paths:
        try:
            layers.append(_image_layer(read_image(one)))
        except Exception as error:  # napari only says the plugin refused the file: say why, once
            reason = " ".join(str(error).split()) or type(error).__name__
            said = reason if one.name in reason else f"cannot read {one.name}: {reason}"
            warnings.warn(f"napari-lgms: {said}", stacklevel=2)
            return None

    def reader(requested: Any) -> list[LayerData]:
        if _as_paths(requested) == paths:
            return layers
        return [_image_layer(read_image(p)) for p in _as_paths(requested) or []]

    return reader


def _image_layer(image: ImageData) -> LayerData:
    return (image.array, layer_kwargs(image), "image")


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for labels: ``.nii.gz``/``.nii``/``.tif``/``.tiff``/``.png``."""
    mask = np.asarray(data)
    reference = reference_from_layer_meta(meta, mask.shape, path)
    written = write_mask(mask, path, reference)
    return [str(written)]


def reference_from_layer_meta(meta: dict[str, Any], shape: tuple[int, ...], path: str | os.PathLike) -> ImageData | None:
    """The source :class:`ImageData` kept in the layer metadata, else one built from scale/translate/affine."""
    metadata = meta.get("metadata") or {}
    source = metadata.get("lgms_image") if isinstance(metadata, dict) else None
    if isinstance(source, ImageData) and source.spatial_shape == tuple(shape):
        return source
    dims = len(shape)
    if dims not in (2, 3):
        return None
    scale = np.asarray(meta.get("scale") if meta.get("scale") is not None else np.ones(dims), dtype=float)
    translate = np.asarray(meta.get("translate") if meta.get("translate") is not None else np.zeros(dims), dtype=float)
    if scale.size != dims or translate.size != dims:
        return None
    inner = np.eye(dims + 1)
    inner[:dims, :dims] = np.diag(scale)
    inner[:dims, dims] = translate
    outer = meta.get("affine")
    outer = np.asarray(getattr(outer, "affine_matrix", outer) if outer is not None else np.eye(dims + 1), dtype=float)
    if outer.shape != (dims + 1, dims + 1):
        outer = np.eye(dims + 1)
    affine = outer @ inner
    units = meta.get("units")
    unit_names = tuple(_unit_name(u) for u in units) if units is not None and len(units) == dims else None
    if unit_names and not all(unit_names):
        unit_names = None
    return ImageData(
        array=np.broadcast_to(np.zeros((), dtype=np.uint8), tuple(shape)),
        axes="ZYX"[-dims:],
        spacing=tuple(float(s) for s in np.linalg.norm(affine[:dims, :dims], axis=0)),
        units=unit_names,
        affine=affine,
        source=None,
        format=format_of(path) or "nifti",
        header=None,
    )


_PINT_TO_SHORT = {"millimeter": "mm", "micrometer": "um", "micron": "um", "meter": "m",
                  "centimeter": "cm", "nanometer": "nm", "mm": "mm", "um": "um"}


def _unit_name(unit: Any) -> str | None:
    return _PINT_TO_SHORT.get(str(unit).strip().lower()) if unit is not None else None
