"""Hostile and careless inputs, generated here: one clear line, exit status 2, nothing written
outside the intended folders, nothing left behind; and kills at every step of a save.

Each CLI case runs ``napari_lgms.cli.main`` in-process and compares the listings of the
work folder, the output folder and the user model folder before and after.
"""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from napari_lgms.cli import main
from napari_lgms.corrections import CorrectionsStore, StoreWarning
from napari_lgms.errors import InputError, LgmsError
from napari_lgms.zoo import ModelLoadError, load_model, save_model, scan_models, validate_model_name
from napari_lgms.zoo.store import LEGACY_PT_RULE

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers
def tree(*roots: Path) -> set[str]:
    """Every path under ``roots`` (the listing compared before and after a hostile run)."""
    return {str(p) for root in roots if root.exists() for p in root.rglob("*")}


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str) -> str:
    """Exit status 2 and exactly one line on stderr, without a traceback; returns the line."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def sandbox(tmp_path, monkeypatch, tiny_model):
    """A work folder (the current directory), a user model folder with one good model, an image."""
    models = Path(os.environ["NAPARI_LGMS_MODEL_DIR"])
    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    good = tiny_model(name="good-model")
    card = save_model(good.network, good.card, models)
    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 20), dtype=np.uint8)).save(image)
    return SimpleNamespace(root=tmp_path, models=models, work=work, card=card, image=image,
                           out=tmp_path / "out", good=good)


# ----------------------------------------------------------------------------- names
BAD_NAMES = ["../../x", "a/b", "..", ".hidden", "", "x" * 101, "a\\b", "nul\0byte", "tab\tname", "/abs"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_model_name_is_a_name(name, sandbox):
    with pytest.raises(InputError) as info:
        validate_model_name(name)
    assert "\n" not in str(info.value) and "letters, digits" in str(info.value)
    before = tree(sandbox.root, sandbox.models)
    card = dict(sandbox.good.card.__dict__, name=name)
    with pytest.raises(InputError):
        save_model(sandbox.good.network, type(sandbox.good.card)(**card), sandbox.models)
    assert tree(sandbox.root, sandbox.models) == before


# ----------------------------------------------------------------------------- cards
def _mutate(change):
    def apply(card: dict) -> str:
        change(card)
        return json.dumps(card)
    return apply


def _set(path: str, value):
    *parents, last = path.split(".")

    def change(card):
        target = card
        for key in parents:
            target = target[key]
        target[last] = value
    return _mutate(change)


def _pop(path: str):
    section, key = path.split(".")
    return _mutate(lambda card: card[section].pop(key))


CARD_CASES = {
    "name-parent": _set("name", "../../x"),
    "name-subfolder": _set("name", "a/b"),
    "no-in-channels": _pop("arguments.in_channels"),
    "arguments-list": _set("arguments", [1, 2]),
    "unknown-architecture": _set("architecture", "resnet9000"),
    "patch-zero": _set("input.patch_size", [0, 0]),
    "patch-negative": _set("input.patch_size", [-16, 16]),
    "threshold-text": _set("output.threshold", "x"),
    "threshold-nan": _set("output.threshold", float("nan")),
    "weights-parent": _set("weights.file", "../../w.safetensors"),
    "weights-absolute": _set("weights.file", "/etc/passwd"),
    "weights-subfolder": _set("weights.file", "sub/w.safetensors"),
    "argument-object": _set("arguments.width", {"a": 1}),
    "huge-argument": _set("arguments.width", 10 ** 9),
    "deep-json": lambda card: "[" * 200_000 + "]" * 200_000,
    "not-json": lambda card: "{nope",
    "json-array": lambda card: "[]",
    "bad-utf8": lambda card: "\udcff",
    "too-large": lambda card: " " * (5 << 20) + "{}",
}


def _write_bad_card(sandbox, case: str) -> Path:
    card = json.loads(sandbox.card.read_text())
    text = CARD_CASES[case](card)
    bad = sandbox.models / "bad.json"
    bad.write_bytes(text.encode("utf-8", "surrogateescape"))
    (sandbox.models / "bad.safetensors").write_bytes(sandbox.card.with_suffix(".safetensors").read_bytes())
    return bad


@pytest.mark.parametrize("case", sorted(CARD_CASES))
def test_a_bad_card_is_named_in_one_line_and_breaks_nothing(case, sandbox, capsys):
    bad = _write_bad_card(sandbox, case)
    before = tree(sandbox.root, sandbox.models)
    code, out, err = run_cli(capsys, "models")
    assert code == 0 and "good-model" in out and "Traceback" not in err
    assert err.strip().splitlines() == [next(line for line in err.splitlines() if "bad.json" in line)]

    code, out, err = run_cli(capsys, "segment", sandbox.image, "--model", "good-modl", "-o", sandbox.out)
    assert "unknown model 'good-modl'" in assert_one_line_error(code, err)

    code, out, err = run_cli(capsys, "export", "--model", bad)
    assert "bad.json" in assert_one_line_error(code, err)
    with pytest.raises(ModelLoadError) as info:
        load_model(bad)
    assert "\n" not in str(info.value)
    assert tree(sandbox.root, sandbox.models) == before


def test_a_card_asking_for_a_huge_network_is_refused_quickly(sandbox, capsys):
    card = json.loads(sandbox.card.read_text())
    card.update(name="huge", architecture="lgmsnet", arguments={"in_channels": 1, "num_classes": 1, "depths": [4096] * 5})
    (sandbox.models / "huge.json").write_text(json.dumps(card))
    (sandbox.models / "huge.safetensors").write_bytes(b"")
    import torch

    devices = []  # where every parameter built meanwhile lives: the huge one only on "meta", up to the bound
    hook = torch.nn.modules.module.register_module_parameter_registration_hook(
        lambda module, name, parameter: devices.append(parameter.device.type) if parameter is not None else None)
    try:
        code, out, err = run_cli(capsys, "models")
        assert code == 0 and "good-model" in out
        assert "huge.json" in err and "refusing to build it" in err and len(err.strip().splitlines()) == 1
        with pytest.raises(ModelLoadError, match="refusing to build it"):
            load_model(sandbox.models / "huge.json")
    finally:
        hook.remove()
    from napari_lgms.zoo.store import MAX_PARAMETER_TENSORS

    real = [d for d in devices if d != "meta"]
    assert len(real) < MAX_PARAMETER_TENSORS  # the huge network was never built for real


@pytest.mark.parametrize("seed", range(8))
def test_models_survives_any_bytes_in_the_user_folder(seed, sandbox, capsys):
    rng = np.random.default_rng(seed)
    for index in range(3):
        name = f"junk{index}"
        (sandbox.models / f"{name}.json").write_bytes(rng.integers(0, 256, int(rng.integers(0, 4000)), np.uint8).tobytes())
        (sandbox.models / f"{name}.safetensors").write_bytes(rng.integers(0, 256, 64, np.uint8).tobytes())
    code, out, err = run_cli(capsys, "models")
    assert code == 0 and "good-model" in out and "Traceback" not in err
    assert len(err.strip().splitlines()) == 3
    assert [e.name for e in scan_models()[0] if e.origin == "user"] == ["good-model"]


# ----------------------------------------------------------------------------- images
def _fifo(folder: Path) -> Path:
    path = folder / "fifo.png"
    os.mkfifo(path)
    return path


def _empty_folder(folder: Path) -> Path:
    (folder / "empty").mkdir()
    return folder / "empty"


def _folder_named_png(folder: Path) -> Path:
    (folder / "folder.png").mkdir()
    (folder / "folder.png" / "notes.txt").write_text("not an image")
    return folder / "folder.png"


def _dicom_folder(folder: Path) -> Path:
    series = folder / "series"
    series.mkdir()
    for index in range(2):
        (series / f"slice{index}").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    return series


def _time_series(folder: Path) -> Path:
    import nibabel as nib

    image = nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.float32), np.eye(4))
    image.header.set_xyzt_units("mm", "sec")
    path = folder / "cine.nii.gz"
    nib.save(image, path)
    return path


def _truncated_png(folder: Path) -> Path:
    path = folder / "cut.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:2000])
    return path


def _random_bytes(name: str):
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(np.random.default_rng(len(name)).integers(0, 256, 500, np.uint8).tobytes())
        return path
    return make


def _empty_file(name: str):
    def make(folder: Path) -> Path:
        (folder / name).write_bytes(b"")
        return folder / name
    return make


def _gzip_of_garbage(folder: Path) -> Path:
    path = folder / "garbage.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti header" * 30))
    return path


IMAGE_CASES = {
    "fifo": (_fifo, "not a regular file"),
    "empty-folder": (_empty_folder, "holds no supported image"),
    "folder-named-png": (_folder_named_png, "not an image file"),
    "dicom-without-pydicom": (_dicom_folder, "pydicom"),
    "nifti-time-series": (_time_series, "time series"),
    "truncated-png": (_truncated_png, "cut.png"),
    "random-png": (_random_bytes("noise.png"), "noise.png"),
    "random-nifti": (_random_bytes("noise.nii.gz"), "noise.nii.gz"),
    "random-tiff": (_random_bytes("noise.tif"), "noise.tif"),
    "empty-nifti": (_empty_file("empty.nii"), "empty.nii"),
    "empty-jpeg": (_empty_file("empty.jpg"), "empty.jpg"),
    "gzip-garbage": (_gzip_of_garbage, "garbage.nii.gz"),
}


@pytest.fixture
def no_hang():
    """Fail (rather than hang) when a case blocks for 30 s."""
    def alarm(signum, frame):
        raise TimeoutError("blocked")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_a_hostile_image_is_one_line_and_leaves_nothing(case, sandbox, capsys, monkeypatch, no_hang):
    from napari_lgms.io import dicom

    monkeypatch.setattr(dicom, "pydicom_available", lambda: False)
    make, expected = IMAGE_CASES[case]
    inputs = sandbox.root / "inputs"
    inputs.mkdir()
    source = make(inputs)
    before = tree(sandbox.root, sandbox.models)
    code, out, err = run_cli(capsys, "segment", source, "--model", "good-model", "-o", sandbox.out)
    assert expected in assert_one_line_error(code, err)
    assert tree(sandbox.root, sandbox.models) == before


def test_folder_messages_are_distinct(sandbox, monkeypatch):
    from napari_lgms.io import dicom, read_image

    monkeypatch.setattr(dicom, "pydicom_available", lambda: False)
    messages = set()
    for make in (_empty_folder, _folder_named_png, _dicom_folder):
        with pytest.raises(LgmsError) as info:
            read_image(make(sandbox.root))
        messages.add(str(info.value).split(";")[0].split(":")[-1])
    assert len(messages) == 3


class _Payload:
    """Pickled by a test; unpickling it would create ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_pt_file_is_one_line_and_never_unpickled(sandbox, capsys):
    import torch

    marker = sandbox.root / "pwned"
    legacy = sandbox.root / "legacy"
    legacy.mkdir()
    torch.save({"state_dict": _Payload(marker)}, legacy / "evil.pt")
    (legacy / "evil.json").write_text(sandbox.card.read_text())
    code, out, err = run_cli(capsys, "segment", sandbox.image, "--model", legacy / "evil.pt", "-o", sandbox.out)
    assert assert_one_line_error(code, err).endswith(LEGACY_PT_RULE)
    torch.save([1, 2], legacy / "evil.pt")  # loads under weights_only, but is not a state dict
    code, out, err = run_cli(capsys, "segment", sandbox.image, "--model", legacy / "evil.pt", "-o", sandbox.out)
    assert assert_one_line_error(code, err).endswith(LEGACY_PT_RULE)
    assert not marker.exists() and not sandbox.out.exists()


