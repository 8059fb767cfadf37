"""The one card builder: what a new version inherits, and how scores are recorded."""
from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest

torch = pytest.importorskip("torch")

# what a fine-tune records anew; everything else on its card is its parent's
FINETUNE_RECORDS = {"name", "version", "description", "training", "metrics", "lineage", "weights", "created"}


def test_card_metrics_put_the_split_and_selection_first_and_round_the_scores():
    from napari_lgms.training.cards import card_metrics

    metrics = card_metrics("validation: 2 images", "dice", {"iou": 0.12345678, "dice": 0.5}, epoch=3)
    assert list(metrics) == ["split", "selected_by", "epoch", "iou", "dice"]
    assert metrics["iou"] == 0.123457 and metrics["epoch"] == 3


def test_a_finetuned_card_keeps_all_its_parent_says_about_the_network(tiny_model, tmp_path):
    from napari_lgms.clicks.network import promptable_from
    from napari_lgms.corrections import CorrectionsStore
    from napari_lgms.samples import make_ultrasound
    from napari_lgms.training import finetune
    from napari_lgms.zoo import load_model, save_model

    plain = tiny_model(licence="CC0-1.0", citation=["a citation"], intended_use="testing only")
    network, card = promptable_from(plain.network, plain.card)  # a prompt: a field beyond the basics
    parent = load_model(save_model(network.eval(), card, tmp_path / "parent"))
    store = CorrectionsStore(tmp_path / "store")
    for seed in range(2):
        image, mask = make_ultrasound(shape=(32, 32), seed=seed)
        store.save(f"example {seed}", image, mask, np.zeros_like(mask), model=card.name)

    result = finetune(parent, corrections=tmp_path / "store", output=tmp_path / "out", steps=2, device="cpu")

    child, parent_fields = result.candidate.card.to_dict(), parent.card.to_dict()
    inherited = {f.name for f in fields(type(parent.card))} - FINETUNE_RECORDS
    assert {key: child.get(key) for key in inherited} == {key: parent_fields.get(key) for key in inherited}
    assert child["prompt"] is not None and child["lineage"]["parent"] == card.name
