"""TIFF (.tif, .tiff) via tifffile: ImageJ hyperstacks, OME-TIFF, plain multi-page and RGB.

Axes: singleton non-spatial axes are dropped; ``C`` (channels) or ``S`` (samples,
e.g. RGB) becomes the trailing channel axis; one stack axis (``Z``, or ``T``/``Q``/``I``
when there is no ``Z``) becomes ``Z``. Voxel size comes from ImageJ metadata
(``unit``, ``spacing`` for Z) and the X/Y resolution tags (inch/cm converted to mm).
Masks are written as ImageJ TIFF with the reference voxel size.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_lgms._atomic import atomic_write_bytes
from napari_lgms.errors import ImageReadError
from napari_lgms.io.image import ImageData

_STACK_AXES = "ZTQIPRHEVLAB"
_UNIT_ALIASES = {
    "micron": "um", "microns": "um", "um": "um", "µm": "um", "\u03bcm": "um", "\\u00b5m": "um",
    "micrometer": "um", "mm": "mm", "millimeter": "mm", "cm": "cm", "centimeter": "cm",
    "nm": "nm", "nanometer": "nm", "m": "m", "meter": "m", "inch": "inch",
}
_IMAGEJ_UNIT = {"um": "micron", "mm": "mm", "cm": "cm", "nm": "nm", "m": "m", "inch": "inch"}
# TIFF ResolutionUnit codes -> (unit, factor to that unit); 4/5 are tifffile's mm/um extensions.
_RESOLUTION_UNITS = {2: ("mm", 25.4), 3: ("mm", 10.0), 4: ("mm", 1.0), 5: ("um", 1.0)}


@dataclass
class TiffInfo:
    original_axes: str      # tifffile's series axes, e.g. "ZCYX"
    rgb: bool               # samples stored as RGB(A)
    imagej: bool


def normalise_unit(unit: object) -> str | None:
    """ImageJ/TIFF unit text -> short unit name (``"um"``, ``"mm"``...) or None for pixels/unknown."""
    if unit is None:
        return None
    text = str(unit).strip().lower()
    return _UNIT_ALIASES.get(text)


def _reorder_axes(data: np.ndarray, axes: str, name: str) -> tuple[np.ndarray, str]:
    """Series data with tifffile axes -> (array, axes) in ``[Z]YX[C]`` order."""
    axes = axes.upper()
    keep = [i for i, axis in enumerate(axes) if axis in "YX" or data.shape[i] != 1]
    data = data.reshape([data.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if "Y" not in axes or "X" not in axes:
        raise ImageReadError(f"{name}: TIFF axes {axes!r} lack Y and X")
    channel = [a for a in axes if a in "CS"]
    stacks = [a for a in axes if a not in "YXCS"]
    if len(channel) > 1:
        raise ImageReadError(f"{name}: TIFF with both channels and samples (axes {axes!r}) is not supported")
    if len(stacks) > 1:
        raise ImageReadError(
            f"{name}: TIFF with more than one stack axis (axes {axes!r}, shape {data.shape}) is not supported; "
            "accepted: [Z]YX with at most one channel axis"
        )
    order = [axes.index(a) for a in stacks] + [axes.index("Y"), axes.index("X")]
    order += [axes.index(a) for a in channel]
    new_axes = ("Z" if stacks else "") + "YX" + ("C" if channel else "")
    return np.ascontiguousarray(np.transpose(data, order)), new_axes


def _tag_value(page, name: str):
    tag = page.tags.get(name)
    return None if tag is None else tag.value


def _pixel_size(resolution) -> float | None:
    if resolution is None:
        return None
    numerator, denominator = resolution if isinstance(resolution, tuple) else (resolution, 1)
    if not numerator or not denominator:
        return None
    return float(denominator) / float(numerator)


def _ome_spacing(tif, spatial_axes: str) -> tuple[tuple[float, ...] | None, tuple[str, ...] | None]:
    """PhysicalSizeZ/Y/X of the first OME ``Pixels`` element, when all needed sizes are present."""
    import xml.etree.ElementTree as ElementTree

    try:
        root = ElementTree.fromstring(tif.ome_metadata)
    except (ElementTree.ParseError, TypeError, ValueError):
        return None, None
    pixels = next((element for element in root.iter() if element.tag.endswith("}Pixels") or element.tag == "Pixels"), None)
    if pixels is None:
        return None, None
    sizes, units = [], []
    for axis in spatial_axes:
        size = pixels.get(f"PhysicalSize{axis}")
        if size is None:
            return None, None
        sizes.append(float(size))
        units.append(normalise_unit(pixels.get(f"PhysicalSize{axis}Unit", "µm")))
    return tuple(sizes), tuple(units) if all(units) else None


def _spacing(tif, page, spatial_axes: str) -> tuple[tuple[float, ...] | None, tuple[str, ...] | None]:
    if tif.is_ome and tif.ome_metadata:
        spacing, units = _ome_spacing(tif, spatial_axes)
        if spacing is not None:
            return spacing, units
    imagej = tif.imagej_metadata or {}
    size_x = _pixel_size(_tag_value(page, "XResolution"))
    size_y = _pixel_size(_tag_value(page, "YResolution"))
    resolution_unit = _tag_value(page, "ResolutionUnit")
    resolution_unit = int(resolution_unit) if resolution_unit is not None else 1
    unit = normalise_unit(imagej.get("unit"))
    factor = 1.0
    if unit is None and resolution_unit in _RESOLUTION_UNITS:
        unit, factor = _RESOLUTION_UNITS[resolution_unit]
    known_xy = size_x is not None and size_y is not None and (
        unit is not None or (size_x, size_y) != (1.0, 1.0)
    )
    z_spacing = imagej.get("spacing")
    if not known_xy and z_spacing is None:
        return None, None
    size_x = (size_x if known_xy else 1.0) * factor
    size_y = (size_y if known_xy else 1.0) * factor
    spacing: tuple[float, ...] = (size_y, size_x)
    if "Z" in spatial_axes:
        spacing = (float(z_spacing) if z_spacing else 1.0,) + spacing
    units = (unit,) * len(spacing) if unit else None
    return spacing, units


def read_tiff(path: str | Path) -> ImageData:
    import tifffile

    path = Path(path)
    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ImageReadError(f"{path.name}: TIFF without image data")
        series = tif.series[0]
        data = series.asarray()
        raw_axes = series.axes
        array, axes = _reorder_axes(np.asarray(data), raw_axes, path.name)
        page = tif.pages[0]
        spacing, units = _spacing(tif, page, axes)
        photometric = getattr(page, "photometric", None)
        rgb = "S" in raw_axes and "C" in axes and int(photometric or 0) == 2
        info = TiffInfo(original_axes=raw_axes, rgb=rgb, imagej=bool(tif.is_imagej))
    return ImageData(
        array=array, axes=axes, spacing=spacing, units=units, affine=None,
        source=path, format="tiff", header=info,
    )


def write_tiff_mask(labels: np.ndarray, path: Path, reference: ImageData | None) -> None:
    """ImageJ-compatible TIFF of ``labels`` (``YX`` or ``ZYX``) with the reference voxel size."""
    write_tiff_array(labels, path, reference)


def write_tiff_array(data: np.ndarray, path: Path, reference: ImageData | None, *,
                     has_classes: bool = False) -> None:
    """ImageJ-compatible TIFF of ``data`` ((*spatial) or, with ``has_classes``, (K, *spatial) as
    channels) with the reference voxel size."""
    import tifffile

    spatial_dims = data.ndim - int(has_classes)
    if has_classes and spatial_dims == 3:  # ImageJ order is Z, C, Y, X
        data, axes = np.moveaxis(data, 0, 1), "ZCYX"
    else:
        axes = ("C" if has_classes else "") + ("ZYX" if spatial_dims == 3 else "YX")
    metadata: dict[str, object] = {"axes": axes}
    options: dict[str, object] = {}
    spacing = reference.spacing if reference is not None else None
    if spacing and len(spacing) == spatial_dims:
        size_y, size_x = float(spacing[-2]), float(spacing[-1])
        options["resolution"] = (1.0 / size_x, 1.0 / size_y)
        if spatial_dims == 3:
            metadata["spacing"] = float(spacing[0])
        unit = reference.units[0] if reference.units else None
        metadata["unit"] = _IMAGEJ_UNIT.get(normalise_unit(unit) or "", "pixel")
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.ascontiguousarray(data), imagej=True, metadata=metadata, **options)
    atomic_write_bytes(path, buffer.getvalue())
