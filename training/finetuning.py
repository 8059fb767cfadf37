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
   paired differences into "better", "no evidence" or "worse" by a signed-rank test (never either
   with fewer than five corrections);
4. continues the last checked model on all corrections (the rest of the budget): that is the
   candidate. It learns from twice the corrections the checked models had, the same way and for
   longer, so the check is a cautious estimate of it (started from the parent instead, it
   gained 4 to 9 IoU points less on a new modality; averaging the two checked models was
   rejected too: see ``benchmarks/README.md``);
5. saves the candidate as a new version ``NAME-ft-YYYYmmdd-HHMMSS`` (lineage, the evidence) only
   when the verdict is "better", the checked models kept what the parent had right (their change
   on the held-out corrections it scored 0.5 or more, weighed at three quarters against their
   change on its failures, is above minus one point: :func:`kept_change`), and the candidate
   itself fits the corrections it learned from at least as well as the parent did (a run that
   diverged after the check is caught there; steps whose loss is not finite are skipped anyway).
   Otherwise nothing is written; the candidate stays in :attr:`FinetuneResult.candidate` for
   callers who want to look at it.

One adaptation run is :func:`.adapt_run.adapt_steps` (how it learns: :mod:`.adapt_run`); the model
card of a saved one is :func:`.finetune_card.finetuned_card`.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Iterator, Sequence

import numpy as np

from napari_lgms._words import counted
from napari_lgms.errors import InputError, OutputError
from napari_lgms.training.adapt_run import AdaptContext, AdaptSettings, adapt_steps, predicted_logits
from napari_lgms.training.engine import TrainProgress
from napari_lgms.training.finetune_card import finetuned_card, new_version_name


PRESETS: dict[str, dict[str, Any]] = {
    # The defaults of the widget, the CLI and the API: about two minutes on a laptop CPU.
    "default": dict(time_budget=120.0),
    "fast": dict(time_budget=60.0),
}
VERDICT_MARGIN = 0.01  # a mean change under one score point is no change
VERDICT_LEVEL = 0.10  # one-sided signed-rank p-value the paired differences must reach
VERDICT_MINIMUM = 5  # corrections: with fewer, the checked models learn from one or two images
FOLD_SHARE = 0.25  # of the training time, per cross-fitting fold; the candidate gets the rest
FAILED_BELOW = 0.5  # a correction the parent scored below this was one of its failures
SUCCESS_SHARE = 0.75  # of the user's images taken to be like the corrections the parent had right
SCORING_BATCH = 4  # 2D images per forward pass while scoring and predicting (and between stop checks)


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


def changes_by_parent_score(per_correction: Sequence[dict[str, float]]) -> tuple[list[float], list[float]]:
    """The checked models' changes on the held-out corrections the parent had right (scored
    :data:`FAILED_BELOW` or more) and on those it failed on."""
    changes = [(row["after"] - row["before"], row["before"] >= FAILED_BELOW) for row in per_correction]
    return [c for c, right in changes if right], [c for c, right in changes if not right]


def kept_change(per_correction: Sequence[dict[str, float]]) -> tuple[float, float, int] | None:
    """How the checked models did where the parent was right: ``(weighed change, mean change on the
    held-out corrections the parent scored FAILED_BELOW or more, how many)``; None when it had none
    right. The weighed change is what they would gain on images :data:`SUCCESS_SHARE` of which are
    like those and the rest like its failures: a user's corrections tend to be failures, and then
    the verdict's mean speaks for them (``benchmarks/README.md``, the endoscope change). A model
    that fixes failures while losing what already worked is not handed back when this is below
    ``-VERDICT_MARGIN``."""
    successes, failures = changes_by_parent_score(per_correction)
    if not successes:
        return None
    on_successes = float(np.mean(successes))
    weighed = on_successes if not failures else (SUCCESS_SHARE * on_successes
                                                 + (1.0 - SUCCESS_SHARE) * float(np.mean(failures)))
    return weighed, on_successes, len(successes)


