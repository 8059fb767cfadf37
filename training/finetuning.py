"""Fine-tuning a model on a user's corrections, within a time budget, with an honest verdict.

>>> result = finetune("lgmsnet-breast-us", corrections=store_root, time_budget=120)   # doctest: +SKIP
>>> result.verdict, result.saved                                                       # doctest: +SKIP
('better', True)

What it does, in order:

1. checks every argument and the output folder, then loads the model and the corrections (a
   corrections store, or image/mask folders), prepared exactly as inference prepares an image
   (the card's channels, normalisation, and its resize or patch size), and the optional
   unlabelled images of the same domain (a folder or arrays);
2. scores the parent on every correction, as users run it (the card's test-time augmentation), and
   re-estimates its batch-norm statistics on the target images (corrections and unlabelled: no
   labels involved, so every run below starts from it);
3. **cross-fits**: splits the corrections into two folds and adapts a copy of the parent on each
   fold (a quarter of the budget each), scoring it on the other. Every correction is then scored
   once by the parent and once by a model that never saw it; :func:`adaptation.judge` turns those
   paired differences into "better", "no evidence" or "worse" (never either with fewer than
   five corrections);
4. continues the last checked model on all corrections (the rest of the budget): that is the
   candidate. It learns from twice the corrections the checked models had, the same way and for
   longer, so the check is a cautious estimate of it (started from the parent instead, it
   gained 4 to 9 IoU points less on a new modality; averaging the two checked models was
   rejected too: see ``benchmarks/README.md``);
5. saves the candidate as a new version ``NAME-ft-YYYYmmdd-HHMMSS`` (lineage, the evidence) only
   when the verdict is "better" and the candidate itself fits the corrections it learned from at
   least as well as the parent did (a run that diverged after the check is caught there; steps
   whose loss is not finite are skipped anyway). Otherwise nothing is written; the candidate
   stays in :attr:`FinetuneResult.candidate` for callers who want to look at it.

One adaptation run (:func:`adapt_steps`): AdamW, its learning rate rising over the first 30 % of
the run's time or steps, then falling on a cosine (a few full-rate steps wreck a trained network
before it can learn anything: measured in ``benchmarks/README.md``); the loss weighted towards the
pixels the user changed; the parent's (flip-averaged) predictions as targets on unlabelled images
(at most one per 2 s of the budget, so that preparing them leaves time to train); and a pull of the
weights back towards the parent's after every step. Those two ties to the parent are scaled by its
mean score on the corrections (its "trust"): a parent that was nearly right stays close, one that
was wrong (a new modality) is free to move, and a distillation weight too small to matter is
skipped rather than computed. Every run hands back the mean of its weights over its second half
(:class:`adaptation.TailAverage`): a run on ten images ends wherever its last few batches left
it, and the same corrections trained twice differed by 7 to 8 IoU points on the rest of the
domain; the average varies less, so the check's models say more about the candidate. That mean
is then mixed with the parent's weights, the parent's share being half its trust (weight-space
ensembling, as WiSE-FT does): a shifted scanner's candidates gained about a point more and lost
fewer images outright, while a new modality, whose parent scores near zero, keeps almost all of
what it learned.
Batch-norm statistics stay frozen while training: a batch of two cannot estimate them.
"""
from __future__ import annotations

import copy
import math
import os
import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Callable, Generator, Sequence

import numpy as np

from napari_lgms.errors import InputError, OutputError
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


PRESETS: dict[str, dict[str, Any]] = {
    # The defaults of the widget, the CLI and the API: about two minutes on a laptop CPU.
    "default": dict(time_budget=120.0),
    "fast": dict(time_budget=60.0),
}
VERDICT_MARGIN = 0.01  # a mean change under one score point is no change
VERDICT_CONFIDENCE = 1.5  # standard errors between the mean change and zero
VERDICT_MINIMUM = 5  # corrections: with fewer, the checked models learn from one or two images
FOLD_SHARE = 0.25  # of the training time, per cross-fitting fold; the candidate gets the rest
FT_SUFFIX = re.compile(r"-ft-\d{8}-\d{6}$")


