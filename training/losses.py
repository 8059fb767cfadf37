"""Segmentation losses (the reference repositories' training recipes).

Binary (one logit): ``0.5 · BCE-with-logits + (1 − soft Dice)``, soft Dice per
sample on sigmoid probabilities with smooth 1e-5, averaged over the batch, as
LGMSNet/CMUNeXt train. Multi-class (K logits): ``CE + (1 − mean soft Dice)``
over the foreground classes of the softmax, per sample.

Distillation (a teacher model's logits as soft targets): the same two terms
with the teacher's probabilities in place of the labels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SMOOTH = 1e-5


def soft_dice_per_sample(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, *S) probabilities and (N, *S) {0,1} target -> (N,) soft Dice."""
    flat_p = probabilities.reshape(probabilities.shape[0], -1)
    flat_t = target.reshape(target.shape[0], -1)
    intersection = (flat_p * flat_t).sum(1)
    return (2 * intersection + SMOOTH) / (flat_p.sum(1) + flat_t.sum(1) + SMOOTH)


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, 1, *S) logits, (N, *S) labels (foreground > 0) -> scalar."""
    logits = logits[:, 0].float()
    truth = (target > 0).float()
    bce = F.binary_cross_entropy_with_logits(logits, truth)
    dice = soft_dice_per_sample(torch.sigmoid(logits), truth).mean()
    return 0.5 * bce + (1.0 - dice)


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, K, *S) logits, (N, *S) labels in [0, K) -> scalar."""
    logits = logits.float()
    classes = logits.shape[1]
    target = target.long()
    ce = F.cross_entropy(logits, target)
    probabilities = torch.softmax(logits, dim=1)
    one_hot = torch.movedim(F.one_hot(target, classes), -1, 1).float()
    dices = [soft_dice_per_sample(probabilities[:, k], one_hot[:, k]) for k in range(1, classes)]
    dice = torch.stack(dices, 1).mean() if dices else logits.new_tensor(1.0)
    return ce + (1.0 - dice)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE+Dice for one output channel, CE+Dice for several."""
    if logits.shape[1] == 1:
        return bce_dice_loss(logits, target)
    return ce_dice_loss(logits, target)


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """(N, K, *S) student and teacher logits -> scalar; the segmentation loss on soft targets.

    One channel: ``0.5 · BCE(student, σ(teacher)) + (1 − soft Dice(σ(student), σ(teacher)))``.
    K channels: ``soft CE(student, softmax(teacher)) + (1 − mean foreground soft Dice)``.
    Both are minimal when the student's probabilities equal the teacher's.
    """
    logits, teacher_logits = logits.float(), teacher_logits.float()
    if logits.shape[1] == 1:
        soft = torch.sigmoid(teacher_logits[:, 0])
        bce = F.binary_cross_entropy_with_logits(logits[:, 0], soft)
        dice = soft_dice_per_sample(torch.sigmoid(logits[:, 0]), soft).mean()
        return 0.5 * bce + (1.0 - dice)
    soft = torch.softmax(teacher_logits, dim=1)
    ce = -(soft * torch.log_softmax(logits, dim=1)).sum(1).mean()
    probabilities = torch.softmax(logits, dim=1)
    dices = [soft_dice_per_sample(probabilities[:, k], soft[:, k]) for k in range(1, logits.shape[1])]
    return ce + (1.0 - torch.stack(dices, 1).mean())


def distilled_loss(logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None,
                   weight: float) -> torch.Tensor:
    """``(1 - weight) · segmentation loss + weight · distillation loss``; labels only without a teacher."""
    loss = segmentation_loss(logits, target)
    if teacher_logits is None:
        return loss
    return (1.0 - weight) * loss + weight * distillation_loss(logits, teacher_logits)