def check_decision(verdict, per_correction: Sequence[dict[str, float]]
                   ) -> tuple[str, tuple[float, float, int] | None]:
    """The check's decision from its :class:`~.adaptation.Verdict` and the held-out corrections'
    scores: the verdict's, except that "better" also needs what the parent had right kept
    (:func:`kept_change`'s weighed change above ``-VERDICT_MARGIN``); and that change."""
    kept = kept_change(per_correction)
    if verdict.decision == "better" and kept is not None and kept[0] < -VERDICT_MARGIN:
        return "no evidence", kept
    return verdict.decision, kept


def failures_caution(evidence: dict[str, Any]) -> str | None:
    """What a "better" verdict cannot say when at least half of the checked corrections were the
    parent's failures and some were not: the check then speaks for failures, and a model that fixes
    them may lose images the parent had right (``benchmarks/README.md``, the endoscope change)."""
    failed, checked = int(evidence.get("parent_failed", 0)), int(evidence.get("held_out", 0))
    if not checked or 2 * failed < checked or failed == checked:
        return None
    return (f"{failed} of your {checked} corrections are images the old model had failed on, so the check "
            "speaks for images like those: try the new model on a few the old one got right")


def too_few_corrections(count: int) -> str | None:
    """Why ``count`` corrections cannot give a saved model without a review; None when they are enough."""
    if count >= VERDICT_MINIMUM:
        return None
    missing = VERDICT_MINIMUM - count
    return (f"{counted(count, 'correction')}: a new model is saved only when a check on at "
            f"least {VERDICT_MINIMUM} shows it is better, or your review of it does; save {missing} more, or "
            "review the new model on other images of this kind (open them in napari; --unlabelled with "
            "--review for the command)")


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
def _labelled_examples(corrections, images, masks) -> tuple[list, dict[str, Any]]:
    """The corrections store's examples and those of the image/mask folders, and a record of both."""
    from napari_lgms.training.data import discover_examples

    examples, record = [], {}
    if corrections is not None:
        found, kind, _ = discover_examples(data=str(corrections))
        examples += found
        record.update(kind=kind, corrections=str(corrections), keys=[e.name for e in found])
    if images is not None and masks is not None:
        found, kind, _ = discover_examples(images=str(images), masks=str(masks))
        examples += found
        record.update(images=str(images), masks=str(masks), names=[e.name for e in found])
        record.setdefault("kind", kind)
    return examples, record


def _prepare_spec(card):
    """How inference prepares an image for the model of ``card``, as training's PrepareSpec."""
    from napari_lgms.training.data import PrepareSpec

    dims = card.spatial_dims
    patch = tuple(int(s) for s in card.input.patch_size or [256] * dims)
    mode = "resize" if (card.input.mode or "resize") == "resize" else "patch"
    spacing = card.input.spacing
    return PrepareSpec(card.in_channels, card.num_classes, dims, patch, mode, dict(card.normalization),
                       tuple(spacing) if spacing else None)


def _weights_sha256(loaded) -> str | None:
    """The parent's weights' sha256: from its card, else hashed from the file beside it."""
    from napari_lgms.zoo import sha256_of

    known = loaded.card.weights.get("sha256")
    if known or loaded.path is None:
        return known
    weights_file = Path(loaded.path).with_suffix(".safetensors")
    return sha256_of(weights_file) if weights_file.is_file() else None


