"""2D raster images (PNG, JPEG, BMP) via Pillow.

Images: grey -> ``"YX"``; RGB/RGBA -> ``"YXC"`` with 3/4 channels (alpha kept), except a grey
image stored as RGB (every pixel has equal red, green and blue, and no transparency; many
ultrasound PNGs): that one is grey, ``"YX"``, so it is treated like any other grey image;
palette images -> RGB (RGBA when the palette has transparency); grey+alpha -> RGBA;
1-bit -> 0/255 uint8; 16-bit grey -> uint16. No spacing is read (``spacing=None``).
Masks: palette PNGs give their palette indices, 1-bit gives {0, 1}; 2D uint8/uint16
labels are written as 8/16-bit grey PNG.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_lgms._atomic import atomic_write_bytes
from napari_lgms.errors import ImageReadError
from napari_lgms.io.image import ImageData

_CONVERT_TO_RGB = ("CMYK", "YCbCr", "LAB", "HSV", "RGBX")


@dataclass
class RasterInfo:
    mode: str        # Pillow mode of the file, e.g. "L", "RGB", "P"
    rgb: bool


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    image = None
    try:
        image = Image.open(path)
        image.load()  # decode now: truncated files fail here
    except UnidentifiedImageError as error:
        raise ImageReadError(f"{path.name} is not a readable PNG/JPEG/BMP image") from error
    except (OSError, SyntaxError, ValueError) as error:
        if image is not None:
            image.close()
        raise ImageReadError(f"{path.name}: image data are truncated or corrupt ({' '.join(str(error).split())[:150]})") from error
    return image


def _pixels(image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L"):
        return np.array(image).astype(np.uint16, copy=False)
    return np.array(image)


def channels_are_equal(array: np.ndarray, max_elements: int = 50_000_000) -> bool:
    """True when ``array`` (channels last: Y, X[, Z], C with 3 or 4 channels) is grey stored as colour:
    red, green and blue equal everywhere, alpha (if any) opaque, and not one constant value
    (a blank image says nothing about its kind).

    Arrays larger than ``max_elements`` are judged on an even subsample of their pixels.
    """
    if array.ndim < 3 or array.shape[-1] not in (3, 4):
        return False
    if array.size > max_elements:
        step = int(np.ceil((array.size / max_elements) ** (1 / (array.ndim - 1))))
        array = array[(slice(None, None, step),) * (array.ndim - 1)]
    colour = array[..., :3]
    first = colour[..., :1]
    if not (colour == first).all() or first.min() == first.max():
        return False
    if array.shape[-1] == 4:
        alpha = array[..., 3]
        opaque = np.iinfo(alpha.dtype).max if np.issubdtype(alpha.dtype, np.integer) else 1.0
        return bool((alpha == opaque).all())
    return True


def read_raster(path: str | Path, fmt: str) -> ImageData:
    path = Path(path)
    image = _open(path)
    try:
        mode = image.mode
        if mode in ("P", "PA"):
            has_alpha = mode == "PA" or "transparency" in image.info
            image = image.convert("RGBA" if has_alpha else "RGB")
        elif mode == "1":
            image = image.convert("L")
        elif mode == "LA":
            image = image.convert("RGBA")
        elif mode in _CONVERT_TO_RGB:
            image = image.convert("RGB")
        array = _pixels(image)
    finally:
        image.close()
    if channels_are_equal(array):
        array = np.ascontiguousarray(array[..., 0])
    if array.ndim == 3:
        axes = "YXC"
    elif array.ndim == 2:
        axes = "YX"
    else:
        raise ImageReadError(f"{path.name}: unexpected pixel layout {array.shape}")
    return ImageData(
        array=array, axes=axes, spacing=None, units=None, affine=None,
        source=path, format=fmt, header=RasterInfo(mode=mode, rgb=array.ndim == 3),
    )


def read_raster_labels(path: str | Path) -> np.ndarray:
    """Raw label values: palette indices for palette images, {0, 1} for 1-bit, else the pixels."""
    path = Path(path)
    image = _open(path)
    try:
        if image.mode == "1":
            return np.array(image).astype(np.uint8)
        if image.mode == "PA":
            image = image.convert("P")
        if image.mode in _CONVERT_TO_RGB:
            image = image.convert("RGB")
        return _pixels(image)
    finally:
        image.close()


def write_png_mask(labels: np.ndarray, path: Path) -> None:
    """2D uint8/uint16 labels -> grey PNG with the exact label values."""
    write_png(labels, path)


def write_png(pixels: np.ndarray, path: Path) -> None:
    """(H, W) uint8/uint16 grey or (H, W, 3) uint8 RGB pixels -> a PNG, written atomically."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
