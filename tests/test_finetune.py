"""Fine-tuning from corrections: never worse, budget respected, lineage, CLI."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_training import ellipse_phantom, write_2d_dataset  # noqa: E402


def corrections_store(root, count=6, shape=(32, 32), seed=0):
    from napari_lgms.corrections import CorrectionsStore

    store = CorrectionsStore(root)
    rng = np.random.default_rng(seed)
    for i in range(count):
        image, mask = ellipse_phantom(rng, shape)
        prediction = np.zeros_like(mask)  # the model missed the whole object
        store.save(f"img{i}", image.astype(np.float32), mask, prediction, model="tiny-test",
                   geometry={"axes": "YX", "layer": "img"})
    return root


def saved_tiny(tiny_model, tmp_path, **fields):
    from napari_lgms.zoo import load_model, save_model

    loaded = tiny_model(**fields)
    path = save_model(loaded.network, loaded.card, tmp_path / "parent")
    return load_model(path)


def run(generator):
    reports = []
    while True:
        try:
            reports.append(next(generator))
        except StopIteration as done:
            return done.value, reports


def test_finetune_from_corrections_improves_and_records_lineage(tmp_path, tiny_model):
    from napari_lgms.training import finetune_steps
    from napari_lgms.zoo import load_model, sha256_of

    parent = saved_tiny(tiny_model, tmp_path, input={
        "spatial_dims": 2, "channels": 1, "axes": "YX", "patch_size": [32, 32], "size_divisor": 4,
        "mode": "resize", "spacing": None})
    store = corrections_store(tmp_path / "store", count=6)
    result, reports = run(finetune_steps(parent, corrections=store, output=tmp_path / "out", steps=60,
                                         lr=0.01, eval_every=20, device="cpu"))
    assert {"loading", "validate", "train", "saving", "done"} <= {r.phase for r in reports}
    assert result.metrics_after["dice"] >= result.metrics_before["dice"]
    assert not result.validated_on_training and result.steps == 60
    card = json.loads(result.card_path.read_text())
    assert card["name"].startswith("tiny-test-ft-") and card["version"] == "2"
    lineage = card["lineage"]
    assert lineage["parent"] == "tiny-test" and lineage["parent_sha256"] == sha256_of(
        parent.path.with_suffix(".safetensors"))
    assert lineage["metrics_before"]["dice"] == pytest.approx(result.metrics_before["dice"], abs=1e-6)
    assert lineage["data"]["kind"] == "corrections" and len(lineage["data"]["keys"]) == 6
    assert load_model(result.card_path).card.name == card["name"]


def test_never_worse_than_the_start(tmp_path, tiny_model):
    """A learning rate that wrecks the weights: the starting weights must come back unchanged."""
    from napari_lgms.training import finetune
    from napari_lgms.zoo import load_model

    parent = saved_tiny(tiny_model, tmp_path)
    store = corrections_store(tmp_path / "store", count=4)
    result = finetune(parent, corrections=store, output=tmp_path / "out", steps=6, lr=1e4, eval_every=3,
                      device="cpu")
    assert result.metrics_after["dice"] >= result.metrics_before["dice"]
    if not result.improved:
        child = load_model(result.card_path).network.state_dict()
        for key, value in parent.network.state_dict().items():
            assert torch.equal(child[key], value), key
        assert "no improvement" in result.message


def test_time_budget_is_respected(tmp_path, tiny_model):
    from napari_lgms.training import finetune

    parent = saved_tiny(tiny_model, tmp_path)
    store = corrections_store(tmp_path / "store", count=5)
    budget = 3.0
    started = time.monotonic()
    result = finetune(parent, corrections=store, output=tmp_path / "out", time_budget=budget, device="cpu",
                      preset="fast")
    took = time.monotonic() - started
    assert result.steps > 0
    # within budget + one step + the save; generous slack for a shared 2-core machine
    assert took < budget + 5.0, took
    assert result.elapsed <= took


def test_two_examples_validate_on_training_and_say_so(tmp_path, tiny_model):
    from napari_lgms.training import finetune

    parent = saved_tiny(tiny_model, tmp_path)
    data = write_2d_dataset(tmp_path / "d", count=2)
    result = finetune(parent, images=data / "images", masks=data / "masks", output=tmp_path / "out", steps=4,
                      device="cpu", name="custom-name")
    assert result.validated_on_training and "training examples" in result.message
    assert result.card_path.name == "custom-name.json"


def test_stop_request_still_saves(tmp_path, tiny_model):
    from napari_lgms.training import finetune

    parent = saved_tiny(tiny_model, tmp_path)
    store = corrections_store(tmp_path / "store", count=4)
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return calls["n"] > 3

    result = finetune(parent, corrections=store, output=tmp_path / "out", steps=1000, device="cpu",
                      should_stop=should_stop)
    assert result.steps == 3 and result.card_path.exists() and "stopped" in result.message


def test_cli_finetune(tmp_path, tiny_model, capsys):
    from napari_lgms.cli import main

    parent = saved_tiny(tiny_model, tmp_path)
    store = corrections_store(tmp_path / "store", count=4)
    code = main(["finetune", "--model", str(parent.path), "--corrections", str(store), "--steps", "3",
                 "--output", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 0
    assert "validation dice" in capsys.readouterr().out
    assert len(list((tmp_path / "out").glob("tiny-test-ft-*.json"))) == 1
    assert main(["finetune", "--model", str(parent.path), "--output", str(tmp_path / "out")]) == 2


def test_corrections_plus_folder_pairs_validate_on_held_out_corrections_only(tmp_path):
    """Folder pairs only ever train; validation comes from the corrections."""
    from napari_lgms.corrections import CorrectionsStore
    from napari_lgms.io import write_mask
    from napari_lgms.models.registry import create_model
    from napari_lgms.training import finetune_steps
    from napari_lgms.zoo import save_model, untrained_card

    rng = np.random.default_rng(0)
    store = CorrectionsStore(tmp_path / "store")
    for index in range(5):
        image = rng.normal(size=(32, 32)).astype(np.float32)
        mask = (image > 0.5).astype(np.uint8)
        store.save(f"c{index}", image, mask, np.zeros_like(mask), model="m", geometry={})
    for index in range(4):
        image = (rng.random((32, 32)) * 255).astype(np.uint8)
        write_mask(image, tmp_path / "pairs" / "images" / f"p{index}.png")
        write_mask((image > 128).astype(np.uint8), tmp_path / "pairs" / "masks" / f"p{index}.png")
    network = create_model("unext", in_channels=1)
    card = untrained_card("unext", in_channels=1)
    card.input["patch_size"] = [32, 32]
    card_file = save_model(network, card, tmp_path / "base")
    steps = finetune_steps(card_file, corrections=tmp_path / "store", images=tmp_path / "pairs" / "images",
                           masks=tmp_path / "pairs" / "masks", output=tmp_path / "out", steps=2, device="cpu")
    from napari_lgms._generators import run_to_end
    from napari_lgms.zoo import load_model

    result = run_to_end(steps)

    data = load_model(result.card_path).card.lineage["data"]
    assert len(data["keys"]) == 5 and len(data["names"]) == 4
    assert result.split["val"] and all(name.startswith("c") for name in result.split["val"])
    assert sum(name.startswith("p") for name in result.split["train"]) == 4