def _unlabelled_samples(unlabelled, spec, limit: int, seed: int) -> Iterator:
    """Prepared (mask-less) samples, one by one, from a folder of images or a sequence of arrays
    (spatial axes first, channels last if any) or of :class:`~napari_lgms.io.image.ImageData`, at
    most ``limit`` of them (a seeded choice)."""
    from napari_lgms.inference.geometry import channels_first, find_channel_axis
    from napari_lgms.training.data import RawExample, prepare

    if unlabelled is None:
        return
    if isinstance(unlabelled, (str, os.PathLike)):
        from napari_lgms.io import read_image
        from napari_lgms.training.data import visible_files

        folder = Path(unlabelled).expanduser()  # checked with the other arguments
        chosen = _choose([p for p in visible_files(folder) if p.is_file()], limit, seed)
        arrays = ((image.array, p.name, image.spacing) for p, image in ((p, read_image(p)) for p in chosen))
    else:
        arrays = ((np.asarray(getattr(a, "array", a)), f"unlabelled {i}", getattr(a, "spacing", None))
                  for i, a in enumerate(_choose(list(unlabelled), limit, seed)))
    for array, label, spacing in arrays:
        axis = find_channel_axis(array.shape, "auto", spec.spatial_dims, spec.in_channels)
        image = np.asarray(channels_first(array, axis), dtype=np.float32)
        if image.ndim - 1 != spec.spatial_dims:
            continue  # another dimensionality (a volume beside 2D images): not this model's input
        blank = np.zeros(image.shape[1:], dtype=np.uint8)
        yield prepare(RawExample(image, blank, None, spacing), spec, label)


