"""Every model shipped in ``resources/models``: an honest, complete card, intact weights, a working network.

Real-data models (trained from a ``training/configs`` file) must also name their
data terms and citations, the exact command, the recorded split, and their
validation scores as users get them (``metrics.engine``).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from napari_lgms.zoo.card import LEGACY_INPUT_FIELDS

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "resources" / "models"
CONFIGS = ROOT / "training" / "configs"
CARDS = sorted(SHIPPED.glob("*.json"))
REAL_DATA = sorted(p for p in CARDS if (CONFIGS / f"{p.stem}.yaml").exists())


NAMED_IN_THE_ISSUE = ("lgmsnet-polyp", "lgmsnet-breast-us", "lgmsnet3d-hippocampus", "esdmrnet-polyp",
                      "esdmrnet-breast-us")  # scripts and users rely on these exact names


def test_the_named_models_are_shipped():
    names = {p.stem for p in CARDS}
    assert set(NAMED_IN_THE_ISSUE) <= names
    assert set(NAMED_IN_THE_ISSUE) <= {p.stem for p in REAL_DATA}


@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: p.stem)
class TestShippedModel:
    def test_card_is_complete(self, card_path):
        card = json.loads(card_path.read_text())
        assert card["name"] == card_path.stem
        for key in ("architecture", "arguments", "input", "normalization", "class_names", "output",
                    "description", "licence", "citation", "intended_use", "weights", "metrics", "training"):
            assert card.get(key), f"{card_path.name}: {key} is missing or empty"
        assert "not a medical device" in card["intended_use"].lower()
        assert not set(LEGACY_INPUT_FIELDS) & set(card["input"]), "the arguments give these; the card must not repeat them"
        assert len(card["class_names"]) == max(2, card["arguments"]["num_classes"])
        assert card["training"]["data"] and card["training"]["terms"]
        assert "split" in card["metrics"] and card["training"]["split"]["description"]

    def test_weights_match_their_hash_and_are_half_precision(self, card_path):
        from napari_lgms.zoo import sha256_of

        card = json.loads(card_path.read_text())
        weights = SHIPPED / card["weights"]["file"]
        assert sha256_of(weights) == card["weights"]["sha256"]
        assert card["weights"]["dtype"] == "float16"
        assert weights.stat().st_size < 16 * 2**20

    def test_loads_and_segments_a_generated_input(self, card_path):
        from napari_lgms import segment
        from napari_lgms.zoo import load_model

        model = load_model(card_path)
        card = model.card
        shape = (24, 40, 36) if card.spatial_dims == 3 else (120, 150)
        rgb = card.image_channels == 3
        image = np.random.default_rng(0).integers(0, 255, shape + ((3,) if rgb else ()))
        labels = segment(image.astype(np.uint8), model, channel_axis=-1 if rgb else None).labels
        assert labels.shape == shape
        assert labels.max() < len(card.class_names)


@pytest.mark.parametrize("card_path", REAL_DATA, ids=lambda p: p.stem)
def test_real_data_card_is_reproducible_and_honest(card_path):
    card = json.loads(card_path.read_text())
    training = card["training"]
    assert f"training/configs/{card_path.stem}.yaml" in training["command"]
    assert len(card["citation"]) >= 2  # the network and the dataset
    engine = card["metrics"]["engine"]
    split_file = ROOT / engine["split"].split(":")[0]
    assert split_file.is_file()
    validation = json.loads(split_file.read_text())["val"]
    assert engine["images"] == len(validation)
    assert 0.0 <= engine["dice"] <= 1.0 and 0.0 <= engine["iou"] <= 1.0
    assert "--split" in engine["command"]
    default_tta = card["output"].get("test_time_augmentation", "none")
    assert engine.get("test_time_augmentation", "none") == default_tta, "scores must use the card's default"
    if default_tta != "none":
        assert set(engine["one_pass"]) == {"iou", "dice"}, "the one-pass scores go beside them"


def test_readme_models_table_is_generated_from_the_cards():
    """README.md holds exactly what ``scripts/models_table.py`` prints (``--write`` updates it)."""
    spec = importlib.util.spec_from_file_location("models_table", ROOT / "scripts" / "models_table.py")
    models_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models_table)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert models_table.readme_table(readme) == models_table.table(), \
        "README.md's models table is out of date: run python scripts/models_table.py --write"
