"""One adaptation run of a fine-tune (:func:`adapt_steps`; :func:`.finetuning.finetune_steps` runs three).

AdamW, its learning rate rising over the first 30 % of the run's time or steps, then falling on a
cosine (a few full-rate steps wreck a trained network before it can learn anything: measured in
``benchmarks/README.md``); the loss weighted towards the pixels the user changed; the parent's
(flip-averaged) predictions as targets on unlabelled images (at most one per 2 s of the budget, so
that preparing them leaves time to train); and a pull of the weights back towards the parent's
after every step. Those two ties to the parent are scaled by its mean score on the corrections
(its "trust"): a parent that was nearly right stays close, one that was wrong (a new modality) is
free to move, and a distillation weight too small to matter is skipped rather than computed. Every
run hands back the mean of its weights over its second half (:class:`.adaptation.TailAverage`): a
run on ten images ends wherever its last few batches left it, and the same corrections trained
twice differed by 7 to 8 IoU points on the rest of the domain; the average varies less, so the
check's models say more about the candidate. That mean is then mixed with the parent's weights,
the parent's share being half its trust (weight-space ensembling, as WiSE-FT does): a shifted
scanner's candidates gained about a point more and lost fewer images outright, while a new
modality, whose parent scores near zero, keeps almost all of what it learned.
Batch-norm statistics stay frozen while training: a batch of two cannot estimate them.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Generator, Sequence

import numpy as np

from napari_lgms.training.engine import TrainProgress


@dataclass(frozen=True)
class AdaptSettings:
    """How one adaptation run learns (see the module docstring)."""

    lr: float = 1e-3
    batch_size: int = 2
    freeze_encoder: bool = False
    # Both scaled by the parent's mean score on the corrections: a parent that was right is kept close.
    anchor: float = 0.02  # fraction of the distance to the parent's weights pulled back per full-lr step
    distill_weight: float = 0.5  # parent agreement on unlabelled images, relative to the labels loss
    corrected_weight: float = 2.0  # extra pixel weight where the user changed the prediction
    intensity: float = 0.2  # strength of the random gamma / contrast change (0: none)
    renormalise: bool = True
    warmup: float = 0.3  # fraction of every run over which the learning rate rises linearly
    average_after: float = 0.5  # every run hands back its weights averaged from this fraction on (1: off)
    parent_share: float = 0.5  # of the parent's weights mixed into every run's result, scaled by trust
    min_distill: float = 0.05  # a scaled distillation weight below this is skipped (it would halve the steps)
    max_unlabelled: int = 64
    unlabelled_per_second: float = 0.5  # of the time budget: preparing them must leave time to train


def freeze_first_half(network) -> int:
    """Freeze the first half of the parameter tensors in definition order; returns how many."""
    parameters = list(network.parameters())
    count = len(parameters) // 2
    for parameter in parameters[:count]:
        parameter.requires_grad_(False)
    return count


@dataclass
class AdaptContext:
    """What every adaptation run of one fine-tune shares."""

    parent: Any  # torch.nn.Module, eval mode, on the device
    device: Any
    autocast: Callable
    settings: AdaptSettings
    flip_axes: tuple[int, ...]
    patch: tuple[int, ...] | None  # patch-mode crop size, None for whole (resized) images
    unlabelled: list  # prepared samples
    parent_logits: list  # (K, *S) float32 per unlabelled sample: the parent's (flip-averaged) logits
    seed: int
    trust: float  # the parent's mean score on the corrections, in [0, 1]
    distill_weight: float  # of the parent's logits on unlabelled images, trust-scaled; 0: not used
    started: float  # the fine-tune's start on ``time.monotonic``, for the reports' elapsed time


def adapt_steps(context: AdaptContext, samples: Sequence, *, seconds: float | None, steps: int | None,
                should_stop: Callable[[], bool] | None, label: str, steps_before: int = 0,
                start=None) -> Generator[TrainProgress, None, tuple[Any, int]]:
    """Adapt a copy of ``start`` (a network of an earlier run; default: the parent) to ``samples``
    for ``seconds`` or ``steps``, pulled towards the parent's weights either way; yields a report
    every step (numbered after ``steps_before``, the earlier runs' steps) and returns
    ``(network, steps taken)``."""
    import torch

    from napari_lgms.models.layout import use_layout_for
    from napari_lgms.training.adaptation import ParentAnchor, TailAverage, adaptation_loss
    from napari_lgms.training.loop import Budget, Stepper, cosine_fraction, optimise

    settings = context.settings
    network = copy.deepcopy(context.parent)
    use_layout_for(network, context.device, training=True)
    if settings.freeze_encoder:
        freeze_first_half(network)
    trainable = [p for p in network.parameters() if p.requires_grad]
    anchor = ParentAnchor(network, settings.anchor * context.trust)
    if start is not None:
        network.load_state_dict(start.state_dict())
    average = TailAverage(network, settings.average_after)
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=0.0)
    rng = np.random.default_rng([context.seed, len(samples), sum(map(ord, label))])
    budget = Budget(steps=steps) if steps is not None else Budget(seconds=seconds)
    network.eval()  # batch-norm statistics stay as estimated; there is no dropout to switch on

    def loss_of(batch):
        images, masks, weights, unlabelled, targets = batch
        with context.autocast():
            logits = network(torch.cat([images, unlabelled]) if unlabelled is not None else images)
        extra = logits[len(images):] if unlabelled is not None else None
        return adaptation_loss(logits[:len(images)], masks, weights, extra, targets,
                               distill_weight=context.distill_weight)

    def step_report(taken, loss, progress):
        remaining = None if seconds is None else max(seconds * (1.0 - progress), 0.0)
        return TrainProgress(steps_before + taken, 0, 0, 0, loss, optimizer.param_groups[0]["lr"],
                             time.monotonic() - context.started, remaining, None, "train", label)

    batches = iter(lambda: _training_batch(context, samples, rng), None)  # endless
    schedule = partial(cosine_fraction, warmup=settings.warmup)
    stepper = Stepper(optimizer, skip_non_finite=True)
    step, _ = yield from optimise(stepper, batches, loss_of, budget=budget, report=step_report,
                                  should_stop=should_stop, lr_at=lambda p: settings.lr * schedule(p),
                                  after_step=lambda p: (anchor.pull(schedule(p)), average.update(p)))
    average.apply()
    anchor.blend(settings.parent_share * context.trust)
    network.eval()
    use_layout_for(network, context.device, training=False)
    return network, step


def _training_batch(context: AdaptContext, samples: Sequence, rng: np.random.Generator):
    """A batch of corrections (images, masks, pixel weights) and, when there are unlabelled images,
    as many unlabelled views with the parent's logits as targets (the same flips and crops)."""
    import torch

    from napari_lgms.training.adaptation import pixel_weights, training_view
    from napari_lgms.training.augment import sample_patch

    settings = context.settings
    size = settings.batch_size
    views = []
    for index in rng.integers(0, len(samples), size):
        sample = samples[int(index)]
        image, mask, weight = sample.image, sample.mask, pixel_weights(sample, settings.corrected_weight)
        if context.patch is not None:
            stacked, mask = sample_patch(np.concatenate([image, weight[None]]), mask, context.patch, rng,
                                         sample.focus, 0.8)
            image, weight = stacked[:-1], stacked[-1]
        views.append(training_view(image, mask, weight, rng, context.flip_axes, settings.intensity))
    images = torch.from_numpy(np.stack([v[0] for v in views])).to(context.device)
    masks = torch.from_numpy(np.stack([v[1].astype(np.int64) for v in views])).to(context.device)
    weights = torch.from_numpy(np.stack([v[2] for v in views])).to(context.device)
    if not context.parent_logits:
        return images, masks, weights, None, None
    extra = []
    for index in rng.integers(0, len(context.unlabelled), size):
        sample, target = context.unlabelled[int(index)], context.parent_logits[int(index)]
        stacked, channels = np.concatenate([sample.image, target]), sample.image.shape[0]
        blank = np.zeros(stacked.shape[1:], dtype=np.uint8)
        if context.patch is not None:
            stacked, blank = sample_patch(stacked, blank, context.patch, rng, None, 0.0)
        view, _, _ = training_view(stacked, blank, blank.astype(np.float32), rng, context.flip_axes, 0.0)
        image = view[:channels]
        if settings.intensity > 0:
            image, _, _ = training_view(image, blank, blank, rng, (), settings.intensity)
        extra.append((image, view[channels:]))
    unlabelled = torch.from_numpy(np.stack([e[0] for e in extra])).to(context.device)
    targets = torch.from_numpy(np.stack([e[1] for e in extra])).to(context.device)
    return images, masks, weights, unlabelled, targets


def predicted_logits(network, samples: Sequence, device, flips, window, autocast) -> list[np.ndarray]:
    """``network``'s logits (K, *S) float32 on each prepared sample, averaged over ``flips``."""
    import torch

    from napari_lgms.inference.sliding import network_predictor
    from napari_lgms.training.evaluate import sliding_window_logits

    network.eval()
    predict = network_predictor(network, flips=flips, autocast=autocast)
    size = 8 if window is None else 1  # resized samples all have the card's patch shape
    logits = []
    for start in range(0, len(samples), size):
        batch = torch.from_numpy(np.stack([s.image for s in samples[start:start + size]])).to(device)
        output = predict(batch) if window is None else sliding_window_logits(network, batch, window,
                                                                             autocast=autocast, flips=flips)
        logits += list(output.float().cpu().numpy())
    return logits
