"""Logits regression for every shipped model: a stored input gives the stored logits.

``tests/data/logits/NAME.npz`` holds, per model in ``resources/models``, a small
generated input (a sample from :mod:`napari_lgms.samples` at 64x64, or 32x32x32
for 3D, normalised as the card says, with one click in the middle for click models, float16) and the network's logits for it
(eager forward, fp32, eval mode, stored as float16; 3D logits averaged over 2x2x2
blocks to keep the folder small). Any change to a network, its layers or the
weight loading that moves a shipped model's output fails here.

Store the pair of a newly shipped model (``--all``: regenerate every pair, only when the weights
or the networks change on purpose)::

    .venv/bin/python tests/test_logits_regression.py [--all]
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CARDS = sorted((ROOT / "resources" / "models").glob("*.json"))
DATA = Path(__file__).resolve().parent / "data" / "logits"
SIZE_2D, SIZE_3D, POOL_3D = 64, 32, 2
# float16 storage rounds to ~5e-4 relative; eager fp32 on another CPU moves logits by far less.
RTOL, ATOL = 2e-3, 2e-3


def generated_input(card: dict) -> np.ndarray:
    """(1, C, *S) float32: the model's kind of sample, normalised as its card says."""
    from napari_lgms import samples
    from napari_lgms.inference.normalize import normalize

    arguments = card["arguments"]
    if arguments.get("spatial_dims", 2) == 3:
        image = samples.make_volume((SIZE_3D,) * 3, spacing=(1.0, 1.0, 1.0), seed=1)[0][None]
    elif arguments["in_channels"] - len((card.get("prompt") or {}).get("channels", [])) == 3:
        image = np.moveaxis(samples.make_endoscopy((SIZE_2D, SIZE_2D), seed=1)[0], -1, 0)
    else:
        image = samples.make_ultrasound((SIZE_2D, SIZE_2D), seed=1)[0][None]
    image = normalize(image, card["normalization"])
    if card.get("prompt"):  # a click model: one positive click in the middle, no previous mask
        image = np.concatenate([image, click_prompts(card["prompt"], image.shape[1:])])
    assert image.shape[0] == arguments["in_channels"]
    return image[None].astype(np.float16).astype(np.float32)


def click_prompts(prompt: dict, shape: tuple[int, ...]) -> np.ndarray:
    from napari_lgms.clicks import Click
    from napari_lgms.clicks.encoding import prompt_maps, whole_box

    middle = Click(tuple(s / 2 for s in shape))
    return prompt_maps(whole_box(shape), shape, [middle], None, prompt["channels"], prompt["radius"])


def logits_summary(logits: np.ndarray) -> np.ndarray:
    """What is stored: 2D logits as they are, 3D logits averaged over POOL_3D^3 blocks."""
    if logits.ndim == 5:
        n, k, *spatial = logits.shape
        blocks = [(size // POOL_3D, POOL_3D) for size in spatial]
        logits = logits.reshape(n, k, *(v for block in blocks for v in block)).mean(axis=(3, 5, 7))
    return logits


def eager_logits(card_path: Path, image: np.ndarray) -> np.ndarray:
    import torch

    from napari_lgms.zoo import load_model

    network = load_model(card_path).network.float().eval()
    with torch.inference_mode():
        return network(torch.from_numpy(image)).numpy()


@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: p.stem)
def test_shipped_model_gives_its_stored_logits(card_path):
    stored = np.load(DATA / f"{card_path.stem}.npz")
    image = stored["input"].astype(np.float32)
    expected = stored["logits"].astype(np.float32)
    actual = logits_summary(eager_logits(card_path, image))
    assert actual.shape == expected.shape
    worst = float(np.max(np.abs(actual - expected)))
    assert np.allclose(actual, expected, rtol=RTOL, atol=ATOL), f"largest difference {worst:.2e}"


def test_every_stored_pair_belongs_to_a_shipped_model():
    assert sorted(p.stem for p in DATA.glob("*.npz")) == sorted(p.stem for p in CARDS)


def write_all(only_missing: bool = True) -> None:
    """Store the pair of every shipped model that has none (``only_missing=False``: of every one)."""
    DATA.mkdir(parents=True, exist_ok=True)
    for card_path in CARDS:
        if only_missing and (DATA / f"{card_path.stem}.npz").exists():
            continue
        image = generated_input(json.loads(card_path.read_text()))
        logits = logits_summary(eager_logits(card_path, image))
        np.savez_compressed(DATA / f"{card_path.stem}.npz", input=image.astype(np.float16),
                            logits=logits.astype(np.float16))
        print(f"{card_path.stem}: input {image.shape}, logits {logits.shape}, "
              f"range {logits.min():.2f}..{logits.max():.2f}")


if __name__ == "__main__":
    import sys

    write_all(only_missing="--all" not in sys.argv)