def _choose(items: list, limit: int, seed: int) -> list:
    if len(items) <= limit:
        return items
    return [items[i] for i in sorted(np.random.default_rng(seed).choice(len(items), limit, replace=False))]


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
    else fp32), "fp32" or "bf16". ``should_stop``: checked at every report (each image or batch while
    it prepares, each step while it trains); a stopped run saves nothing.
    ``require_evidence``: refuse (:class:`InputError`, before any training) corrections too few for the
    check to ever save a model (the CLI and the widget, when the user has no other images to review the
    new model on); by default the run goes on, and its candidate is in the result for a review
    (:mod:`.review`) or callers who want to look at it.
    """
    from napari_lgms._device import select_device
    from napari_lgms.inference.augment import flip_sets, resolve
    from napari_lgms.models.layout import use_layout_for
    from napari_lgms.training.data import SampleCache
    from napari_lgms.training.adaptation import batch_norm_layers, cross_fit_folds, judge, renormalise
    from napari_lgms.training.engine import autocast_factory, resolve_precision
    from napari_lgms.training.evaluate import score_samples
    from napari_lgms.zoo import LoadedModel, load_model, validate_model_name

    started = time.monotonic()

    def preparing(message: str) -> TrainProgress:
        """A report of the work before the first optimiser step."""
        elapsed = time.monotonic() - started
        remaining = None if time_budget is None else max(time_budget - elapsed, 0.0)
        return TrainProgress(0, 0, 0, 0, None, 0.0, elapsed, remaining, None, "loading", message)

    settings, preset_budget = _settings(preset, lr, batch_size, freeze_encoder)
    time_budget = _positive(time_budget, "time budget (seconds)")
    steps = _positive(steps, "steps", integer=True)
    if time_budget is None and steps is None:
        time_budget = preset_budget["time_budget"]
    if name is not None:
        validate_model_name(name)
    if corrections is None and (images is None or masks is None):
        raise InputError("give corrections (a corrections store folder), images and masks folders, or both")
    if isinstance(unlabelled, (str, os.PathLike)) and not Path(unlabelled).expanduser().is_dir():
        raise InputError(f"unlabelled images: {Path(unlabelled).expanduser()} is not a folder")
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
    parent_sha = _weights_sha256(loaded)

    # -- data, the parent's scores and predictions: every stage reports and stops when asked ------
    def stop_requested() -> None:
        if should_stop is not None and should_stop():
            raise _Stopped

    def reported(counts, describe) -> Generator[TrainProgress, None, None]:
        """A report as a stage starts and after each of its ``counts``; each time, a stop if asked."""
        yield preparing(describe(0))
        stop_requested()
        for count in counts:
            yield preparing(describe(count))
            stop_requested()

    try:
        examples, data_record = _labelled_examples(corrections, images, masks)
        spec = _prepare_spec(parent_card)
        dims, patch, mode = spec.spatial_dims, spec.patch_size, spec.input_mode
        cache = SampleCache(examples, spec)
        yield from reported(cache.preload(), lambda done: f"loading your corrections: {done}/{len(examples)}")
        samples = [cache.get(i) for i in range(len(examples))]
        refusal = too_few_corrections(len(samples)) if require_evidence else None
        if refusal:
            raise InputError(refusal)
        limit = settings.max_unlabelled
        if time_budget is not None:
            limit = min(limit, max(4, int(settings.unlabelled_per_second * time_budget)))
        extra_samples: list = []
        if unlabelled is not None:
            yield from reported(_collected(_unlabelled_samples(unlabelled, spec, limit, seed), extra_samples),
                                lambda done: f"loading unlabelled images: {done}")
        data_record["unlabelled"] = len(extra_samples)
        tta = resolve(None, parent_card)
        flips = flip_sets(tta, dims)
        window = patch if mode == "patch" else None
        chunk = SCORING_BATCH if window is None else 1  # volumes: one at a time between stop checks

        def scores(network, chosen) -> list[dict[str, float]]:
            return score_samples(network, chosen, torch_device, parent_card.num_classes, batch_size=SCORING_BATCH,
                                 autocast=autocast, window=window, flips=flips)

        def scored(network, chosen, what: str) -> Generator[TrainProgress, None, list[dict[str, float]]]:
            rows: list[dict[str, float]] = []
            yield from reported(_collected(_in_batches(partial(scores, network), chosen, chunk), rows),
                                lambda done: f"{what}: {done}/{len(chosen)}")
            return rows

        before_rows = yield from scored(parent_network, samples, "scoring the model on your corrections")
        metric = "iou" if parent_card.num_classes == 1 else "dice"
        start_network, renormalised = parent_network, False
        if settings.renormalise and batch_norm_layers(parent_network):
            # The target images' statistics: no labels go in, so scoring them on every correction is
            # fair, and every run below may share them. Kept only when they score at least as well.
            candidate_start = copy.deepcopy(parent_network)
            targets = [s.image for s in samples + extra_samples]
            yield from reported(renormalise(candidate_start, targets, torch_device),
                                lambda done: f"re-estimating normalisation: {done}/{len(targets)} images")
            renormalised_rows = yield from scored(candidate_start, samples, "scoring the re-normalised model")
            if _mean_score(renormalised_rows, metric) >= _mean_score(before_rows, metric):
                start_network, renormalised = candidate_start, True
        trust = float(np.clip(_mean_score(before_rows, metric), 0.0, 1.0))
        distill_weight = settings.distill_weight * trust if extra_samples else 0.0
        if distill_weight < settings.min_distill:
            distill_weight = 0.0  # too light to matter: no parent logits to compute, half the work per step
        parent_logits: list = []
        if distill_weight > 0:
            predict = partial(predicted_logits, start_network, device=torch_device, flips=flips, window=window,
                              autocast=autocast)
            yield from reported(_collected(_in_batches(predict, extra_samples, chunk), parent_logits),
                                lambda done: f"model predictions on unlabelled images: {done}/{len(extra_samples)}")
    except _Stopped:
        return _stopped_early(parent_card.name, destination, time.monotonic() - started)
    context = AdaptContext(start_network, torch_device, autocast, settings,
                           tuple(range(dims)) if tta == "flips" else (), patch if mode == "patch" else None,
                           extra_samples, parent_logits, seed, trust, distill_weight, started)

    # -- cross-fitting, then the candidate ------------------------------------------------------
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
                    margin=VERDICT_MARGIN, level=VERDICT_LEVEL, minimum=VERDICT_MINIMUM)
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
                "differences": list(verdict.differences), "gained": verdict.gained, "p_value": verdict.p_value,
                "margin": VERDICT_MARGIN, "level": VERDICT_LEVEL, "minimum": VERDICT_MINIMUM,
                "parent_failed": sum(before_rows[i][metric] < FAILED_BELOW for i in checked),
                "per_correction": [
                    {"name": samples[i].name, "before": before_rows[i][metric], "after": after_rows[i][metric],
                     "loss_before": before_rows[i]["loss"], "loss_after": after_rows[i]["loss"]}
                    for i in checked]}
    decision, kept = check_decision(verdict, evidence["per_correction"])
    if kept is not None:
        evidence["weighed_change"], evidence["successes_change"], evidence["successes"] = kept
    _, failed = changes_by_parent_score(evidence["per_correction"])
    if failed:
        evidence["failures_change"], evidence["failures"] = float(np.mean(failed)), len(failed)
    if stopped:
        decision = "no evidence"
    elif decision != verdict.decision:
        evidence["hurt_successes"] = True
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
    card = finetuned_card(parent_card, new_name, loaded, parent_sha, data_record, settings, evidence, decision,
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


class _Stopped(Exception):
    """``should_stop`` turned true while a fine-tune was preparing."""


def _stopped_early(name: str, destination: Path, elapsed: float) -> FinetuneResult:
    return FinetuneResult(None, name, {}, {}, 0, elapsed, "stopped on request: nothing saved", destination)


def _in_batches(work: Callable[[Sequence], list], items: Sequence, size: int) -> Iterator:
    """``work(batch)``'s results over ``items``, ``size`` at a time, one by one."""
    for start in range(0, len(items), size):
        yield from work(items[start:start + size])


