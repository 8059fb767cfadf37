"""``napari-lgms segment`` and ``napari-lgms evaluate``, in-process and once as a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from napari_lgms.cli import main
from napari_lgms.evaluation import pair_files
from napari_lgms.inference import segment
from napari_lgms.io import read_image, read_mask
from napari_lgms.zoo import save_model

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(11)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def saved(model, folder: Path) -> Path:
    """Save a LoadedModel with save_model; the card path, as --model takes it."""
    return save_model(model.network, model.card, folder)


def blob_image(shape, dtype=np.uint8):
    """A bright disc on noise, so masks are neither empty nor full."""
    grid = np.indices(shape[:2]).astype(np.float32)
    centre = np.array(shape[:2], np.float32)[:, None, None] / 2
    disc = ((grid - centre) ** 2).sum(0) < (min(shape[:2]) / 4) ** 2
    values = 40 + 150 * disc + RNG.integers(0, 30, shape[:2])
    if len(shape) == 3:
        values = np.repeat(values[..., None], shape[2], axis=-1)
    return values.astype(dtype)


def oblique_affine():
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = [-30.0, 12.5, 7.0]
    return affine


@pytest.fixture
def model_2d(tiny_model, tmp_path):
    model = tiny_model()
    return model, saved(model, tmp_path / "models2d")


@pytest.fixture
def model_3d(tiny_model, tmp_path):
    model = tiny_model(spatial_dims=3, num_classes=2)
    return model, saved(model, tmp_path / "models3d")


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ----------------------------------------------------------------------------- segment


def test_segment_png_writes_png_mask_equal_to_engine(model_2d, tmp_path, capsys):
    model, card = model_2d
    source = tmp_path / "in" / "polyp.jpg"
    source.parent.mkdir()
    Image.fromarray(blob_image((40, 48, 3))).save(source)
    code, out, err = run_cli(capsys, "segment", source, "--model", card, "--output", tmp_path / "out")
    assert code == 0, err
    assert files_in(tmp_path / "out") == ["polyp.png"]
    image = read_image(source)
    expected = segment(image.array, model, channel_axis=image.channel_axis).labels
    np.testing.assert_array_equal(read_mask(tmp_path / "out" / "polyp.png"), expected)
    assert "polyp.png" in out


def test_segment_tiff_volume_with_2d_model_and_probabilities(model_2d, tmp_path, capsys):
    model, card = model_2d
    volume = np.stack([blob_image((32, 32), np.uint16) * (i + 1) for i in range(4)])
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, volume, imagej=True, metadata={"axes": "ZYX"})
    code, out, err = run_cli(capsys, "segment", source, "--model", card, "--output", tmp_path / "out",
                             "--probabilities", "--slice-axis", "0")
    assert code == 0, err
    assert files_in(tmp_path / "out") == ["stack.tif", "stack_probabilities.tif"]
    expected = segment(volume, model, probabilities=True)
    np.testing.assert_array_equal(read_mask(tmp_path / "out" / "stack.tif"), expected.labels)
    probabilities = tifffile.imread(tmp_path / "out" / "stack_probabilities.tif")
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, expected.probabilities, atol=1e-6)


def test_segment_nifti_keeps_oblique_affine(model_3d, tmp_path, capsys):
    model, card = model_3d
    data = RNG.normal(size=(20, 18, 12)).astype(np.float32)
    source = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, oblique_affine()), source)
    code, out, err = run_cli(capsys, "segment", source, "--model", card, "--output", tmp_path / "out",
                             "--probabilities")
    assert code == 0, err
    assert files_in(tmp_path / "out") == ["ct.nii.gz", "ct_probabilities.nii.gz"]
    mask = nib.load(tmp_path / "out" / "ct.nii.gz")
    np.testing.assert_allclose(mask.affine, oblique_affine(), atol=1e-5)
    assert mask.shape == data.shape
    image = read_image(source)
    expected = segment(image.array, model, spacing=image.spacing, probabilities=True)
    np.testing.assert_array_equal(np.asarray(mask.dataobj).transpose(), expected.labels)
    probabilities = nib.load(tmp_path / "out" / "ct_probabilities.nii.gz")
    np.testing.assert_allclose(probabilities.affine, oblique_affine(), atol=1e-5)
    assert probabilities.shape == data.shape + (2,)
    np.testing.assert_allclose(np.asarray(probabilities.dataobj)[..., 1].transpose(),
                               expected.probabilities[1], atol=1e-6)


def test_segment_roi(model_2d, tmp_path, capsys):
    model, card = model_2d
    source = tmp_path / "cells.png"
    Image.fromarray(blob_image((64, 64))).save(source)
    code, _, err = run_cli(capsys, "segment", source, "--model", card, "--output", tmp_path / "out",
                           "--roi", "10:40,5:30")
    assert code == 0, err
    mask = read_mask(tmp_path / "out" / "cells.png")
    expected = segment(read_image(source).array, model, roi=((10, 40), (5, 30))).labels
    np.testing.assert_array_equal(mask, expected)
    assert not mask[:10].any() and not mask[:, 30:].any()
    assert "past the edge" not in err
    code, _, err = run_cli(capsys, "segment", source, "--model", card, "--output", tmp_path / "wide",
                           "--roi", "10:40,5:300")
    assert code == 0 and "--roi reaches past the edge of cells.png; used 10:40,5:64" in err


def test_segment_folder_continues_after_a_bad_file(model_2d, tmp_path, capsys):
    _, card = model_2d
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(blob_image((32, 32))).save(folder / "a.png")
    (folder / "b.png").write_text("not an image")
    tifffile.imwrite(folder / "c.tif", blob_image((32, 32)))
    (folder / "notes.txt").write_text("ignored")
    code, out, err = run_cli(capsys, "segment", folder, "--model", card, "--output", tmp_path / "out")
    assert code == 2
    assert files_in(tmp_path / "out") == ["a.png", "c.tif"]
    assert "b.png" in err and "1 of 3 inputs failed" in err
    assert "Traceback" not in err


def test_segment_refuses_to_overwrite_its_input(model_2d, tmp_path, capsys):
    _, card = model_2d
    source = tmp_path / "x.png"
    Image.fromarray(blob_image((32, 32))).save(source)
    before = source.read_bytes()
    code, _, err = run_cli(capsys, "segment", source, "--model", card, "--output", tmp_path)
    assert code == 2 and "overwrite" in err
    assert source.read_bytes() == before


# ----------------------------------------------------------------------------- bad inputs


def _write_bad(kind: str, folder: Path, tiny_model) -> tuple[Path, Path | None]:
    """An input file (and optionally a model card) that must fail with exit 2."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "not-an-image":
        path = folder / "scan.png"
        path.write_text("just text")
    elif kind == "corrupt-nifti":
        path = folder / "scan.nii.gz"
        path.write_bytes(b"\x1f\x8b" + bytes(range(100)))
    elif kind == "5d":
        path = folder / "scan.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2, 2), np.float32), np.eye(4)), path)
    elif kind == "empty":
        path = folder / "scan.png"
        path.write_bytes(b"")
    elif kind == "nan":
        path = folder / "scan.tif"
        image = np.ones((16, 16), np.float32)
        image[3, 4] = np.nan
        tifffile.imwrite(path, image)
    elif kind == "wrong-channels":
        path = folder / "scan.tif"
        tifffile.imwrite(path, np.zeros((16, 16, 2), np.uint8), photometric="minisblack", metadata={"axes": "YXC"})
    elif kind == "missing":
        path = folder / "nowhere.png"
    else:
        raise AssertionError(kind)
    return path, None


