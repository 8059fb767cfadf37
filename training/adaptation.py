"""Learning from a few corrections without forgetting: the pieces :mod:`.finetuning` composes.

* :func:`training_view`: a correction as the network sees it at inference (the card's resize or
  patch, its normalisation), flipped only along the axes the card's test-time augmentation flips;
* :func:`adaptation_loss`: the labels loss, heavier where the user changed the prediction, plus
  agreement with the parent on the user's unlabelled images of the same domain;
* :class:`ParentAnchor`: after every step, pulls the weights back towards the parent's
  (decoupled "L2-SP"), and at a run's end mixes the parent's weights into its result (WiSE-FT);
* :class:`TailAverage`: the mean of the weights over a run's last steps (stochastic weight averaging);
* :func:`renormalise`: batch-norm statistics re-estimated on the target images;
* :func:`judge`: a paired verdict (signed-rank test) from every correction's cross-fitted score.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from napari_lgms._words import counted

VERDICTS = ("better", "no evidence", "worse")


@dataclass(frozen=True)
class Verdict:
    """``decision`` (one of :data:`VERDICTS`) and the paired evidence behind it (score fractions).

    ``p_value``: the one-sided signed-rank p-value in the direction of the mean change (1 without
    evidence); ``gained``: how many differences are above zero.
    """

    decision: str
    mean_difference: float
    standard_error: float
    count: int
    differences: tuple[float, ...]
    p_value: float = 1.0
    gained: int = 0

    def describe(self, metric: str) -> str:
        if self.count == 0:
            return "no correction could be held out, so there is no evidence either way"
        spread = f"{100 * self.mean_difference:+.1f} ± {100 * self.standard_error:.1f} {metric} points"
        corrections = counted(self.count, "held-out correction")
        return f"{spread} over {corrections}, {self.gained} of them better"


EXACT_RANKS_UP_TO = 400  # differences; beyond, the normal approximation (the exact sum grows as n^3)


def signed_rank_p(differences: Sequence[float], *, greater: bool) -> float:
    """One-sided p-value of the Wilcoxon signed-rank test that ``differences`` centre above zero
    (``greater``) or below it; exact up to :data:`EXACT_RANKS_UP_TO` non-zero differences, normal
    beyond (tied magnitudes get their mean rank either way), zeros dropped. 1.0 when no difference
    is non-zero."""
    from scipy.stats import rankdata

    values = np.asarray(list(differences), dtype=np.float64)
    values = values[values != 0]
    if len(values) == 0:
        return 1.0
    doubled = np.rint(2 * rankdata(np.abs(values))).astype(np.int64)  # mean ranks: whole or halves
    observed = int(doubled[values > 0].sum()) if greater else int(doubled[values < 0].sum())
    if len(values) > EXACT_RANKS_UP_TO:
        # Each rank joins the sum with probability 1/2: mean sum/2, variance sum of squares/4.
        mean, spread = doubled.sum() / 2, math.sqrt(float((doubled.astype(np.float64) ** 2).sum()) / 4)
        return float(0.5 * math.erfc((observed - 1 - mean) / (spread * math.sqrt(2))))
    # Under the null every rank carries either sign with probability 1/2: the distribution of the
    # positive ranks' sum, built one rank at a time.
    distribution = np.zeros(int(doubled.sum()) + 1)
    distribution[0] = 1.0
    for rank in doubled:
        shifted = np.zeros_like(distribution)
        shifted[rank:] = distribution[:len(distribution) - rank]
        distribution = 0.5 * (distribution + shifted)
    return float(min(1.0, distribution[observed:].sum()))


def judge(differences: Sequence[float], *, margin: float, level: float, minimum: int = 2) -> Verdict:
    """Paired verdict on per-correction score differences (fine-tuned minus parent, each scored by a
    model that did not train on that correction).

    "better" when the mean exceeds ``margin`` and the signed-rank test puts the differences above
    zero at one-sided ``level``; "worse" symmetrically; else "no evidence". The rank test, not the
    mean over its standard error: a few images that change a lot swell the standard error while
    most move together, and on the recorded runs' per-image gains the rank test confirmed more
    real gains with no more false "better"s (``benchmarks/README.md``). Fewer than ``minimum``
    differences (at least two) are never evidence: three corrections that each gained a point
    looked like proof while the model lost 16 points on the rest of the domain.
    """
    values = np.asarray(list(differences), dtype=np.float64)
    if len(values) == 0:
        return Verdict("no evidence", 0.0, math.inf, 0, ())
    mean = float(values.mean())
    error = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.inf
    if not math.isfinite(mean):  # a score that is not a number is no evidence either way
        return Verdict("no evidence", mean, math.inf, len(values), tuple(float(v) for v in values))
    p_value = signed_rank_p(values, greater=mean >= 0)
    decision = "no evidence"
    if len(values) >= max(minimum, 2) and abs(mean) > margin and p_value <= level:
        decision = "better" if mean > 0 else "worse"
    return Verdict(decision, mean, error, len(values), tuple(float(v) for v in values), p_value,
                   int((values > 0).sum()))


def cross_fit_folds(count: int, seed: int) -> list[list[int]]:
    """Two seeded, near-equal folds of ``count`` corrections (one fold of everything below two)."""
    if count < 2:
        return [list(range(count))]
    order = np.random.default_rng(seed).permutation(count)
    return [sorted(int(i) for i in order[0::2]), sorted(int(i) for i in order[1::2])]


# ----------------------------------------------------------------------------- inputs
def training_view(image: np.ndarray, mask: np.ndarray, weight: np.ndarray, rng: np.random.Generator,
                  flip_axes: Sequence[int], intensity: float):
    """(C, *S), (*S), (*S) -> the same, flipped along a random subset of ``flip_axes`` (spatial axis
    numbers) and, with ``intensity`` > 0, with a random gamma / contrast change of that strength."""
    axes = [axis for axis in flip_axes if rng.random() < 0.5]
    if axes:
        image = np.flip(image, [a + 1 for a in axes])
        mask, weight = np.flip(mask, axes), np.flip(weight, axes)
    if intensity > 0:
        low, high = float(image.min()), float(image.max())
        span = max(high - low, 1e-6)
        gamma = float(np.exp(rng.uniform(-intensity, intensity)))
        image = np.power((image - low) / span, gamma) * span + low
        image = (image - image.mean()) * float(np.exp(rng.uniform(-intensity, intensity) / 2)) + image.mean()
    return (np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(mask),
            np.ascontiguousarray(weight, dtype=np.float32))


def pixel_weights(sample, corrected_weight: float) -> np.ndarray:
    """(*S) float32: 1 everywhere, ``1 + corrected_weight`` where the user changed the prediction."""
    weight = np.ones(sample.mask.shape, dtype=np.float32)
    if sample.region is not None:
        weight[sample.region] += corrected_weight
    return weight


# ----------------------------------------------------------------------------- loss
def weighted_segmentation_loss(logits, target, weight):
    """(N, K, *S) logits, (N, *S) labels, (N, *S) pixel weights -> scalar.

    Pixel-weighted BCE (one logit) or CE (several) plus the soft Dice of the foreground.
    """
    import torch
    import torch.nn.functional as F

    from napari_lgms.training.losses import soft_dice_per_sample

    logits = logits.float()
    normaliser = weight.sum().clamp_min(1e-6)
    if logits.shape[1] == 1:
        truth = (target > 0).float()
        pixel = F.binary_cross_entropy_with_logits(logits[:, 0], truth, reduction="none")
        dice = soft_dice_per_sample(torch.sigmoid(logits[:, 0]), truth).mean()
        return 0.5 * (pixel * weight).sum() / normaliser + (1.0 - dice)
    target = target.long()
    pixel = F.cross_entropy(logits, target, reduction="none")
    probabilities = torch.softmax(logits, dim=1)
    one_hot = torch.movedim(F.one_hot(target, logits.shape[1]), -1, 1).float()
    dices = [soft_dice_per_sample(probabilities[:, k], one_hot[:, k]) for k in range(1, logits.shape[1])]
    return (pixel * weight).sum() / normaliser + (1.0 - torch.stack(dices, 1).mean())


def adaptation_loss(logits, target, weight, unlabelled_logits=None, parent_logits=None, *,
                    distill_weight: float = 0.0):
    """The corrections' weighted loss plus ``distill_weight`` times the distance to the parent's
    predictions on unlabelled images (:func:`napari_lgms.training.losses.distillation_loss`)."""
    from napari_lgms.training.losses import distillation_loss

    loss = weighted_segmentation_loss(logits, target, weight)
    if unlabelled_logits is not None and distill_weight > 0:
        loss = loss + distill_weight * distillation_loss(unlabelled_logits, parent_logits)
    return loss


class ParentAnchor:
    """Decoupled pull towards the parent's weights: ``w <- w - strength * (lr / base_lr) * (w - w_parent)``
    after every optimiser step (:meth:`pull`), and a weighted mean with them at a run's end
    (:meth:`blend`); for the trainable parameters only."""

    def __init__(self, network, strength: float):
        self.strength = float(strength)
        self.pairs = [(p, p.detach().clone()) for p in network.parameters() if p.requires_grad]

    def pull(self, lr_fraction: float) -> None:
        self._towards_parent(self.strength * lr_fraction)

    def blend(self, share: float) -> None:
        """``w <- (1 - share) * w + share * w_parent`` (``share`` clipped to [0, 1]; 0 changes nothing)."""
        self._towards_parent(share)

    def _towards_parent(self, share: float) -> None:
        import torch

        share = min(max(float(share), 0.0), 1.0)
        if share == 0:
            return
        with torch.no_grad():
            for parameter, origin in self.pairs:
                parameter.sub_(share * (parameter - origin))


class TailAverage:
    """Running mean of the trainable parameters over the steps taken once a run's progress reaches
    ``start`` (in [0, 1]; 1 or more: off). :meth:`apply` writes the mean into the network."""

    def __init__(self, network, start: float):
        self.start = float(start)
        self.parameters = [p for p in network.parameters() if p.requires_grad]
        self.mean: list | None = None
        self.count = 0

    def update(self, progress: float) -> None:
        import torch

        if progress < self.start:
            return
        with torch.no_grad():
            if self.mean is None:
                self.mean = [p.detach().clone() for p in self.parameters]
            else:
                for mean, parameter in zip(self.mean, self.parameters):
                    mean.add_((parameter.detach() - mean) / (self.count + 1))
        self.count += 1

    def apply(self) -> int:
        """Replace the weights by their mean (when any step was averaged); returns the steps averaged."""
        import torch

        if self.mean is not None:
            with torch.no_grad():
                for mean, parameter in zip(self.mean, self.parameters):
                    parameter.copy_(mean)
        return self.count


def batch_norm_layers(network) -> list:
    """``network``'s batch-norm layers, in definition order."""
    import torch

    return [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def renormalise(network, images: Sequence, device, batch_size: int = 8) -> Iterator[int]:
    """Re-estimate every batch-norm layer's running statistics on ``images`` ((C, *S) float32 arrays,
    grouped by shape) as a plain average (AdaBN), yielding the images done after every batch (stop
    iterating to stop: the statistics are then those of the images done so far). Leaves eval mode."""
    import torch

    from napari_lgms.models.padding import padded_forward

    layers = batch_norm_layers(network)
    if not layers or not len(images):
        return
    momenta = [m.momentum for m in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the batches below
    by_shape: dict[tuple, list] = {}
    for image in images:
        by_shape.setdefault(tuple(image.shape), []).append(image)
    done = 0
    try:
        for group in by_shape.values():
            for start in range(0, len(group), batch_size):
                batch = group[start:start + batch_size]
                network.eval()
                for layer in layers:
                    layer.train()
                with torch.no_grad():
                    padded_forward(network, torch.from_numpy(np.stack(batch)).to(device))
                network.eval()
                done += len(batch)
                yield done
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        network.eval()
