"""Tests for napari_lgms.io: every format round trip, geometry, napari hooks, error messages."""
from __future__ import annotations

import copy
import gzip
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
tifffile = pytest.importorskip("tifffile")
PIL_Image = pytest.importorskip("PIL.Image")

from napari_lgms.errors import ImageReadError, InputError, OutputError  # noqa: E402
from napari_lgms.io import (  # noqa: E402
    SUPPORTED_SUFFIXES, ImageData, is_supported, layer_kwargs, mask_suffix_for,
    read_image, read_mask, write_mask,
)
from napari_lgms.io.image import data_to_world  # noqa: E402
from napari_lgms.io.npe2 import get_reader, write_labels  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


def oblique_affine() -> np.ndarray:
    """Rotated about two axes, anisotropic voxels, off-centre origin (i, j, k) -> RAS."""
    a, b = 0.4, -0.25
    rot_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rot_z @ rot_x @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = [-31.5, 12.25, 80.0]
    return affine


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path


def labels_volume(shape, seed=0, top=3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, top + 1, size=shape).astype(np.uint8)


def single_line_read_error(path) -> str:
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert message and "\n" not in message
    return message


# --------------------------------------------------------------------------- NIfTI


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_oblique_layout_and_world_positions(tmp_path, suffix):
    data = np.random.default_rng(1).integers(-1000, 2000, size=(5, 6, 7)).astype(np.int16)
    affine = oblique_affine()
    path = save_nifti(tmp_path / f"ct{suffix}", data, affine)

    image = read_image(path)
    assert image.format == "nifti" and image.axes == "ZYX"
    assert image.array.dtype == np.int16  # CT stays as stored
    assert image.array.shape == (7, 6, 5)
    np.testing.assert_array_equal(image.array, np.transpose(data))
    assert np.allclose(image.spacing, [2.5, 0.9, 0.7])
    assert image.units == ("mm", "mm", "mm")
    # voxel (k, j, i) of the returned array sits where voxel (i, j, k) of the file sits
    i, j, k = 4, 2, 6
    world_file = affine @ [i, j, k, 1]
    world_napari = image.affine @ [k, j, i, 1]
    assert np.allclose(world_napari[:3][::-1], world_file[:3])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_mask_round_trip_keeps_header_geometry_and_voxels(tmp_path, suffix):
    labels = labels_volume((5, 6, 7))
    affine = oblique_affine()
    source = save_nifti(tmp_path / f"labels{suffix}", labels, affine)
    image = read_image(source)
    assert mask_suffix_for(source) == suffix

    out = write_mask(image.array, tmp_path / f"mask{suffix}", reference=image)
    written = nib.load(str(out))
    original = nib.load(str(source))
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), labels)
    assert written.get_data_dtype() == np.uint8
    assert np.allclose(written.affine, original.affine)
    assert np.allclose(written.header.get_sform(), original.header.get_sform())
    assert np.allclose(written.header.get_qform(), original.header.get_qform())
    assert int(written.header["sform_code"]) == int(original.header["sform_code"])
    assert int(written.header["qform_code"]) == int(original.header["qform_code"])
    np.testing.assert_array_equal(read_mask(out), image.array)
    if suffix == ".nii.gz":
        assert gzip.decompress(out.read_bytes())[:4] != b""  # really gzip


def test_nifti_4d_channels_mask_matches_spatial_grid(tmp_path):
    data = np.random.default_rng(2).random((5, 6, 7, 2)).astype(np.float32)
    affine = oblique_affine()
    source = save_nifti(tmp_path / "multi.nii.gz", data, affine)
    image = read_image(source)
    assert image.axes == "ZYXC" and image.channel_axis == 3 and image.channels == 2
    assert image.array.shape == (7, 6, 5, 2)
    np.testing.assert_array_equal(image.array[..., 1], np.transpose(data[..., 1]))
    assert image.spatial_shape == (7, 6, 5) and image.spatial_dims == 3

    mask = (image.array[..., 0] > 0.5).astype(np.uint8)
    out = write_mask(mask, tmp_path / "multi_mask.nii.gz", reference=image)
    written = nib.load(str(out))
    assert written.shape == (5, 6, 7)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), (data[..., 0] > 0.5).astype(np.uint8))
    assert np.allclose(written.affine, affine)
    assert layer_kwargs(image)["channel_axis"] == 3