@dataclass
class FinetuneResult:
    """What a fine-tune run decided. ``card_path`` is None and ``name`` the parent's when nothing was saved.

    ``verdict``: "better", "no evidence" or "worse", from every correction scored by a model that
    did not train on it (``evidence``); a new model is saved only when it is "better".
    ``metrics_before`` / ``metrics_after``: the parent's and the cross-fitted models' mean scores
    on the corrections. ``candidate``: the model trained on all corrections, saved or not.
    """

    card_path: Path | None
    name: str
    metrics_before: dict[str, float]
    metrics_after: dict[str, float]
    steps: int
    elapsed: float
    message: str
    output_dir: Path
    split: dict[str, Any] = field(default_factory=dict)
    verdict: str = "no evidence"
    saved: bool = False
    evidence: dict[str, Any] = field(default_factory=dict)
    candidate: Any = None


def too_few_corrections(count: int) -> str | None:
    """Why ``count`` corrections cannot give a saved model; None when they are enough."""
    if count >= VERDICT_MINIMUM:
        return None
    missing = VERDICT_MINIMUM - count
    return (f"{count} correction{'s' if count != 1 else ''}: a new model is saved only when a check on at "
            f"least {VERDICT_MINIMUM} shows it is better; save {missing} more, then fine-tune")


