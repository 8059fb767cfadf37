"""Medical image I/O: NIfTI, TIFF, PNG/JPEG/BMP (and DICOM series with pydicom).

Pure numpy at import time: nibabel, tifffile and Pillow load on first use; no torch, no Qt.
See :mod:`napari_lgms.io.image` for the array layout and the NIfTI orientation convention.
"""
from napari_lgms.io.image import (
    MASK_SUFFIXES,
    SUPPORTED_SUFFIXES,
    ImageData,
    is_supported,
    layer_kwargs,
    mask_suffix_for,
    read_image,
    read_mask,
    write_mask,
    write_probabilities,
)

__all__ = [
    "ImageData",
    "MASK_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "is_supported",
    "layer_kwargs",
    "mask_suffix_for",
    "read_image",
    "read_mask",
    "write_mask",
    "write_probabilities",
]