@pytest.mark.parametrize("time_unit, refused", [("sec", True), ("msec", True), ("unknown", False)])
def test_nifti_4th_axis_with_a_time_unit_is_a_time_series_not_channels(tmp_path, time_unit, refused):
    image = nib.Nifti1Image(np.zeros((6, 5, 4, 3), np.float32), np.eye(4))
    image.header.set_xyzt_units("mm", time_unit)
    path = tmp_path / "four.nii.gz"
    nib.save(image, path)
    if refused:
        with pytest.raises(ImageReadError, match="a time series \\(3 time points"):
            read_image(path)
    else:
        assert read_image(path).axes == "ZYXC"


def test_pipes_are_refused_without_being_opened(tmp_path):
    import os

    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    for reader in (read_image, read_mask):
        with pytest.raises(ImageReadError, match="not a regular file"):
            reader(fifo)


def test_folders_are_dicom_series_or_say_what_they_are(tmp_path, monkeypatch):
    from napari_lgms.io import dicom

    monkeypatch.setattr(dicom, "pydicom_available", lambda: False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.png").mkdir()
    (tmp_path / "x.png" / "a.txt").write_text("text")
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    with pytest.raises(ImageReadError, match="empty folder"):
        read_image(tmp_path / "empty")
    with pytest.raises(ImageReadError, match="a folder, not an image file"):
        read_image(tmp_path / "x.png")
    assert is_supported(tmp_path / "series")
    with pytest.raises(ImageReadError, match="needs the optional package pydicom"):
        read_image(tmp_path / "series")


def test_nifti_single_slice_is_2d_and_written_back_with_its_slice_axis(tmp_path):
    labels = labels_volume((8, 9, 1))
    affine = oblique_affine()
    source = save_nifti(tmp_path / "slice.nii.gz", labels, affine)
    image = read_image(source)
    assert image.axes == "YX" and image.array.shape == (9, 8)
    assert image.affine.shape == (3, 3)
    out = write_mask(image.array, tmp_path / "slice_mask.nii.gz", reference=image)
    written = nib.load(str(out))
    assert written.shape == (8, 9, 1)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), labels)
    assert np.allclose(written.affine, affine)


def test_nifti_mask_with_many_labels_is_uint16(tmp_path):
    source = save_nifti(tmp_path / "img.nii", np.zeros((4, 5, 6), np.int16), np.eye(4))
    image = read_image(source)
    mask = np.arange(4 * 5 * 6, dtype=np.int64).reshape(image.spatial_shape) * 3
    out = write_mask(mask, tmp_path / "big.nii", reference=image)
    assert nib.load(str(out)).get_data_dtype() == np.uint16
    np.testing.assert_array_equal(read_mask(out), mask)


def test_nifti_float_probability_mask_is_thresholded(tmp_path):
    probabilities = np.random.default_rng(3).random((4, 5, 6)).astype(np.float32)
    path = save_nifti(tmp_path / "prob.nii.gz", probabilities, np.eye(4))
    np.testing.assert_array_equal(read_mask(path), np.transpose(probabilities >= 0.5).astype(np.uint8))


def test_nifti_without_reference_uses_spacing(tmp_path):
    reference = ImageData(
        array=np.zeros((3, 4, 5), np.uint8), axes="ZYX", spacing=(3.0, 0.5, 0.25),
        units=("mm",) * 3, affine=None, source=None, format="tiff",
    )
    out = write_mask(np.ones((3, 4, 5), np.uint8), tmp_path / "m.nii.gz", reference=reference)
    back = read_image(out)
    assert back.array.shape == (3, 4, 5)
    assert np.allclose(back.spacing, (3.0, 0.5, 0.25))


# --------------------------------------------------------------------------- TIFF