@pytest.mark.parametrize("kind", ["not-an-image", "corrupt-nifti", "5d", "empty", "nan", "wrong-channels", "missing"])
def test_segment_bad_input_exit_2_one_line(kind, model_2d, tiny_model, tmp_path, capsys):
    _, card = model_2d
    source, _ = _write_bad(kind, tmp_path / "in", tiny_model)
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "segment", source, "--model", card, "--output", out_dir)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("napari-lgms segment: error:"), err
    assert "Traceback" not in err
    assert files_in(out_dir) == []
    assert not out_dir.exists()  # the folder this run created is not left behind, empty


def test_segment_failure_keeps_an_existing_empty_output_folder(model_2d, tmp_path, capsys):
    _, card = model_2d
    out_dir = tmp_path / "existing"
    out_dir.mkdir()
    code, _, _ = run_cli(capsys, "segment", tmp_path / "missing.png", "--model", card, "--output", out_dir / "a" / "b")
    assert code == 2
    assert out_dir.is_dir() and files_in(out_dir) == [] and not (out_dir / "a").exists()


def test_segment_bad_hash_model_exit_2(model_2d, tmp_path, capsys):
    _, card = model_2d
    weights = card.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    source = tmp_path / "img.png"
    Image.fromarray(blob_image((32, 32))).save(source)
    code, _, err = run_cli(capsys, "segment", source, "--model", card, "--output", tmp_path / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "sha256" in err
    assert files_in(tmp_path / "out") == []


def test_segment_unknown_model_and_bad_roi_exit_2(tmp_path, capsys):
    source = tmp_path / "img.png"
    Image.fromarray(blob_image((32, 32))).save(source)
    code, _, err = run_cli(capsys, "segment", source, "--model", "no-such-model", "--output", tmp_path / "o")
    assert code == 2 and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "segment", source, "--model", "x", "--output", tmp_path / "o", "--roi", "1:2")
    assert code == 2 and "--roi" in err and len(err.strip().splitlines()) == 1


