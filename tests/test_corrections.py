"""Corrections store: save/replace/load/delete, atomicity under simulated crashes, recovery."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from napari_lgms import corrections
from napari_lgms.corrections import CorrectionsStore, default_store_root
from napari_lgms.errors import InputError


def _example(seed=0, shape=(12, 10)):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, shape + (3,), dtype=np.uint8)
    mask = np.zeros(shape, np.uint8)
    mask[2:6, 3:7] = 1
    prediction = np.zeros(shape, np.uint8)
    prediction[2:5, 3:7] = 1
    return image, mask, prediction


GEOMETRY = {"scale": [0.5, 0.5], "translate": [1.0, 2.0], "spacing": [0.5, 0.5], "affine": np.eye(3),
            "axes": "YXC", "layer": "scan", "slice_index": None, "box": [[0, 0], [12, 10]]}


def test_save_load_replace_delete(tmp_path):
    store = CorrectionsStore(tmp_path / "store")
    assert len(store) == 0
    image, mask, prediction = _example()
    entry = store.save("scan:0", image, mask, prediction, model="lgmsnet-polyp", geometry=GEOMETRY)
    assert entry.key == "scan:0" and entry.image_shape == [12, 10, 3]
    example = store.load("scan:0")
    assert np.array_equal(example.image, image) and np.array_equal(example.mask, mask)
    assert np.array_equal(example.prediction, prediction)
    assert example.entry.geometry["affine"] == np.eye(3).tolist() and example.entry.model == "lgmsnet-polyp"
    assert example.corrected_region.sum() == 4  # the row the user added

    mask2 = mask.copy()
    mask2[8:, :] = 1
    store.save("scan:0", image, mask2, prediction, model="lgmsnet-polyp-ft", geometry=GEOMETRY)
    assert len(store) == 1 and [e.model for e in store.entries()] == ["lgmsnet-polyp-ft"]
    assert np.array_equal(store.load("scan:0").mask, mask2)
    assert len(list((tmp_path / "store").glob("*.npz"))) == 1

    store.save("other", image[..., 0], mask, None, model="m")
    assert [e.key for e in CorrectionsStore(tmp_path / "store").entries()] == ["scan:0", "other"]
    assert store.load("other").prediction is None and store.load("other").corrected_region.sum() == mask.sum()
    store.delete("scan:0")
    assert [e.key for e in store.entries()] == ["other"]
    with pytest.raises(KeyError, match="no example"):
        store.load("scan:0")


def test_bad_input_is_refused_with_one_line(tmp_path):
    store = CorrectionsStore(tmp_path)
    image, mask, prediction = _example()
    with pytest.raises(InputError, match="does not match"):
        store.save("k", image, mask[:5], None, model="m")
    with pytest.raises(InputError, match="integer labels"):
        store.save("k", image, mask + 0.5, None, model="m")
    with pytest.raises(InputError, match="non-empty"):
        store.save("", image, mask, None, model="m")
    assert len(store) == 0


def test_crash_while_writing_data_keeps_existing_entries(tmp_path, monkeypatch):
    store = CorrectionsStore(tmp_path)
    image, mask, prediction = _example()
    store.save("a", image, mask, prediction, model="m")
    before = (tmp_path / store.entries()[0].file).read_bytes()

    def crashing_write(path, arrays):
        with open(path, "wb") as handle:
            handle.write(b"PK\x03\x04 half a zip")  # partially written ...
        raise RuntimeError("simulated crash")  # ... then the process dies

    monkeypatch.setattr(corrections, "_write_npz", crashing_write)
    with pytest.raises(RuntimeError):
        store.save("a", image, np.zeros_like(mask), prediction, model="m")  # replacing
    with pytest.raises(RuntimeError):
        store.save("b", image, mask, prediction, model="m")  # adding
    monkeypatch.undo()

    reopened = CorrectionsStore(tmp_path)
    assert [e.key for e in reopened.entries()] == ["a"]
    assert (tmp_path / reopened.entries()[0].file).read_bytes() == before
    assert np.array_equal(reopened.load("a").mask, mask)
    assert not list(tmp_path.glob(".*.tmp"))


def test_crash_before_manifest_update_recovers_entry(tmp_path, monkeypatch):
    store = CorrectionsStore(tmp_path)
    image, mask, prediction = _example()
    store.save("a", image, mask, prediction, model="m")

    def crashing_manifest(self, entries):
        raise RuntimeError("killed before the manifest was rewritten")

    monkeypatch.setattr(CorrectionsStore, "_write_manifest", crashing_manifest)
    with pytest.raises(RuntimeError):
        store.save("b", image, mask, prediction, model="m")
    monkeypatch.undo()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert list(manifest["entries"]) == ["a"]  # the manifest lags the data files ...
    reopened = CorrectionsStore(tmp_path)
    assert sorted(e.key for e in reopened.entries()) == ["a", "b"]  # ... and the entry is adopted
    assert np.array_equal(reopened.load("b").image, image)
    assert sorted(json.loads((tmp_path / "manifest.json").read_text())["entries"]) == ["a", "b"]


def test_manifest_entry_without_file_is_dropped_and_corrupt_manifest_rebuilt(tmp_path):
    store = CorrectionsStore(tmp_path)
    image, mask, prediction = _example()
    store.save("a", image, mask, prediction, model="m")
    store.save("b", image, mask, prediction, model="m")
    (tmp_path / store.load("a").entry.file).unlink()  # a delete interrupted after removing the file
    assert [e.key for e in CorrectionsStore(tmp_path).entries()] == ["b"]
    (tmp_path / "manifest.json").write_text("{not json")
    assert [e.key for e in CorrectionsStore(tmp_path).entries()] == ["b"]


def test_temp_files_left_by_a_killed_write_are_cleaned_up_when_old(tmp_path):
    import os
    import time

    store = CorrectionsStore(tmp_path)
    image = np.zeros((8, 8), np.float32)
    store.save("a", image, np.ones((8, 8), np.uint8), None, model="m")
    stale = tmp_path / ".manifest.json.abc123.tmp"
    live = tmp_path / ".a-0000000000.npz.def456.tmp"
    for temp in (stale, live):
        temp.write_bytes(b"half a file")
    old = time.time() - corrections.STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))

    reopened = CorrectionsStore(tmp_path)
    assert [e.key for e in reopened.entries()] == ["a"]
    assert not stale.exists()
    assert live.exists()  # may be a write in progress in another process


def test_default_root_is_per_project(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_LGMS_CORRECTIONS_DIR", str(tmp_path))
    assert default_store_root("liver") == tmp_path / "liver"
    assert default_store_root() == tmp_path / "default"
    with pytest.raises(InputError):
        default_store_root("../escape")
    monkeypatch.delenv("NAPARI_LGMS_CORRECTIONS_DIR")
    assert default_store_root("p").parts[-2:] == ("corrections", "p")


def test_store_module_needs_neither_torch_nor_qt():
    import subprocess

    code = ("import sys, napari_lgms.corrections; "
            "sys.exit(int(any(m in sys.modules for m in ('torch', 'qtpy', 'PySide6'))))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_each_save_writes_a_new_file_and_the_manifest_names_it(tmp_path):
    store = CorrectionsStore(tmp_path)
    image, mask, prediction = _example()
    first = store.save("a", image, mask, prediction, model="m1")
    second = store.save("a", image[:6], mask[:6], prediction[:6], model="m2")
    assert first.file != second.file and not (tmp_path / first.file).exists()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["entries"]["a"]["file"] == second.file
    example = store.load("a")
    assert example.entry.model == "m2" and example.entry.image_shape == list(example.image.shape)


def test_an_unlisted_newer_version_is_adopted_and_an_older_one_removed_when_stale(tmp_path, monkeypatch):
    import os
    import time

    store = CorrectionsStore(tmp_path)
    image, mask, prediction = _example()
    old = store.save("a", image, mask, prediction, model="old")
    manifest = (tmp_path / "manifest.json").read_text()
    new = store.save("a", image[:6], mask[:6], prediction[:6], model="new")
    (tmp_path / "manifest.json").write_text(manifest)  # killed before the manifest switch
    assert [e.model for e in CorrectionsStore(tmp_path).entries()] == ["new"]

    stale = tmp_path / old.file  # a superseded version whose deletion was killed
    np.savez(stale, image=image, mask=mask, meta=np.array(json.dumps({**json.loads(manifest)["entries"]["a"]})))
    assert [e.model for e in CorrectionsStore(tmp_path).entries()] == ["new"] and stale.exists()
    past = time.time() - corrections.STALE_TEMP_SECONDS - 60
    os.utime(stale, (past, past))
    assert [e.file for e in CorrectionsStore(tmp_path).entries()] == [new.file] and not stale.exists()


def test_delete_removes_every_version_so_none_comes_back(tmp_path):
    store = CorrectionsStore(tmp_path)
    image, mask, prediction = _example()
    first = store.save("a", image, mask, prediction, model="m")
    manifest = (tmp_path / "manifest.json").read_text()
    store.save("a", image, mask, prediction, model="m2")
    (tmp_path / "manifest.json").write_text(manifest)  # the newer version is unlisted
    (tmp_path / first.file).write_bytes(b"")  # a truncated leftover of an earlier version
    store.delete("a")
    assert len(CorrectionsStore(tmp_path)) == 0 and not list(tmp_path.glob("*.npz"))