def test_tiff_imagej_spacing_and_mask_round_trip(tmp_path):
    volume = np.random.default_rng(4).integers(0, 4000, size=(4, 16, 12)).astype(np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, volume, imagej=True, resolution=(1 / 0.25, 1 / 0.5),
                     metadata={"spacing": 2.0, "unit": "micron", "axes": "ZYX"})
    image = read_image(path)
    assert image.axes == "ZYX" and image.format == "tiff"
    np.testing.assert_array_equal(image.array, volume)
    assert np.allclose(image.spacing, (2.0, 0.5, 0.25))
    assert image.units == ("um", "um", "um")
    assert mask_suffix_for(path) == ".tif"

    mask = labels_volume(volume.shape, seed=5)
    out = write_mask(mask, tmp_path / "stack_mask.tif", reference=image)
    back = read_image(out)
    np.testing.assert_array_equal(back.array, mask)
    assert np.allclose(back.spacing, image.spacing, rtol=1e-5)
    assert back.units == image.units
    np.testing.assert_array_equal(read_mask(out), mask)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej


def test_tiff_resolution_tags_in_centimetres_become_mm(tmp_path):
    path = tmp_path / "plain.tiff"
    tifffile.imwrite(path, np.zeros((10, 8), np.uint8), resolution=(20.0, 40.0), resolutionunit="CENTIMETER")
    image = read_image(path)
    assert image.axes == "YX"
    assert np.allclose(image.spacing, (0.25, 0.5))  # (y, x): 1/40 cm, 1/20 cm
    assert image.units == ("mm", "mm")
    assert mask_suffix_for(path) == ".tiff"