# ----------------------------------------------------------------------------- CLI arguments
@pytest.mark.parametrize("shape", ["33,47", "32,47", "31,32"])
def test_export_shape_must_be_a_multiple_of_the_size_divisor(shape, sandbox, capsys):
    before = tree(sandbox.root, sandbox.models)
    code, out, err = run_cli(capsys, "export", "--model", "lgmsnet", "--untrained", "--shape", shape)
    assert "a multiple of 32" in assert_one_line_error(code, err)
    assert tree(sandbox.root, sandbox.models) == before


def test_non_utf8_file_names_under_a_strict_utf8_stdout(tmp_path):
    folder = os.fsencode(tmp_path / "in")
    os.mkdir(folder)
    pixels = np.random.default_rng(1).integers(0, 255, (32, 32), dtype=np.uint8)
    names = [b"caf\xe9.png", b"plain.png"]  # Latin-1 bytes: not UTF-8
    for name in names:
        Image.fromarray(pixels).save(os.path.join(folder, name).decode("utf-8", "surrogateescape"))
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C", "LANG": "C"}
    done = subprocess.run([sys.executable, "-m", "napari_lgms.cli", "segment", os.fsdecode(folder),
                           "--model", "lgmsnet-synthetic-us", "-o", str(tmp_path / "out")],
                          env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"Traceback" not in done.stderr and len(done.stdout.splitlines()) == 2
    assert sorted(os.listdir(tmp_path / "out")) == sorted(os.fsdecode(n) for n in names)


# ----------------------------------------------------------------------------- Python API
def test_segment_takes_a_model_name_or_says_what_it_takes(sandbox):
    from napari_lgms import segment

    image = np.random.default_rng(2).random((16, 16)).astype(np.float32)
    assert segment(image, "good-model").labels.shape == (16, 16)
    with pytest.raises(ModelLoadError, match="unknown model"):
        segment(image, "no-such-model")
    with pytest.raises(InputError, match="model name, a path to a model card, or a LoadedModel") as info:
        segment(image, 42)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- corrections store
def _store_with_two(root: Path) -> CorrectionsStore:
    store = CorrectionsStore(root)
    for key in ("good", "victim"):
        store.save(key, np.ones((8, 6), np.float32), np.ones((8, 6), np.uint8), None, model="m")
    return store


MANIFEST_CASES = {
    "file-parent": lambda e, root: e.update(file="../outside.npz"),
    "file-absolute": lambda e, root: e.update(file=str(root.parent / "outside.npz")),
    "file-subfolder": lambda e, root: e.update(file="sub/x.npz"),
    "file-number": lambda e, root: e.update(file=42),
    "file-manifest": lambda e, root: e.update(file="manifest.json"),
    "key-mismatch": lambda e, root: e.update(key="good"),
    "shape-text": lambda e, root: e.update(image_shape="huge"),
    "no-timestamp": lambda e, root: e.pop("timestamp"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_a_hostile_manifest_entry_is_refused(case, tmp_path):
    root = tmp_path / "store"
    store = _store_with_two(root)
    (root / next(e.file for e in store.entries() if e.key == "victim")).unlink()
    outside = tmp_path / "outside.npz"
    np.savez(outside, image=np.zeros(3))
    manifest = json.loads((root / "manifest.json").read_text())
    MANIFEST_CASES[case](manifest["entries"]["victim"], root)
    (root / "manifest.json").write_text(json.dumps(manifest))
    before = tree(tmp_path)
    store = CorrectionsStore(root)
    with pytest.warns(StoreWarning, match="victim"):
        assert [e.key for e in store.entries()] == ["good"]
    with pytest.raises(InputError, match="outside the store") as info:
        store.load("victim")
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="outside the store"):
        store.delete("victim")
    assert outside.is_file() and tree(tmp_path) == before
    assert store.load("good").image.shape == (8, 6)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "no-meta"])
