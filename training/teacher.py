"""A trained model whose predictions a training run learns from (knowledge distillation).

With ``teacher`` set in the config, each training batch (already augmented and
normalised) also goes through the teacher, frozen in eval mode, and the loss
becomes ``(1 - w) · labels loss + w · distillation loss`` against its
probabilities (:func:`~napari_lgms.training.losses.distillation_loss`). A small
network learns the larger one's soft outlines as well as the labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from napari_lgms.errors import InputError


@dataclass
class Teacher:
    network: Any  # torch.nn.Module, frozen, eval mode, on the training device
    card: Any  # its ModelCard
    flips: list[tuple[int, ...]]  # flip sets averaged over; [()] is one pass
    test_time_augmentation: str

    def __call__(self, images):
        """(B, C, *spatial) normalised batch -> (B, K, *spatial) float teacher logits (no gradient)."""
        from napari_lgms.inference.sliding import network_predictor

        return network_predictor(self.network, flips=self.flips)(images)

    def describe(self, weight: float) -> dict[str, Any]:
        """What the model card records about the teacher."""
        from napari_lgms.training.engine import validation_scores

        return {"model": self.card.name, "sha256": (self.card.weights or {}).get("sha256", ""),
                "distill_weight": weight, "test_time_augmentation": self.test_time_augmentation,
                "validation": validation_scores(self.card)}


def load_teacher(config, arguments: dict, device) -> Teacher | None:
    """The config's teacher, checked against the student's ``arguments``; None when there is none."""
    from napari_lgms.inference.augment import flip_sets
    from napari_lgms.models.layout import use_layout_for
    from napari_lgms.zoo import ModelLoadError, load_model

    if not config.teacher:
        return None
    try:
        loaded = load_model(config.teacher, device)
    except ModelLoadError as error:
        raise InputError(f"teacher: {error}") from None
    card = loaded.card
    student = {"in_channels": int(arguments["in_channels"]), "num_classes": int(arguments["num_classes"]),
               "spatial_dims": int(arguments.get("spatial_dims", 2))}
    theirs = {"in_channels": card.in_channels, "num_classes": card.num_classes,
              "spatial_dims": card.spatial_dims}
    if theirs != student:
        raise InputError(f"teacher {card.name} takes {theirs} but the model being trained {student}: "
                         "they must match")
    if dict(card.normalization) != dict(config.normalization):
        raise InputError(f"teacher {card.name} expects normalization {card.normalization}; this run uses "
                         f"{config.normalization}: set the same normalization or pick another teacher")
    network = loaded.network.to(device).eval()
    use_layout_for(network, device, training=False)
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    choice = config.teacher_test_time_augmentation
    return Teacher(network, card, flip_sets(choice, student["spatial_dims"]), choice)