def test_segment_unwritable_output_exit_2_before_loading_the_model(model_2d, tmp_path, capsys, monkeypatch):
    _, card = model_2d
    source = tmp_path / "img.png"
    Image.fromarray(blob_image((32, 32))).save(source)
    blocker = tmp_path / "a-file"
    blocker.write_text("occupied")
    import napari_lgms.zoo as zoo

    monkeypatch.setattr(zoo, "load_model", lambda *a, **k: pytest.fail("model loaded before the output check"))
    for target in (blocker, blocker / "sub"):
        code, _, err = run_cli(capsys, "segment", source, "--model", card, "--output", target)
        assert code == 2 and "output folder" in err and len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "occupied"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_segment_read_only_output_folder(model_2d, tmp_path, capsys):
    _, card = model_2d
    source = tmp_path / "img.png"
    Image.fromarray(blob_image((32, 32))).save(source)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = run_cli(capsys, "segment", source, "--model", card, "--output", locked)
    finally:
        locked.chmod(0o700)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert files_in(locked) == []


# ----------------------------------------------------------------------------- evaluate


def _hand_scores(prediction, truth):
    p, t = prediction > 0, truth > 0
    intersection, union = np.logical_and(p, t).sum(), np.logical_or(p, t).sum()
    iou = (intersection + 1e-5) / (union + 1e-5)
    dice = 2 * intersection / (p.sum() + t.sum()) if (p.sum() + t.sum()) else 1.0
    return iou, dice


