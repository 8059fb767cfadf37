"""Promptable networks: any registered network with extra input channels for clicks.

One rule for every architecture: the promptable network is the same architecture built with
``in_channels`` = image channels + prompt channels; it starts from the parent's weights, and the
weights that read the new channels (the only tensors whose input-channel axis grew) start at zero,
so with no clicks it computes exactly what its parent computes. A click model segments one object
at a time (one sigmoid output); from a parent with several classes it starts from the parent's
logit of one class against the background (``from_class``), which gives that class's mask wherever
the parent preferred it to the background.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from napari_lgms.errors import InputError
from napari_lgms.zoo.card import PromptSpec


def promptable_from(parent: nn.Module, parent_card, prompt: PromptSpec | None = None, from_class: int = 1):
    """(network, card) of ``parent`` (a network and its card) with prompt channels added."""
    from napari_lgms.models.registry import create_model
    from napari_lgms.zoo.card import OutputSpec

    if parent_card.prompt is not None:
        raise InputError(f"{parent_card.name} already takes clicks")
    if not 1 <= from_class < max(parent_card.num_classes, 2):
        raise InputError(f"from_class must be a foreground class of {parent_card.name}, got {from_class}")
    prompt = prompt or PromptSpec()
    arguments = dict(parent_card.arguments, in_channels=parent_card.in_channels + len(prompt.channels),
                     num_classes=1)
    network = create_model(parent_card.architecture, **arguments)
    network.load_state_dict(widened_state(parent.state_dict(), network.state_dict(), from_class))
    card = copy.deepcopy(parent_card)
    card.arguments, card.prompt = arguments, prompt
    if parent_card.num_classes > 1:
        card.class_names = ["background", "object"]
        card.output = OutputSpec("sigmoid", 0.5, parent_card.output.test_time_augmentation)
    return network, card


def widened_state(parent: dict, target: dict, from_class: int = 1) -> dict:
    """``parent``'s tensors shaped as ``target``'s: equal shapes are copied; a tensor whose axis 1
    (input channels) is longer in ``target`` keeps the parent's channels and zeros for the new ones;
    an output head of several classes becomes one: ``from_class`` minus background."""
    state = {}
    for key, wanted in target.items():
        tensor = parent[key]
        if tensor.ndim and tensor.shape[0] > 1 and wanted.shape[0] == 1 and tensor.shape[1:] == wanted.shape[1:]:
            tensor = (tensor[from_class] - tensor[0])[None]
        if tensor.shape != wanted.shape:
            if tensor.ndim < 2 or tensor.shape[:1] + tensor.shape[2:] != wanted.shape[:1] + wanted.shape[2:]:
                raise InputError(f"cannot widen {key}: {tuple(tensor.shape)} -> {tuple(wanted.shape)}")
            grown = torch.zeros(wanted.shape, dtype=tensor.dtype)
            grown[:, :tensor.shape[1]] = tensor
            tensor = grown
        state[key] = tensor
    return state


class WithoutPrompts(nn.Module):
    """A promptable network used without clicks: (N, image channels, *S) -> logits, the prompt
    channels filled with zeros (so it predicts as its parent did)."""

    def __init__(self, network: nn.Module, prompt_channels: int):
        super().__init__()
        self.network, self.prompt_channels = network, int(prompt_channels)
        for name in ("architecture", "arguments", "size_divisor", "folded_batch_norms"):
            if hasattr(network, name):
                setattr(self, name, getattr(network, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zeros = x.new_zeros((x.shape[0], self.prompt_channels, *x.shape[2:]))
        return self.network(torch.cat([x, zeros], dim=1))