def test_tiff_rgb_and_hyperstack_axes(tmp_path):
    rgb = np.random.default_rng(6).integers(0, 255, size=(10, 12, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    image = read_image(tmp_path / "rgb.tif")
    assert image.axes == "YXC"
    assert layer_kwargs(image).get("rgb") is True

    stack = np.random.default_rng(7).integers(0, 255, size=(3, 2, 10, 12)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "zc.tif", stack, imagej=True, metadata={"axes": "ZCYX"})
    image = read_image(tmp_path / "zc.tif")
    assert image.axes == "ZYXC" and image.array.shape == (3, 10, 12, 2)
    np.testing.assert_array_equal(image.array[..., 1], stack[:, 1])
    kwargs = layer_kwargs(image)
    assert kwargs["channel_axis"] == 3 and "rgb" not in kwargs


def test_ome_tiff_physical_sizes(tmp_path):
    volume = np.zeros((3, 8, 9), np.uint16)
    tifffile.imwrite(tmp_path / "cells.ome.tif", volume, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.3, "PhysicalSizeZ": 1.5,
        "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm", "PhysicalSizeZUnit": "µm"})
    image = read_image(tmp_path / "cells.ome.tif")
    assert image.axes == "ZYX" and image.array.shape == (3, 8, 9)
    assert np.allclose(image.spacing, (1.5, 0.3, 0.2))
    assert image.units == ("um", "um", "um")


def test_tiff_without_metadata_has_no_spacing(tmp_path):
    tifffile.imwrite(tmp_path / "bare.tif", np.zeros((6, 7), np.float32))
    image = read_image(tmp_path / "bare.tif")
    assert image.spacing is None and image.units is None
    assert layer_kwargs(image)["scale"] == (1.0, 1.0)


# --------------------------------------------------------------------------- PNG / JPEG / BMP


def test_png_grey_rgb_rgba_palette_and_16bit(tmp_path):
    rng = np.random.default_rng(8)
    grey = rng.integers(0, 255, size=(12, 10)).astype(np.uint8)
    PIL_Image.fromarray(grey).save(tmp_path / "grey.png")
    image = read_image(tmp_path / "grey.png")
    assert image.axes == "YX" and image.format == "png"
    np.testing.assert_array_equal(image.array, grey)

    rgba = rng.integers(0, 255, size=(12, 10, 4)).astype(np.uint8)
    PIL_Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    image = read_image(tmp_path / "rgba.png")
    assert image.axes == "YXC" and image.array.shape == (12, 10, 4)
    np.testing.assert_array_equal(image.array, rgba)
    assert layer_kwargs(image)["rgb"] is True

    indices = rng.integers(0, 3, size=(12, 10)).astype(np.uint8)
    palette_image = PIL_Image.fromarray(indices, mode="P")
    palette_image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    palette_image.save(tmp_path / "palette.png")
    image = read_image(tmp_path / "palette.png")
    assert image.axes == "YXC" and image.array.shape == (12, 10, 3)
    np.testing.assert_array_equal(image.array[..., 0] == 255, indices == 1)
    np.testing.assert_array_equal(read_mask(tmp_path / "palette.png"), indices)  # masks keep indices

    deep = rng.integers(0, 65535, size=(12, 10)).astype(np.uint16)
    PIL_Image.fromarray(deep).save(tmp_path / "deep.png")
    image = read_image(tmp_path / "deep.png")
    assert image.array.dtype == np.uint16
    np.testing.assert_array_equal(image.array, deep)


def test_bmp_and_jpeg_read_and_mask_suffix(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[4:12, 4:12] = (200, 100, 50)
    PIL_Image.fromarray(rgb).save(tmp_path / "scan.bmp")
    image = read_image(tmp_path / "scan.bmp")
    assert image.format == "bmp" and image.axes == "YXC"
    np.testing.assert_array_equal(image.array, rgb)
    PIL_Image.fromarray(rgb).save(tmp_path / "scan.jpg", quality=90)
    image = read_image(tmp_path / "scan.jpg")
    assert image.format == "jpeg" and image.array.shape == (16, 16, 3)
    assert mask_suffix_for(tmp_path / "scan.jpg") == ".png"
    assert mask_suffix_for(tmp_path / "scan.bmp") == ".png"
    assert mask_suffix_for(tmp_path / "x.png") == ".png"


def test_png_mask_round_trip_and_colour_coded_masks(tmp_path):
    mask = labels_volume((20, 24), seed=9, top=4)
    out = write_mask(mask, tmp_path / "mask.png")
    np.testing.assert_array_equal(read_mask(out), mask)
    np.testing.assert_array_equal(np.array(PIL_Image.open(out)), mask)  # exact values on disk

    colours = np.zeros((8, 8, 3), np.uint8)
    colours[:4, :4] = (255, 0, 0)
    colours[4:, 4:] = (0, 0, 255)
    PIL_Image.fromarray(colours).save(tmp_path / "colour.png")
    labels = read_mask(tmp_path / "colour.png")
    assert labels[0, 7] == 0 and labels[0, 0] != 0 and labels[7, 7] != 0
    assert labels[0, 0] != labels[7, 7] and set(np.unique(labels)) == {0, 1, 2}


def test_jpeg_mask_is_thresholded_at_half_range(tmp_path):
    rows, cols = np.mgrid[:64, :64]
    truth = ((rows - 30) ** 2 + (cols - 33) ** 2 < 17 ** 2).astype(np.uint8)  # a disc: not block-aligned
    PIL_Image.fromarray(truth * 255).save(tmp_path / "mask.jpg", quality=70)
    noisy = np.array(PIL_Image.open(tmp_path / "mask.jpg"))
    assert len(np.unique(noisy)) > 2  # the JPEG really is lossy
    mask = read_mask(tmp_path / "mask.jpg")
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(mask, truth)

    rgb = np.repeat((truth * 255)[..., None], 3, axis=2)
    PIL_Image.fromarray(rgb).save(tmp_path / "rgb_mask.jpeg", quality=70)
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb_mask.jpeg"), truth)


def test_png_mask_must_be_2d(tmp_path):
    with pytest.raises(InputError, match="2D"):
        write_mask(np.zeros((2, 4, 4), np.uint8), tmp_path / "vol.png")


# --------------------------------------------------------------------------- errors


def test_bad_inputs_raise_single_line_image_read_errors(tmp_path):
    (tmp_path / "notes.png").write_text("not an image\nsecond line\n")
    (tmp_path / "notes.nii").write_text("not a volume\n")
    (tmp_path / "notes.tif").write_text("not a tiff\n")
    (tmp_path / "data.xyz").write_bytes(b"\x00" * 10)
    volume = tmp_path / "ok.nii.gz"
    save_nifti(volume, np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), np.eye(4))
    payload = volume.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(payload[: len(payload) // 2])
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5, 2, 2), np.uint8), np.eye(4)), str(tmp_path / "five.nii"))
    nib.save(nib.Nifti1Image(np.zeros((0, 4, 4), np.uint8), np.eye(4)), str(tmp_path / "empty.nii"))

    for name in ["notes.png", "notes.nii", "notes.tif", "cut.nii.gz", "missing.png"]:
        single_line_read_error(tmp_path / name)
    assert "unsupported" in single_line_read_error(tmp_path / "data.xyz")
    assert "truncated or corrupt" in single_line_read_error(tmp_path / "cut.nii.gz")
    assert "5D" in single_line_read_error(tmp_path / "five.nii")
    assert "empty" in single_line_read_error(tmp_path / "empty.nii")
    with pytest.raises(ImageReadError):
        read_mask(tmp_path / "notes.png")