def test_an_unreadable_example_is_skipped_and_training_uses_the_rest(damage, tmp_path):
    from napari_lgms.training.data import discover_examples

    root = tmp_path / "store"
    store = _store_with_two(root)
    file = root / next(e.file for e in store.entries() if e.key == "victim")
    data = file.read_bytes()
    if damage == "truncate":
        file.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        file.write_bytes(b"PK\x03\x04" + b"\x00" * 200)
    elif damage == "empty":
        file.write_bytes(b"")
    else:
        np.savez(file, image=np.zeros((8, 6)), mask=np.zeros((8, 6), np.uint8))
    with pytest.warns(StoreWarning, match="victim"):
        assert [e.key for e in store.entries()] == ["good"]
    with pytest.raises(InputError) as info:
        store.load("victim")
    assert "\n" not in str(info.value)
    with pytest.warns(StoreWarning):
        examples, kind, _ = discover_examples(data=str(root))
    assert kind == "corrections" and [e.key for e in examples] == ["good"]


def test_a_deeply_nested_manifest_is_rebuilt_from_the_files(tmp_path):
    root = tmp_path / "store"
    _store_with_two(root)
    (root / "manifest.json").write_text("{" * 100_000)
    assert sorted(e.key for e in CorrectionsStore(root).entries()) == ["good", "victim"]