def test_evaluate_binary_matches_hand_computation(model_2d, tmp_path, capsys):
    model, card = model_2d
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    expected = {}
    for index, (image_name, mask_name) in enumerate([("a.png", "a.png"), ("b.jpg", "b_mask.png"),
                                                     ("c.tif", "c_segmentation.tif")]):
        picture = blob_image((32 + 8 * index, 40))
        if image_name.endswith(".tif"):
            tifffile.imwrite(images / image_name, picture)
        else:
            Image.fromarray(picture).save(images / image_name)
        prediction = segment(read_image(images / image_name).array, model).labels
        truth = np.roll(prediction, 3 + index, axis=1) * 255
        truth[:2] = 255
        Image.fromarray(truth.astype(np.uint8)).save(masks / mask_name) if mask_name.endswith(".png") \
            else tifffile.imwrite(masks / mask_name, truth.astype(np.uint8))
        expected[image_name] = _hand_scores(prediction, truth)
    Image.fromarray(blob_image((32, 32))).save(images / "lonely.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(masks / "stray_mask.png")
    report = tmp_path / "reports" / "scores.json"
    code, out, err = run_cli(capsys, "evaluate", "--model", card, "--images", images, "--masks", masks,
                             "--json", report)
    assert code == 0, err
    assert "lonely.png" in err and "stray_mask.png" in err
    numbers = json.loads(report.read_text())
    rows = {row["image"]: row for row in numbers["per_image"]}
    assert set(rows) == set(expected)
    assert rows["b.jpg"]["mask"] == "b_mask.png"
    for name, (iou, dice) in expected.items():
        assert rows[name]["iou"] == pytest.approx(iou, abs=1e-6)
        assert rows[name]["dice"] == pytest.approx(dice, abs=1e-4)
        assert f"{iou:.4f}" in out
    mean_iou = np.mean([v[0] for v in expected.values()])
    assert numbers["mean"]["iou"] == pytest.approx(mean_iou, abs=1e-6)
    assert f"{mean_iou:.4f}" in out
    assert numbers["unpaired_images"] == ["lonely.png"] and numbers["unpaired_masks"] == ["stray_mask.png"]


def test_evaluate_scores_only_the_validation_images_of_a_split(model_2d, tmp_path, capsys):
    _, card = model_2d
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(blob_image((24, 24))).save(images / f"{name}.png")
        Image.fromarray(np.zeros((24, 24), np.uint8)).save(masks / f"{name}.png")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["a"], "val": ["c", "b"]}))
    report = tmp_path / "scores.json"
    code, _, err = run_cli(capsys, "evaluate", "--model", card, "--images", images, "--masks", masks,
                           "--split", split, "--json", report)
    assert code == 0, err
    numbers = json.loads(report.read_text())
    assert [row["image"] for row in numbers["per_image"]] == ["b.png", "c.png"]
    assert numbers["unpaired_masks"] == [] and numbers["split"] == str(split)
    split.write_text(json.dumps({"val": ["b", "zzz"]}))
    code, _, err = run_cli(capsys, "evaluate", "--model", card, "--images", images, "--masks", masks,
                           "--split", split)
    assert code == 2 and "'zzz'" in err and "Traceback" not in err
    split.write_text("{")  # a broken file: one line that names the flag
    code, _, err = run_cli(capsys, "evaluate", "--model", card, "--images", images, "--masks", masks,
                           "--split", split)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--split" in err and "not a readable" in err


def test_evaluate_multiclass_dice_per_class(tiny_model, tmp_path, capsys):
    model = tiny_model(num_classes=3)
    card = saved(model, tmp_path / "models")
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    picture = blob_image((40, 40))
    tifffile.imwrite(images / "scan.tif", picture)
    prediction = segment(picture, model).labels
    truth = np.zeros_like(prediction)
    truth[5:25, 5:30] = 1
    truth[25:35, 10:38] = 2
    tifffile.imwrite(masks / "scan_seg.tif", truth)
    report = tmp_path / "scores.json"
    code, out, err = run_cli(capsys, "evaluate", "--model", card, "--images", images, "--masks", masks,
                             "--json", report)
    assert code == 0, err
    row = json.loads(report.read_text())["per_image"][0]
    for label, name in ((1, "class 1"), (2, "class 2")):
        p, t = prediction == label, truth == label
        hand = 2 * np.logical_and(p, t).sum() / (p.sum() + t.sum()) if p.sum() + t.sum() else 1.0
        assert row["class_dice"][name] == pytest.approx(hand, abs=1e-9)
    assert "Dice class 2" in out