def test_write_to_unwritable_folder_raises_output_error(tmp_path):
    blocker = tmp_path / "a_file.txt"
    blocker.write_text("I am a file, not a folder")
    for name in ["mask.png", "mask.nii.gz", "mask.tif"]:
        with pytest.raises(OutputError) as info:
            write_mask(np.zeros((4, 4), np.uint8), blocker / name)
        assert "\n" not in str(info.value)
    with pytest.raises(OutputError, match="accepted"):
        write_mask(np.zeros((4, 4), np.uint8), tmp_path / "mask.jpg")


def test_write_mask_rejects_wrong_shape_and_bad_labels(tmp_path):
    image = read_image(save_nifti(tmp_path / "img.nii", np.zeros((4, 5, 6), np.int16), np.eye(4)))
    with pytest.raises(InputError, match="shape"):
        write_mask(np.zeros((6, 5, 3), np.uint8), tmp_path / "m.nii", reference=image)
    with pytest.raises(InputError, match="negative"):
        write_mask(-np.ones((4, 4), np.int32), tmp_path / "m.png")
    with pytest.raises(InputError, match="65535"):
        write_mask(np.full((4, 4), 70000, np.int32), tmp_path / "m.png")
    assert not list(tmp_path.glob("m.*"))  # nothing half-written