# ----------------------------------------------------------------------------- kills during saves
_KILL_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    kind, root, point = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def save(version):
        if kind == "model":
            import torch
            from napari_lgms.models.registry import create_model
            from napari_lgms.zoo import save_model, untrained_card
            torch.manual_seed(version)
            card = untrained_card("tinyunet", in_channels=1)
            card.name, card.version = "victim", str(version)
            save_model(create_model("tinyunet", in_channels=1), card, root)
        else:
            from napari_lgms.corrections import CorrectionsStore
            shape = (8 + version, 6)
            CorrectionsStore(root).save("victim", np.full(shape + (2,), version, np.float32),
                                        np.full(shape, version, np.uint8), None, model=f"v{version}")

    save(1)
    if point < 0:  # a loop of saves, killed from outside at a random moment
        print("ready", flush=True)
        version = 2
        while True:
            save(version % 2 + 1)
            version += 1
    real_replace, calls = os.replace, [0]

    def replace(source, target):
        calls[0] += 1
        if calls[0] == point:
            os._exit(9)  # killed before this rename
        real_replace(source, target)

    os.replace = replace
    save(2)  # a point past the save's last rename: it completes
""")


def _kill_run(kind: str, root: Path, point: int) -> None:
    subprocess.run([sys.executable, "-c", _KILL_SCRIPT, kind, str(root), str(point)],
                   capture_output=True, timeout=300, check=False)


def _kill_loop(kind: str, root: Path, seconds: float) -> None:
    process = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, kind, str(root), "-1"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout.readline().strip() == b"ready"
    time.sleep(seconds)
    process.kill()
    process.wait(timeout=60)


def _check_models(root: Path, monkeypatch) -> str:
    """Every model in ``root`` loads (its card and weights agree); returns the victim's version."""
    monkeypatch.setenv("NAPARI_LGMS_MODEL_DIR", str(root))
    entries, problems = scan_models()
    assert problems == []
    users = [e for e in entries if e.origin == "user"]
    assert [e.name for e in users] == ["victim"]
    return load_model("victim").card.version


