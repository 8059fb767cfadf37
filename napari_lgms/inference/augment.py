"""Test-time augmentation: average the network's logits over flipped copies of each input.

``"flips"`` runs the network on every combination of flips along the spatial
axes (4 passes in 2D, 8 in 3D), flips each output back and averages the
logits. The shipped models were trained with random flips, so each pass is a
valid prediction of the same mask; averaging them removes some of the noise
of any one. It costs that many forward passes. ``"none"`` is one pass.

A model card may choose a default in ``output.test_time_augmentation``; its
``metrics.engine`` numbers are measured with that default.
"""
from __future__ import annotations

import itertools

from napari_lgms.errors import InputError

TEST_TIME_AUGMENTATIONS = ("none", "flips")


def resolve(choice: str | None, card) -> str:
    """The augmentation to use: ``choice``, or the card's default when ``choice`` is None / "auto"."""
    if choice is None or choice == "auto":
        choice = card.output.test_time_augmentation or "none"
        source = f"model card {card.name} output.test_time_augmentation"
    else:
        source = "test_time_augmentation"
    if choice not in TEST_TIME_AUGMENTATIONS:
        raise InputError(f"{source} is {choice!r}; accepted: {', '.join(TEST_TIME_AUGMENTATIONS)} "
                         "(or auto / None for the model card's default)")
    return choice


def flip_sets(choice: str, spatial_dims: int) -> list[tuple[int, ...]]:
    """The tensor axes to flip for each pass, for (B, C, *spatial) tensors; () is the plain pass.

    >>> flip_sets("flips", 2)
    [(), (-2,), (-1,), (-2, -1)]
    """
    if choice == "none":
        return [()]
    axes = tuple(range(-spatial_dims, 0))
    return [subset for size in range(spatial_dims + 1) for subset in itertools.combinations(axes, size)]


def average_over_flips(forward, batch, flips: list[tuple[int, ...]]):
    """Mean of ``forward`` over flipped copies of ``batch``, each output flipped back.

    ``batch``: (B, C, *spatial) tensor; ``forward`` maps it to (B, K, *spatial) logits;
    ``flips``: from :func:`flip_sets`. Returns (B, K, *spatial) float logits.
    """
    import torch

    def flipped(axes):
        logits = forward(torch.flip(batch, axes) if axes else batch).float()
        return torch.flip(logits, axes) if axes else logits

    return sum(flipped(axes) for axes in flips) / len(flips)
