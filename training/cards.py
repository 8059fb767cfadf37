"""The one builder of the model cards of new weights.

Training (:mod:`napari_lgms.training.engine`) and fine-tuning
(:mod:`napari_lgms.training.finetuning`) both describe the weights they save through
:func:`model_card`, with their scores through :func:`card_metrics`. The card's ``weights`` and
``created`` are left to :func:`napari_lgms.zoo.save_model`, which writes them.
"""
from __future__ import annotations

import copy
from typing import Any

from napari_lgms.zoo.card import InputSpec, ModelCard, OutputSpec, PromptSpec


def rounded(scores: dict[str, float]) -> dict[str, float]:
    """Scores as cards record them: six decimals."""
    return {key: round(value, 6) for key, value in scores.items()}


def card_metrics(split: str, selected_by: str, scores: dict[str, float], **details: Any) -> dict[str, Any]:
    """A card's ``metrics``: the split they were measured on, what selected the weights, any
    ``details`` of that selection (the epoch), then the scores (:func:`rounded`)."""
    return {"split": split, "selected_by": selected_by, **details, **rounded(scores)}


def model_card(*, name: str, architecture: str, arguments: dict[str, Any], input_spec: InputSpec,
               normalization: dict[str, Any], class_names: list[str], output_spec: OutputSpec,
               version: str, description: str, training: dict[str, Any], metrics: dict[str, Any],
               licence: str, citation: list[str], intended_use: str,
               lineage: dict[str, Any] | None = None, prompt: PromptSpec | None = None) -> ModelCard:
    """The card of new weights: the network (``architecture`` built with ``arguments``), what it
    takes and returns (``input_spec``, ``normalization``, ``class_names``, ``output_spec``, and
    ``prompt`` for a network that takes clicks), how it was made (``training``, ``lineage``), how
    good it is (``metrics``, see :func:`card_metrics`) and on what terms it may be used. The card
    holds copies of the network's description, so later changes to a configuration or a parent
    card do not reach it."""
    return ModelCard(
        name=name, architecture=architecture, arguments=copy.deepcopy(arguments),
        input=copy.deepcopy(input_spec), normalization=copy.deepcopy(normalization),
        class_names=list(class_names), output=copy.deepcopy(output_spec),
        version=version, description=description, training=training, metrics=metrics,
        licence=licence, citation=list(citation), intended_use=intended_use, lineage=lineage or {},
        prompt=copy.deepcopy(prompt),
    )