def _check_store(root: Path) -> int:
    """The store's one entry describes exactly its pixels; returns its version."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entries = CorrectionsStore(root).entries()
    assert [e.key for e in entries] == ["victim"]
    example = CorrectionsStore(root).load("victim")
    version = int(example.image.flat[0])
    assert example.entry.model == f"v{version}" and example.entry.image_shape == list(example.image.shape)
    assert example.image.shape == (8 + version, 6, 2) and (example.mask == version).all()
    return version


@pytest.mark.parametrize("point", [1, 2, 3, 4, 5])
def test_a_kill_at_any_step_of_a_model_save_leaves_a_loadable_pair(point, tmp_path, monkeypatch):
    _kill_run("model", tmp_path, point)
    assert _check_models(tmp_path, monkeypatch) in ("1", "2")
    assert len(list(tmp_path.glob("*.json"))) == 1


@pytest.mark.parametrize("point", [1, 2, 3])
def test_a_kill_at_any_step_of_a_store_save_leaves_a_consistent_entry(point, tmp_path):
    _kill_run("store", tmp_path, point)
    assert _check_store(tmp_path) in (1, 2)


def test_random_kills_of_repeated_saves(tmp_path, monkeypatch):
    models, store = tmp_path / "models", tmp_path / "store"
    rng = np.random.default_rng(5)
    for _ in range(2):
        _kill_loop("model", models, float(rng.uniform(0.2, 1.5)))
        _check_models(models, monkeypatch)
    for _ in range(5):
        _kill_loop("store", store, float(rng.uniform(0.05, 0.5)))
        _check_store(store)


def test_orphans_of_killed_saves_are_removed_when_stale(sandbox):
    from napari_lgms._atomic import STALE_SECONDS

    leftovers = [sandbox.models / ".good-model.0a1b2c3d4e5f.safetensors", sandbox.models / ".x.json.abc.tmp"]
    fresh = sandbox.models / ".good-model.ffffffffffff.safetensors"
    for path in leftovers + [fresh]:
        path.write_bytes(b"half")
    old = time.time() - STALE_SECONDS - 60
    for path in leftovers:
        os.utime(path, (old, old))
    assert [e.name for e in scan_models()[0] if e.origin == "user"] == ["good-model"]
    assert not any(p.exists() for p in leftovers) and fresh.exists()  # a save in progress elsewhere
    load_model("good-model")


def test_pipes_under_model_and_store_file_names_never_block(sandbox, tmp_path, capsys, no_hang):
    os.mkfifo(sandbox.models / "pipe.json")
    (sandbox.models / "pipe.safetensors").write_bytes(b"")
    code, out, err = run_cli(capsys, "models")
    assert code == 0 and "good-model" in out and "pipe.json" in err and "not a regular file" in err
    os.mkfifo(sandbox.root / "legacy.pt")
    (sandbox.root / "legacy.json").write_text(sandbox.card.read_text())
    with pytest.raises(ModelLoadError, match="not a regular file"):
        load_model(sandbox.root / "legacy.pt")

    root = tmp_path / "store"
    _store_with_two(root)
    (root / "manifest.json").unlink()
    os.mkfifo(root / "manifest.json")
    os.mkfifo(root / "pipe-0000000000-00000000.npz")
    assert sorted(e.key for e in CorrectionsStore(root).entries()) == ["good", "victim"]
