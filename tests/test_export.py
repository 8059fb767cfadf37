"""ONNX export: ONNX Runtime reproduces torch, the card travels with the file, the CLI works."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_lgms.cli import main
from napari_lgms.export import export_model, ort_session
from napari_lgms.models import create_model
from napari_lgms.zoo import LoadedModel, save_model, sha256_of, untrained_card

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
torch.set_num_threads(1)


def saved_model(tmp_path, name="unext", patch=(64, 64)):
    torch.manual_seed(0)
    network = create_model(name).eval()
    card = untrained_card(name)
    card.input.patch_size = list(patch)
    return save_model(network, card, tmp_path / "models"), network


def run_onnx(path, array):
    session = ort_session(path.read_bytes(), threads=1)
    return session.run(None, {"image": array})[0]


@pytest.mark.parametrize("name, patch", [("lgmsnet", (64, 64)), ("lgmsnet3d", (32, 32, 32))])
def test_onnx_runtime_output_matches_torch(tmp_path, name, patch):
    card_file, network = saved_model(tmp_path, name, patch)
    model = LoadedModel(network, untrained_card(name), card_file, "path")
    model.card.input.patch_size = list(patch)
    path = export_model(model, tmp_path / "out" / f"{name}.onnx")
    x = torch.randn((1, network.arguments["in_channels"]) + tuple(patch))
    with torch.no_grad():
        expected = network(x).numpy()
    np.testing.assert_allclose(run_onnx(path, x.numpy()), expected, rtol=1e-3, atol=1e-3)


def test_cli_export_writes_onnx_and_card_with_sha256(tmp_path, capsys):
    card_file, network = saved_model(tmp_path)
    output = tmp_path / "exported" / "unext-small.onnx"
    assert main(["export", "--model", str(card_file), "--format", "onnx", "--output", str(output)]) == 0
    assert "wrote" in capsys.readouterr().out
    card = json.loads(output.with_suffix(".json").read_text())
    assert card["onnx"]["file"] == output.name
    assert card["onnx"]["sha256"] == sha256_of(output)
    assert card["onnx"]["input_shape"] == [1, 3, 64, 64]
    assert card["architecture"] == "unext" and card["weights"]["sha256"]
    x = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = network(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_onnx(output, x), expected, rtol=1e-3, atol=1e-3)


def test_cli_export_shape_option(tmp_path):
    card_file, _ = saved_model(tmp_path)
    output = tmp_path / "wide.onnx"
    assert main(["export", "-m", str(card_file), "-o", str(output), "--shape", "32,96"]) == 0
    assert json.loads(output.with_suffix(".json").read_text())["onnx"]["input_shape"] == [1, 3, 32, 96]


@pytest.mark.parametrize("arguments, message", [
    (["--output", "model.txt"], "must end in .onnx"),
    (["--shape", "32"], "--shape must be 2"),
])
def test_cli_export_bad_input_is_one_line_error(tmp_path, capsys, arguments, message):
    card_file, _ = saved_model(tmp_path)
    arguments = [a if a != "model.txt" else str(tmp_path / a) for a in arguments]
    assert main(["export", "-m", str(card_file)] + arguments) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error


def test_cli_export_unknown_model_fails_cleanly(capsys):
    assert main(["export", "-m", "no-such-model"]) == 2
    assert "unknown model" in capsys.readouterr().err