def test_evaluate_without_pairs_exit_2(model_2d, tmp_path, capsys):
    _, card = model_2d
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    Image.fromarray(blob_image((16, 16))).save(images / "one.png")
    Image.fromarray(blob_image((16, 16))).save(masks / "two.png")
    code, _, err = run_cli(capsys, "evaluate", "--model", card, "--images", images, "--masks", masks)
    assert code == 2 and "no image" in err and "Traceback" not in err


def test_pairing_fallbacks_and_ambiguity(tmp_path):
    images = [tmp_path / "images" / name for name in ("a.png", "b.png", "case_0000.nii.gz", "d.png", "e.png")]
    masks = [tmp_path / "masks" / name
             for name in ("a.png", "b_mask.png", "case.nii.gz", "d_seg.png", "d_mask.png", "z.png")]
    pairs, lonely_images, lonely_masks = pair_files(images, masks)
    found = {image.name: mask.name for image, mask in pairs}
    assert found == {"a.png": "a.png", "b.png": "b_mask.png", "case_0000.nii.gz": "case.nii.gz"}
    assert [p.name for p in lonely_images] == ["d.png", "e.png"]
    assert [p.name for p in lonely_masks] == ["d_mask.png", "d_seg.png", "z.png"]
    same_folder = [tmp_path / "x.png", tmp_path / "x_mask.png"]
    pairs, _, _ = pair_files(same_folder, same_folder)
    assert [(i.name, m.name) for i, m in pairs] == [("x.png", "x_mask.png")]


# ----------------------------------------------------------------------------- subprocess


def test_python_dash_m_cli_segment_and_error(tmp_path):
    from napari_lgms.models.registry import create_model
    from napari_lgms.zoo import untrained_card

    card = untrained_card("tinyunet", in_channels=1)
    card.input.patch_size = [32, 32]
    network = create_model("tinyunet", in_channels=1).eval()
    card_path = save_model(network, card, tmp_path / "models")
    source = tmp_path / "img.png"
    Image.fromarray(blob_image((48, 40))).save(source)
    (tmp_path / "bad.png").write_text("text")
    env = {**os.environ, "PYTHONPATH": str(REPO), "NAPARI_LGMS_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "napari_lgms.cli", "segment", "--model", str(card_path),
               "--output", str(tmp_path / "out")]
    done = subprocess.run(command + [str(source)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert read_mask(tmp_path / "out" / "img.png").shape == (48, 40)
    failed = subprocess.run(command + [str(tmp_path / "bad.png")], capture_output=True, text=True, env=env,
                            timeout=300)
    assert failed.returncode == 2
    assert len(failed.stderr.strip().splitlines()) == 1 and "bad.png" in failed.stderr


def test_a_single_input_shows_progress_on_a_terminal(model_2d, tmp_path, capsys, monkeypatch):
    import sys

    model, card = model_2d
    source = tmp_path / "big.png"
    Image.fromarray(blob_image((96, 80))).save(source)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    code, out, err = run_cli(capsys, "segment", source, "--model", card, "--output", tmp_path / "out")
    assert code == 0, err
    assert "1/1 big.png" in err and "[#" in err and err.endswith("\r")  # drawn, then cleared
    assert out.count("\n") == 1


def test_a_long_input_reports_progress_lines_in_a_log(model_2d, tmp_path, capsys, monkeypatch):
    from napari_lgms.cli import segment_cmd

    model, card = model_2d
    source = tmp_path / "big.png"
    Image.fromarray(blob_image((96, 80))).save(source)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    monkeypatch.setattr(segment_cmd, "PROGRESS_LOG_SECONDS", 0.0)  # every report is "long"
    code, out, err = run_cli(capsys, "segment", source, "--model", card, "--output", tmp_path / "out")
    assert code == 0, err
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("napari-lgms segment: big.png: ") and "(input 1 of 1)" in line
                         for line in lines)
    assert "\r" not in err and out.count("\n") == 1