def new_version_name(parent: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{FT_SUFFIX.sub('', parent)}-ft-{stamp}"


def next_version(version: str) -> str:
    text = str(version or "1")
    return str(int(text) + 1) if text.isdigit() else f"{text}.1"


def freeze_first_half(network) -> int:
    """Freeze the first half of the parameter tensors in definition order; returns how many."""
    parameters = list(network.parameters())
    count = len(parameters) // 2
    for parameter in parameters[:count]:
        parameter.requires_grad_(False)
    return count


# ----------------------------------------------------------------------------- arguments
def _positive(value, what: str, *, integer: bool = False):
    if value is None:
        return None
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a positive number, got {value!r}") from None
    if not math.isfinite(number) or number <= 0 or (integer and number != float(value)):
        raise InputError(f"{what} must be a positive {'whole ' if integer else ''}number, got {value!r}")
    return number


def _settings(preset: str, lr, batch_size, freeze_encoder) -> tuple[AdaptSettings, dict[str, Any]]:
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; accepted: {', '.join(PRESETS)}")
    settings = AdaptSettings()
    changes = {k: v for k, v in (("lr", _positive(lr, "lr")),
                                 ("batch_size", _positive(batch_size, "batch size", integer=True)),
                                 ("freeze_encoder", freeze_encoder)) if v is not None}
    return replace(settings, **changes), dict(PRESETS[preset])


def _destination(output) -> Path:
    """The output folder, created and checked for writing before any work starts."""
    from napari_lgms.zoo import user_model_dir

    destination = Path(output).expanduser() if output is not None else user_model_dir()
    if destination.exists() and not destination.is_dir():
        raise InputError(f"--output {destination} is a file; give a folder for the new model")
    try:
        destination.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the output folder {destination} ({error.strerror or error})") from None
    if not os.access(destination, os.W_OK | os.X_OK):
        raise OutputError(f"the output folder {destination} is not writable")
    return destination


# ----------------------------------------------------------------------------- data
def _unlabelled_samples(unlabelled, spec, limit: int, seed: int) -> list:
    """Prepared (mask-less) samples from a folder of images or a sequence of arrays (spatial axes
    first, channels last if any) or of :class:`~napari_lgms.io.image.ImageData`, at most ``limit``
    of them (a seeded choice)."""
    from napari_lgms.inference.geometry import channels_first, find_channel_axis
    from napari_lgms.training.data import RawExample, prepare

    if unlabelled is None:
        return []
    if isinstance(unlabelled, (str, os.PathLike)):
        from napari_lgms.io import read_image
        from napari_lgms.training.data import visible_files

        folder = Path(unlabelled).expanduser()
        if not folder.is_dir():
            raise InputError(f"unlabelled images: {folder} is not a folder")
        chosen = _choose([p for p in visible_files(folder) if p.is_file()], limit, seed)
        arrays = [(image.array, p.name, image.spacing) for p, image in ((p, read_image(p)) for p in chosen)]
    else:
        arrays = [(np.asarray(getattr(a, "array", a)), f"unlabelled {i}", getattr(a, "spacing", None))
                  for i, a in enumerate(_choose(list(unlabelled), limit, seed))]
    samples = []
    for array, label, spacing in arrays:
        axis = find_channel_axis(array.shape, "auto", spec.spatial_dims, spec.in_channels)
        image = np.asarray(channels_first(array, axis), dtype=np.float32)
        if image.ndim - 1 != spec.spatial_dims:
            continue  # another dimensionality (a volume beside 2D images): not this model's input
        blank = np.zeros(image.shape[1:], dtype=np.uint8)
        samples.append(prepare(RawExample(image, blank, None, spacing), spec, label))
    return samples


def _choose(items: list, limit: int, seed: int) -> list:
    if len(items) <= limit:
        return items
    return [items[i] for i in sorted(np.random.default_rng(seed).choice(len(items), limit, replace=False))]


# ----------------------------------------------------------------------------- one adaptation run
@dataclass
class _Context:
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


def adapt_steps(context: _Context, samples: Sequence, *, seconds: float | None, steps: int | None,
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

    batches = iter(lambda: _batch(context, samples, rng), None)  # endless
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


def _batch(context: _Context, samples: Sequence, rng: np.random.Generator):
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


def _parent_logits(network, samples: Sequence, device, flips, window, autocast) -> list[np.ndarray]:
    """The parent's logits (K, *S) float32 on each prepared sample, averaged over ``flips``."""
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


# ----------------------------------------------------------------------------- the fine-tune
def finetune_steps(
    model,
    *,
    corrections: str | Path | None = None,
    images: str | Path | None = None,
    masks: str | Path | None = None,
    unlabelled: str | Path | Sequence | None = None,
    output: str | Path | None = None,
    time_budget: float | None = None,
    steps: int | None = None,
    device: str = "auto",
    preset: str = "default",
    freeze_encoder: bool | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    name: str | None = None,
    precision: str = "auto",
    should_stop: Callable[[], bool] | None = None,
    require_evidence: bool = False,
) -> Generator[TrainProgress, None, FinetuneResult]:
    """Fine-tune ``model`` (a name, a path or a LoadedModel); yields progress, returns :class:`FinetuneResult`.

    ``time_budget`` (seconds, the whole call) or ``steps`` (optimiser steps of the candidate run;
    each cross-fitting run takes half as many) bound the run; with neither, the preset's budget.
    ``unlabelled``: a folder of images or a sequence of arrays (or of images from
    :func:`napari_lgms.read_image`, whose spacing a 3D model's resampling uses) of the same domain,
    without labels.
    ``precision``: "auto" (bf16 autocast on CPUs with native bf16 and on CUDA GPUs that have it,
    else fp32), "fp32" or "bf16". ``should_stop``: checked every step; a stopped run saves nothing.
    ``require_evidence``: refuse (:class:`InputError`, before any training) corrections too few for the
    check to ever save a model (the CLI and the widget); by default the run goes on, and its candidate
    is in the result for callers who want to look at it.
    """
    from napari_lgms._device import select_device
    from napari_lgms.inference.augment import flip_sets, resolve
    from napari_lgms.models.layout import use_layout_for
    from napari_lgms.training import data as data_mod
    from napari_lgms.training.adaptation import judge, renormalise
    from napari_lgms.training.engine import autocast_factory, resolve_precision
    from napari_lgms.training.evaluate import score_samples
    from napari_lgms.zoo import LoadedModel, load_model, sha256_of, validate_model_name

    started = time.monotonic()

    def preparing(message: str, remaining: float | None = None) -> TrainProgress:
        """A report of the work before the first optimiser step."""
        return TrainProgress(0, 0, 0, 0, None, 0.0, time.monotonic() - started, remaining, None, "loading", message)

    settings, preset_budget = _settings(preset, lr, batch_size, freeze_encoder)
    time_budget = _positive(time_budget, "time budget (seconds)")
    steps = _positive(steps, "steps", integer=True)
    if time_budget is None and steps is None:
        time_budget = preset_budget["time_budget"]
    if name is not None:
        validate_model_name(name)
    if corrections is None and (images is None or masks is None):
        raise InputError("give corrections (a corrections store folder), images and masks folders, or both")
    destination = _destination(output)
    torch_device = select_device(device)
    amp_dtype, needs_scaler = resolve_precision(precision, torch_device)
    autocast = autocast_factory(torch_device, None if needs_scaler else amp_dtype)  # bf16 only: no scaler here

    loaded = model if isinstance(model, LoadedModel) else load_model(model, torch_device, allow_untrained=True)
    parent_card = loaded.card
    parent_network = copy.deepcopy(loaded.network).to(torch_device).eval()
    use_layout_for(parent_network, torch_device, training=False)
    for parameter in parent_network.parameters():
        parameter.requires_grad_(True)
    parent_sha = parent_card.weights.get("sha256")
    if not parent_sha and loaded.path is not None:
        weights_file = Path(loaded.path).with_suffix(".safetensors")
        parent_sha = sha256_of(weights_file) if weights_file.is_file() else None

    # -- data --------------------------------------------------------------------------------
    examples, data_record = [], {}
    if corrections is not None:
        found, kind, _ = data_mod.discover_examples(data=str(corrections))
        examples += found
        data_record.update(kind=kind, corrections=str(corrections), keys=[e.name for e in found])
    if images is not None and masks is not None:
        found, kind, _ = data_mod.discover_examples(images=str(images), masks=str(masks))
        examples += found
        data_record.update(images=str(images), masks=str(masks), names=[e.name for e in found])
        data_record.setdefault("kind", kind)
    dims = parent_card.spatial_dims
    patch = tuple(int(s) for s in parent_card.input.patch_size or [256] * dims)
    mode = "resize" if (parent_card.input.mode or "resize") == "resize" else "patch"
    spacing = parent_card.input.spacing
    spec = data_mod.PrepareSpec(parent_card.in_channels, parent_card.num_classes, dims, patch, mode,
                                dict(parent_card.normalization), tuple(spacing) if spacing else None)
    cache = data_mod.SampleCache(examples, spec)
    for done in cache.preload():
        yield preparing(f"loaded {done}/{len(examples)} corrections", time_budget)
    samples = [cache.get(i) for i in range(len(examples))]
    refusal = too_few_corrections(len(samples)) if require_evidence else None
    if refusal:
        raise InputError(refusal)
    limit = settings.max_unlabelled
    if time_budget is not None:
        limit = min(limit, max(4, int(settings.unlabelled_per_second * time_budget)))
    extra_samples = _unlabelled_samples(unlabelled, spec, limit, seed)
    data_record["unlabelled"] = len(extra_samples)
    tta = resolve(None, parent_card)
    flips = flip_sets(tta, dims)
    window = patch if mode == "patch" else None
    yield preparing(f"{len(samples)} corrections, {len(extra_samples)} unlabelled images")

    # -- the parent's scores, and its predictions on the unlabelled images -----------------------
    def scores(network, chosen) -> list[dict[str, float]]:
        return score_samples(network, chosen, torch_device, parent_card.num_classes, batch_size=4,
                             autocast=autocast, window=window, flips=flips)

    yield preparing(f"scoring the model on {len(samples)} corrections")
    before_rows = scores(parent_network, samples)
    metric = "iou" if parent_card.num_classes == 1 else "dice"
    start_network, renormalised = parent_network, False
    if settings.renormalise:
        yield preparing(f"re-estimating normalisation ({len(samples) + len(extra_samples)} images)")
        # The target images' statistics: no labels go in, so scoring them on every correction is
        # fair, and every run below may share them. Kept only when they score at least as well.
        candidate_start = copy.deepcopy(parent_network)
        renormalise(candidate_start, [s.image for s in samples + extra_samples], torch_device)
        if _mean_score(scores(candidate_start, samples), metric) >= _mean_score(before_rows, metric):
            start_network, renormalised = candidate_start, True
    trust = float(np.clip(_mean_score(before_rows, metric), 0.0, 1.0))
    distill_weight = settings.distill_weight * trust if extra_samples else 0.0
    if distill_weight < settings.min_distill:
        distill_weight = 0.0  # too light to matter: no parent logits to compute, half the work per step
    parent_logits = []
    if distill_weight > 0:
        yield preparing(f"model predictions on {len(extra_samples)} unlabelled images")
        parent_logits = _parent_logits(start_network, extra_samples, torch_device, flips, window, autocast)
    context = _Context(start_network, torch_device, autocast, settings,
                       tuple(range(dims)) if tta == "flips" else (), patch if mode == "patch" else None,
                       extra_samples, parent_logits, seed, trust, distill_weight, started)

    # -- cross-fitting, then the candidate ------------------------------------------------------
    from napari_lgms.training.adaptation import cross_fit_folds

    folds = cross_fit_folds(len(samples), seed) if len(samples) >= 2 else []
    reserve = 2.0 + 0.5 * len(samples)  # scoring and saving
    training_seconds = None if time_budget is None else max(time_budget - (time.monotonic() - started) - reserve, 1.0)
    fold_seconds = None if training_seconds is None else FOLD_SHARE * training_seconds
    fold_steps = None if steps is None else max(1, int(steps) // 2)
    after_rows: list[dict[str, float] | None] = [None] * len(samples)
    total_steps, stopped, checked_network = 0, False, None
    for number, held_out in enumerate(folds, 1):
        training = [samples[i] for i in range(len(samples)) if i not in held_out]
        checked_network, taken = yield from adapt_steps(
            context, training, seconds=fold_seconds, steps=fold_steps, should_stop=should_stop,
            label=f"check {number} of {len(folds)}", steps_before=total_steps)
        total_steps += taken
        if should_stop is not None and should_stop():
            stopped = True
            break
        fold_rows = scores(checked_network, [samples[i] for i in held_out])
        for index, row in zip(held_out, fold_rows):
            after_rows[index] = row
        yield TrainProgress(total_steps, 0, 0, 0, None, 0.0, time.monotonic() - started, None,
                            _mean_rows(fold_rows, range(len(fold_rows))), "validate",
                            f"check {number} of {len(folds)}: scored on its {len(held_out)} held-out corrections")
    checked = [i for i, row in enumerate(after_rows) if row is not None]
    verdict = judge([after_rows[i][metric] - before_rows[i][metric] for i in checked],
                    margin=VERDICT_MARGIN, confidence=VERDICT_CONFIDENCE, minimum=VERDICT_MINIMUM)
    candidate_network = None
    if not stopped:
        left = None if time_budget is None else max(time_budget - (time.monotonic() - started) - reserve, 1.0)
        candidate_network, taken = yield from adapt_steps(context, samples, seconds=left, steps=steps,
                                                          should_stop=should_stop, label="final model",
                                                          steps_before=total_steps, start=checked_network)
        total_steps += taken
        stopped = should_stop is not None and should_stop()

    # -- the verdict, and the new version when it is better ---------------------------------------
    before = _mean_rows(before_rows, checked or range(len(samples)))
    after = _mean_rows([after_rows[i] for i in checked], range(len(checked))) if checked else dict(before)
    evidence = {"metric": metric, "corrections": len(samples), "held_out": len(checked), "folds": len(folds),
                "parent_trust": trust, "renormalised": renormalised,
                "mean_difference": verdict.mean_difference,
                "standard_error": verdict.standard_error if math.isfinite(verdict.standard_error) else None,
                "differences": list(verdict.differences), "margin": VERDICT_MARGIN,
                "confidence": VERDICT_CONFIDENCE, "minimum": VERDICT_MINIMUM, "per_correction": [
                    {"name": samples[i].name, "before": before_rows[i][metric], "after": after_rows[i][metric],
                     "loss_before": before_rows[i]["loss"], "loss_after": after_rows[i]["loss"]}
                    for i in checked]}
    decision = "no evidence" if stopped else verdict.decision
    if decision == "better":
        # The check judged models trained on half the corrections; the candidate trained on after
        # it. One that fits its own corrections worse than the parent did (or diverged) is not
        # handed back.
        yield TrainProgress(total_steps, total_steps, 0, 0, None, 0.0, time.monotonic() - started, None, after,
                            "validate", "final model: scored on the corrections it learned from")
        fit = _mean_score(scores(candidate_network, samples), metric) if _finite(candidate_network) else 0.0
        evidence.update(candidate_fit=fit, parent_fit=before[metric])
        if not fit >= before[metric]:
            decision = "no evidence"
            evidence["unfit"] = True
    new_name = name or new_version_name(parent_card.name)
    card = _finetuned_card(parent_card, new_name, loaded, parent_sha, data_record, settings, evidence, decision,
                           before, after, total_steps, time.monotonic() - started, time_budget, seed,
                           torch_device, preset)
    candidate = None if candidate_network is None else LoadedModel(candidate_network.eval(), card, None, "user")
    message = _message(decision, verdict, metric, len(samples), stopped, evidence)
    card_path, saved = None, False
    if decision == "better" and candidate is not None:
        from napari_lgms.zoo import save_model

        yield TrainProgress(total_steps, total_steps, 0, 0, None, 0.0, time.monotonic() - started, 0.0, after,
                            "saving", message, output=str(destination / f"{new_name}.json"))
        card_path = save_model(copy.deepcopy(candidate_network).cpu(), card, destination)
        candidate = LoadedModel(candidate_network.eval(), card, card_path, "user")
        saved = True
    yield TrainProgress(total_steps, total_steps, 0, 0, None, 0.0, time.monotonic() - started, 0.0, after,
                        "done", message)
    split = {"description": f"two-fold cross-fitting over {len(samples)} corrections (seed {seed})",
             "folds": [[samples[i].name for i in fold] for fold in folds]}
    return FinetuneResult(card_path, new_name if saved else parent_card.name, before, after, total_steps,
                          time.monotonic() - started, message, destination, split,
                          verdict=decision, saved=saved, evidence=evidence, candidate=candidate)


def _finite(network) -> bool:
    import torch

    return all(bool(torch.isfinite(parameter).all()) for parameter in network.parameters())


def _mean_score(rows: Sequence[dict[str, float]], metric: str) -> float:
    return float(np.mean([row[metric] for row in rows]))


def _mean_rows(rows: Sequence[dict[str, float]], indices) -> dict[str, float]:
    chosen = [rows[i] for i in indices]
    return {key: float(np.mean([row[key] for row in chosen])) for key in chosen[0]} if chosen else {}


def _message(decision: str, verdict, metric: str, count: int, stopped: bool, record: dict) -> str:
    name = metric.upper() if metric == "iou" else "Dice"
    evidence = verdict.describe(name)
    if stopped:
        return "stopped on request: nothing saved"
    if record.get("unfit"):
        return (f"the checks were better ({evidence}), but the final model fits your corrections worse than "
                f"the current one ({name} {record['candidate_fit']:.2f} against {record['parent_fit']:.2f}): "
                "nothing saved; try again or add corrections")
    if decision == "better":
        return f"better on your corrections ({evidence}): saved as a new model"
    if decision == "worse":
        return f"worse on your corrections ({evidence}): nothing saved, keep the current model"
    if count < VERDICT_MINIMUM:
        return (f"{count} correction{'s' if count != 1 else ''} cannot show whether a new model is better "
                f"(the check needs at least {VERDICT_MINIMUM}): nothing saved; add corrections")
    smallest = verdict.smallest_confirmable(VERDICT_MARGIN, VERDICT_CONFIDENCE)
    if math.isfinite(smallest):
        evidence += f"; with this spread only a change beyond ±{100 * smallest:.0f} points would show"
    return f"no evidence either way ({evidence}): nothing saved; more corrections make the check surer"


def _finetuned_card(parent, new_name, loaded, parent_sha, data_record, settings, evidence, decision, before,
                    after, steps, elapsed, time_budget, seed, device, preset):
    """The new version's card: the parent's network, input, normalisation, classes, output, prompt
    and terms; this run's record, its cross-fitted scores and its lineage."""
    from napari_lgms.training.cards import card_metrics, model_card, rounded

    return model_card(
        name=new_name, architecture=parent.architecture, arguments=parent.arguments, input_spec=parent.input,
        normalization=parent.normalization, class_names=parent.class_names, output_spec=parent.output,
        prompt=parent.prompt, version=next_version(parent.version),
        description=f"{parent.description} Fine-tuned from {parent.name} on {len(data_record.get('keys', []))} "
                    "user correction(s).".strip(),
        training={**{k: v for k, v in parent.training.items() if k in ("data", "terms")},
                  "finetune": {"preset": preset, "steps": steps, "seconds": round(elapsed, 1),
                               "time_budget": time_budget, "settings": settings.__dict__, "seed": seed,
                               "device": device.type, "data": data_record}},
        metrics=card_metrics("two-fold cross-fitting over the corrections", "verdict", after),
        lineage={"parent": parent.name, "parent_version": parent.version, "parent_path": str(loaded.path or ""),
                 "parent_sha256": parent_sha, "data": data_record, "metrics_before": rounded(before),
                 "metrics_after": rounded(after), "verdict": decision, "evidence": evidence,
                 "improved": decision == "better", "parent_lineage": parent.lineage or None},
        licence=parent.licence, citation=parent.citation, intended_use=parent.intended_use,
    )


def finetune(model, *, on_progress: Callable[[TrainProgress], None] | None = None, **options) -> FinetuneResult:
    """Run :func:`finetune_steps` to the end (same keyword arguments); ``on_progress`` sees every report."""
    from napari_lgms._generators import run_to_end

    return run_to_end(finetune_steps(model, **options), on_progress)