def _collected(results: Iterable, into: list) -> Iterator[int]:
    """Append each of ``results`` to ``into``, yielding how many it holds."""
    for result in results:
        into.append(result)
        yield len(into)


def _finite(network) -> bool:
    import torch

    return all(bool(torch.isfinite(parameter).all()) for parameter in network.parameters())


def _mean_score(rows: Sequence[dict[str, float]], metric: str) -> float:
    return float(np.mean([row[metric] for row in rows]))


def _mean_rows(rows: Sequence[dict[str, float]], indices) -> dict[str, float]:
    chosen = [rows[i] for i in indices]
    return {key: float(np.mean([row[key] for row in chosen])) for key in chosen[0]} if chosen else {}


def metric_name(metric: str) -> str:
    """How a verdict's ``evidence["metric"]`` reads: "IoU" (one class) or "Dice" (the mean over several)."""
    return "IoU" if metric == "iou" else "Dice"


def _message(decision: str, verdict, metric: str, count: int, stopped: bool, record: dict) -> str:
    name = metric_name(metric)
    evidence = verdict.describe(name)
    if stopped:
        return "stopped on request: nothing saved"
    if record.get("hurt_successes") and record["successes_change"] >= 0:  # their failures fell further
        return (f"the checks were better on your corrections ({evidence}), but worse on the "
                f"{record['failures']} the current model had failed on ({100 * record['failures_change']:+.1f} "
                f"{name} points), by more than they gained on those it had right if a quarter of your images "
                "are like those: nothing saved; save more corrections of images it fails on, then try again")
    if record.get("hurt_successes"):
        change = 100 * record["successes_change"]
        return (f"the checks were better on your corrections ({evidence}), but worse on the "
                f"{record['successes']} the current model had right ({change:+.1f} {name} points), by more "
                "than they gained if most of your images are like those: nothing saved; save corrections of "
                "images it gets right too, then try again")
    if record.get("unfit"):
        return (f"the checks were better ({evidence}), but the final model fits your corrections worse than "
                f"the current one ({name} {record['candidate_fit']:.2f} against {record['parent_fit']:.2f}): "
                "nothing saved; try again or add corrections")
    if decision == "better":
        caution = failures_caution(record)
        saved = f"better on your corrections ({evidence}): saved as a new model"
        return f"{saved}; {caution}" if caution else saved
    if decision == "worse":
        return f"worse on your corrections ({evidence}): nothing saved, keep the current model"
    if count < VERDICT_MINIMUM:
        return (f"{counted(count, 'correction')} cannot show whether a new model is better "
                f"(the check needs at least {VERDICT_MINIMUM}): nothing saved; add corrections, or review "
                "the new model on other images")
    return f"no evidence either way ({evidence}): nothing saved; more corrections make the check surer"


def finetune(model, *, on_progress: Callable[[TrainProgress], None] | None = None, **options) -> FinetuneResult:
    """Run :func:`finetune_steps` to the end (same keyword arguments); ``on_progress`` sees every report."""
    from napari_lgms._generators import run_to_end

    return run_to_end(finetune_steps(model, **options), on_progress)