def test_supported_suffixes_and_is_supported(tmp_path):
    for suffix in [".nii", ".nii.gz", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"]:
        assert suffix in SUPPORTED_SUFFIXES
        assert is_supported(f"scan{suffix.upper()}")
    assert not is_supported("scan.txt") and not is_supported("scan.gz")
    assert not is_supported(tmp_path)  # an empty folder is not a DICOM series


# --------------------------------------------------------------------------- napari


@pytest.mark.filterwarnings("ignore:Non-orthogonal slicing")
def test_layer_kwargs_geometry_matches_affine(tmp_path):
    affine = oblique_affine()
    image = read_image(save_nifti(tmp_path / "ct.nii.gz", np.zeros((5, 6, 7), np.int16), affine))
    kwargs = layer_kwargs(image)
    assert np.allclose(kwargs["scale"], image.spacing)
    assert np.allclose(data_to_world(kwargs), image.affine)
    assert kwargs["axis_labels"] == ("z", "y", "x")
    assert kwargs["units"] == ("mm", "mm", "mm")
    assert kwargs["name"] == "ct"
    meta_image = kwargs["metadata"]["lgms_image"]
    assert isinstance(meta_image, ImageData)
    assert meta_image.spatial_shape == image.spatial_shape and meta_image.array.nbytes == image.array.nbytes
    assert all(stride == 0 for stride in meta_image.array.strides)  # no pixel copy in metadata
    assert all(stride == 0 for stride in copy.deepcopy(meta_image).array.strides)

    layers = pytest.importorskip("napari.layers")
    layer = layers.Image(image.array, **kwargs)
    corners = np.vstack([np.zeros(3), np.eye(3)])  # the origin and one step along each axis fix an affine
    world = [layer.data_to_world(point) for point in corners]
    assert np.allclose(world, corners @ image.affine[:3, :3].T + image.affine[:3, 3])


def test_layer_kwargs_for_plain_images(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((3, 8, 8), np.uint8), imagej=True,
                     resolution=(2.0, 4.0), metadata={"spacing": 5.0, "unit": "mm", "axes": "ZYX"})
    kwargs = layer_kwargs(read_image(tmp_path / "s.tif"))
    assert np.allclose(kwargs["scale"], (5.0, 0.25, 0.5))
    assert "affine" not in kwargs and "rgb" not in kwargs and "channel_axis" not in kwargs


def test_get_reader_returns_none_for_unreadable_paths(tmp_path):
    (tmp_path / "notes.png").write_text("plain text")
    (tmp_path / "notes.txt").write_text("plain text")
    (tmp_path / "data.unknown").write_bytes(b"\x89PNG")
    good = save_nifti(tmp_path / "ok.nii.gz", np.ones((6, 6, 6), np.float32), np.eye(4))
    payload = good.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(payload[: len(payload) // 2])
    (tmp_path / "folder").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not ours to read: no word
        for name in ["notes.txt", "data.unknown", "folder"]:
            assert get_reader(str(tmp_path / name)) is None, name
        assert get_reader([]) is None
    for name in ["notes.png", "cut.nii.gz", "absent.tif"]:  # ours, but unreadable: one line saying why
        with pytest.warns(UserWarning, match=rf"^napari-lgms: (cannot read {name}: )?.*{name}") as caught:
            assert get_reader(str(tmp_path / name)) is None, name
        assert len(caught) == 1 and "\n" not in str(caught[0].message)
    with pytest.warns(UserWarning, match="cut.nii.gz"):
        assert get_reader([str(good), str(tmp_path / "cut.nii.gz")]) is None


def test_get_reader_returns_image_layers(tmp_path):
    volume = np.random.default_rng(10).random((4, 5, 6)).astype(np.float32)
    path = save_nifti(tmp_path / "vol.nii.gz", volume, oblique_affine())
    PIL_Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")

    reader = get_reader(str(path))
    assert callable(reader)
    [(data, kwargs, layer_type)] = reader(str(path))
    assert layer_type == "image"
    np.testing.assert_array_equal(data, np.transpose(volume))
    assert np.allclose(data_to_world(kwargs), read_image(path).affine)

    reader = get_reader([str(path), str(tmp_path / "rgb.png")])
    layers = reader([str(path), str(tmp_path / "rgb.png")])
    assert len(layers) == 2 and layers[1][1]["rgb"] is True


def test_write_labels_reuses_source_geometry(tmp_path):
    affine = oblique_affine()
    source = save_nifti(tmp_path / "vol.nii.gz", np.zeros((5, 6, 7), np.int16), affine)
    image = read_image(source)
    kwargs = layer_kwargs(image)
    labels = labels_volume(image.spatial_shape, seed=11)
    meta = {"metadata": kwargs["metadata"], "scale": kwargs["scale"], "name": "labels"}
    written = write_labels(str(tmp_path / "labels.nii.gz"), labels, meta)
    assert written == [str(tmp_path / "labels.nii.gz")]
    result = nib.load(written[0])
    assert np.allclose(result.affine, affine)
    np.testing.assert_array_equal(np.asanyarray(result.dataobj), np.transpose(labels))

    written = write_labels(str(tmp_path / "labels.tif"), labels, meta)
    assert np.allclose(read_image(written[0]).spacing, image.spacing, rtol=1e-5)


def test_write_labels_without_source_uses_scale_and_translate(tmp_path):
    labels = labels_volume((3, 4, 5), seed=12)
    meta = {"scale": (2.0, 0.5, 0.5), "translate": (10.0, -4.0, 3.0), "metadata": {}}
    [path] = write_labels(str(tmp_path / "plain.nii"), labels, meta)
    back = read_image(path)
    np.testing.assert_array_equal(back.array, labels)
    assert np.allclose(back.spacing, (2.0, 0.5, 0.5))
    assert np.allclose(back.affine[:3, 3], (10.0, -4.0, 3.0))
    [path] = write_labels(str(tmp_path / "plain.tif"), labels, meta)
    assert np.allclose(read_image(path).spacing, (2.0, 0.5, 0.5), rtol=1e-5)


def test_importing_io_stays_light():
    code = (
        "import sys, napari_lgms.io, napari_lgms.io.npe2; "
        "heavy = [m for m in ('torch', 'PySide6', 'PyQt5', 'PyQt6', 'qtpy', 'napari', 'nibabel') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing napari_lgms.io pulled in: {result.stdout.strip()}"


# --------------------------------------------------------------------------- DICOM (optional)


def write_dicom_slice(path: Path, pixels: np.ndarray, position, series_uid: str, index: int) -> None:
    pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.SeriesInstanceUID = series_uid
    dataset.Modality = "CT"
    dataset.InstanceNumber = index
    dataset.ImagePositionPatient = [float(v) for v in position]
    dataset.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    dataset.PixelSpacing = [0.8, 0.6]  # row spacing, column spacing
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 0
    dataset.RescaleSlope = 1
    dataset.RescaleIntercept = -1024
    dataset.PixelData = pixels.astype(np.uint16).tobytes()
    dataset.save_as(str(path), enforce_file_format=True)


def test_dicom_series_folder_reads_in_slice_order_with_ras_geometry(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.uid import generate_uid

    series = tmp_path / "series"
    series.mkdir()
    rng = np.random.default_rng(13)
    stored = rng.integers(0, 3000, size=(4, 6, 5)).astype(np.uint16)
    uid = generate_uid()
    for index in [2, 0, 3, 1]:  # file order differs from slice order
        write_dicom_slice(series / f"slice{(7 * index) % 5}.dcm", stored[index], (-10.0, 20.0, 5.0 + 2.5 * index), uid, index)

    assert is_supported(series)
    image = read_image(series)
    assert image.format == "dicom" and image.axes == "ZYX" and image.array.shape == (4, 6, 5)
    np.testing.assert_array_equal(image.array, stored.astype(np.int32) - 1024)
    assert np.allclose(image.spacing, (2.5, 0.8, 0.6))
    # voxel (slice 1, row 2, column 3): LPS (-10 + 3*0.6, 20 + 2*0.8, 7.5) -> RAS, reversed for napari
    world = image.affine @ [1, 2, 3, 1]
    assert np.allclose(world[:3], [7.5, -(20 + 1.6), -(-10 + 1.8)])
    assert mask_suffix_for(series) == ".nii.gz"
    assert get_reader(str(series)) is not None

    out = write_mask((image.array > 0).astype(np.uint8), tmp_path / "mask.nii.gz", reference=image)
    written = nib.load(str(out))
    assert np.allclose(written.affine @ [3, 2, 1, 1], [-(-10 + 1.8), -(20 + 1.6), 7.5, 1])


@pytest.mark.parametrize("suffix", [".nii.gz", ".tif"])
def test_class_probabilities_round_trip_on_the_source_grid(tmp_path, suffix):
    from napari_lgms.io import write_probabilities

    source = save_nifti(tmp_path / "scan.nii.gz", labels_volume((10, 12, 8)).astype(np.int16), oblique_affine())
    image = read_image(source)
    probabilities = np.random.default_rng(0).random((3,) + image.spatial_shape).astype(np.float32)
    written = write_probabilities(probabilities, tmp_path / f"p{suffix}", image)
    if suffix == ".nii.gz":
        import nibabel as nib

        back = nib.load(written)
        np.testing.assert_allclose(back.affine, nib.load(source).affine)
        assert back.shape == nib.load(source).shape + (3,)
        np.testing.assert_array_equal(np.moveaxis(np.asarray(back.dataobj), -1, 0)[1].T, probabilities[1])
    else:
        import tifffile

        assert tifffile.imread(written).shape == (image.spatial_shape[0], 3) + image.spatial_shape[1:]
    with pytest.raises(InputError, match="do not match"):
        write_probabilities(probabilities[:, :-1], tmp_path / f"bad{suffix}", image)
