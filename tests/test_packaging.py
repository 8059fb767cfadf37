"""The installable plugin: manifest, import hygiene, the wheel in a clean environment, `models`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from napari_lgms.cli import main

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(sys.executable).parent


def run_python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, **kwargs)


def test_manifest_validates_with_imports():
    result = subprocess.run([str(SCRIPTS / "npe2"), "validate", "napari-lgms", "--imports"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_manifest_targets_do_not_import_torch_or_bind_qt():
    modules = sorted({
        cmd["python_name"].split(":")[0]
        for cmd in _manifest()["contributions"]["commands"]
    })
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print('torch' in sys.modules)\n"
    )
    result = run_python(code, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False", f"torch imported by one of {modules}"


def test_qt_is_only_imported_through_qtpy():
    offenders = []
    for path in list((ROOT / "napari_lgms").rglob("*.py")) + list((ROOT / "training").rglob("*.py")):
        text = path.read_text()
        for binding in ("PySide6", "PySide2", "PyQt5", "PyQt6"):
            if f"import {binding}" in text or f"from {binding}" in text:
                offenders.append(f"{path.relative_to(ROOT)} ({binding})")
    assert not offenders


def test_models_command_lists_every_registered_model_with_exact_counts(capsys):
    assert main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["lgmsnet"]["parameters"] == 2_321_393
    assert rows["lgmsnet3d"]["parameters"] == 6_193_742 and rows["lgmsnet3d"]["dims"] == "3D"
    assert rows["tinyunet"]["classes"] == 1
    for name in ("cmunext", "unext", "esdmrnet"):
        assert rows[name]["weights"] in ("none yet", "shipped", "user")
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert "2,321,393" in table and "parameters" in table.splitlines()[0]


def _manifest() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "napari_lgms" / "napari.yaml").read_text())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return next(out.glob("napari_lgms-*.whl"))


def test_wheel_layout(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "napari_lgms/napari.yaml" in names
    assert "napari_lgms/training/__init__.py" in names
    assert any(n.startswith("napari_lgms/training/configs/") and n.endswith(".yaml") for n in names)
    assert not any(n.startswith(("training/", "tests/", "resources/")) for n in names)
    shipped = [n for n in names if n.startswith("napari_lgms/resources/models/")]
    cards = {n[:-5] for n in shipped if n.endswith(".json")}
    assert cards and cards == {n[:-12] for n in shipped if n.endswith(".safetensors")}


@pytest.mark.slow
def test_wheel_in_a_clean_environment_lists_and_loads_shipped_models(wheel, tmp_path):
    env_dir = tmp_path / "clean-env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    torch_version = run_python("import torch; print(torch.__version__.split('+')[0])").stdout.strip()
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"torch=={torch_version}", str(wheel)],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["NAPARI_LGMS_MODEL_DIR"] = str(tmp_path / "no-user-models")
    listing = subprocess.run([str(env_dir / "bin" / "napari-lgms"), "models", "--json"],
                             capture_output=True, text=True, env=env, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    shipped = [row for row in json.loads(listing.stdout) if row["weights"] == "shipped"]
    assert shipped, "the wheel ships no model"
    code = (
        "import sys, napari_lgms\n"
        "assert 'site-packages' in napari_lgms.__file__, napari_lgms.__file__\n"
        "from napari_lgms.zoo import load_model\n"
        "import torch\n"
        "for name in sys.argv[1:]:\n"
        "    m = load_model(name)\n"
        "    assert m.origin == 'shipped'\n"
        "    x = torch.zeros(1, m.card.in_channels, *([32] * m.card.spatial_dims))\n"
        "    print(name, tuple(m.network(x).shape))\n"
    )
    loaded = subprocess.run([str(python), "-c", code, *(row["name"] for row in shipped)],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert len(loaded.stdout.splitlines()) == len(shipped)
