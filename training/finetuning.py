"""Fine-tuning a model on a user's corrections, sized for a laptop CPU and a time budget.

>>> result = finetune("lgmsnet-polyp", corrections=store_root, time_budget=120)   # doctest: +SKIP

What it does, in order:

1. loads the model (name or path) and the examples (a corrections store, or
   image/mask folders); holds out ~20 % of them for validation (seeded); with
   fewer than 3 examples it validates on the training ones and says so;
2. evaluates the *starting* weights on validation: that is the score to beat;
3. trains with AdamW at a constant LR after a short warm-up; batch-norm
   statistics stay frozen (tiny batches would corrupt them) and, if asked, the
   first half of the parameter tensors in definition order (the encoder of every
   shipped U-shaped network) is frozen too. For "resize" models the first
   part of the run sees the images at half resolution; the rest sees crops
   of the full-resolution images centred on the voxels the user corrected
   ("fast") or whole images ("default"). "patch" models (3D, large 2D) train
   on patches centred on the corrections;
4. re-evaluates every ``eval_every`` seconds (or steps) and keeps the best
   weights, *including the starting ones*: the result is never worse on
   validation than the model it started from;
5. stops when the budget is spent (checked before every step, keeping time
   for the final evaluation), then saves a new version
   ``NAME-ft-YYYYmmdd-HHMMSS`` (version + 1) with its lineage (parent name,
   parent weights sha256, data, metrics before/after) in the card.
"""
from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Generator

from napari_lgms.errors import InputError
from napari_lgms.training.engine import TrainProgress

PRESETS: dict[str, dict[str, Any]] = {
    # A laptop CPU: ~2 minutes for LGMSNet on ~10 examples at 256x256.
    "fast": dict(time_budget=110.0, lr=1e-3, batch_size=2, freeze_encoder=True, lowres_fraction=0.5,
                 crop_full_resolution=True, eval_every_seconds=25.0, warmup_steps=5),
    "default": dict(steps=300, lr=5e-4, batch_size=4, freeze_encoder=False, lowres_fraction=0.3,
                    crop_full_resolution=False, eval_every_seconds=60.0, warmup_steps=10),
}
AUGMENTATION = dict(rot90_p=0.5, flip_p=0.5, intensity_p=0.5, noise_p=0.2, scale_p=0.3, elastic_p=0.2)
FT_SUFFIX = re.compile(r"-ft-\d{8}-\d{6}$")


@dataclass
class FinetuneResult:
    """What a fine-tune run decided. ``card_path`` is None and ``name`` the parent's when nothing was saved.

    ``verdict``: "better", "no evidence" or "worse" (the evidence from every correction);
    a new model is saved only when it is "better".
    """

    card_path: Path | None
    name: str
    metrics_before: dict[str, float]
    metrics_after: dict[str, float]
    improved: bool
    steps: int
    elapsed: float
    validated_on_training: bool
    message: str
    output_dir: Path
    split: dict[str, Any] = field(default_factory=dict)
    verdict: str = "no evidence"
    saved: bool = False
    evidence: dict[str, Any] = field(default_factory=dict)
    candidate: Any = None  # the fine-tuned LoadedModel, in memory, whether saved or not


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


def _freeze_norm_statistics(network) -> None:
    import torch.nn as nn

    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def _halved(size: tuple[int, ...], divisor: int) -> tuple[int, ...]:
    return tuple(max(divisor, (s // 2) // divisor * divisor) for s in size)


def finetune_steps(
    model,
    *,
    corrections: str | Path | None = None,
    images: str | Path | None = None,
    masks: str | Path | None = None,
    output: str | Path | None = None,
    time_budget: float | None = None,
    steps: int | None = None,
    device: str = "auto",
    preset: str = "default",
    freeze_encoder: bool | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    eval_every: int | None = None,
    seed: int = 0,
    name: str | None = None,
    precision: str = "auto",
    should_stop: Callable[[], bool] | None = None,
) -> Generator[TrainProgress, None, FinetuneResult]:
    """Fine-tune ``model`` (a name, a path or a LoadedModel); yields progress, returns :class:`FinetuneResult`.

    ``time_budget`` (seconds, whole call) and/or ``steps`` bound the run; with
    neither, the preset decides. ``eval_every`` (steps) overrides the preset's
    evaluation interval in seconds. ``precision``: "auto" (bf16 autocast on CPUs with
    native bf16 and on CUDA GPUs that have it, else fp32), "fp32" or "bf16".
    """
    import numpy as np
    import torch

    from napari_lgms._device import select_device
    from napari_lgms.training import data as data_mod
    from napari_lgms.training.augment import AugmentParams
    from napari_lgms.training.engine import autocast_factory, resolve_precision
    from napari_lgms.training.evaluate import evaluate_sums, means
    from napari_lgms.training.losses import segmentation_loss
    from napari_lgms.zoo import LoadedModel, load_model, save_model, sha256_of, user_model_dir

    started = time.monotonic()
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; accepted: {', '.join(PRESETS)}")
    settings = dict(PRESETS[preset])
    if time_budget is None and steps is None:
        time_budget, steps = settings.get("time_budget"), settings.get("steps")
    if time_budget is not None and time_budget <= 0:
        raise InputError(f"time budget must be positive seconds, got {time_budget}")
    if steps is not None and steps < 0:
        raise InputError(f"steps must be >= 0, got {steps}")
    lr = float(lr if lr is not None else settings["lr"])
    batch_size = int(batch_size or settings["batch_size"])
    freeze = settings["freeze_encoder"] if freeze_encoder is None else bool(freeze_encoder)
    torch_device = select_device(device)
    amp_dtype, needs_scaler = resolve_precision(precision, torch_device)
    autocast = autocast_factory(torch_device, None if needs_scaler else amp_dtype)  # bf16 only: no scaler here

    # -- model -----------------------------------------------------------------------------
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        loaded = load_model(model, torch_device, allow_untrained=True)
    parent = loaded.card
    if freeze_encoder is None and loaded.origin == "untrained":
        freeze = False  # random features are not worth keeping
    network = copy.deepcopy(loaded.network).to(torch_device)
    parent_sha = parent.weights.get("sha256")
    if not parent_sha and loaded.path is not None:
        weights = Path(loaded.path).with_suffix(".safetensors")
        parent_sha = sha256_of(weights) if weights.is_file() else None

    # -- data: corrections (validation is held out from these), plus optional folder pairs -----
    if corrections is None and (images is None or masks is None):
        raise InputError("give corrections (a corrections store folder), images and masks folders, or both")
    examples, data_record = [], {}
    if corrections is not None:
        examples, kind, _ = data_mod.discover_examples(data=str(corrections))
        data_record.update(kind=kind, corrections=str(corrections), keys=[e.name for e in examples])
    held_out_pool = len(examples)
    if images is not None and masks is not None:
        extra, kind, _ = data_mod.discover_examples(images=str(images), masks=str(masks))
        examples += extra
        data_record.update(images=str(images), masks=str(masks), names=[e.name for e in extra])
        data_record.setdefault("kind", kind)
    if not held_out_pool:
        held_out_pool = len(examples)
    num_classes = parent.num_classes
    dims = parent.spatial_dims
    divisor = int(getattr(network, "size_divisor", parent.input.get("size_divisor", 1)))
    patch = tuple(int(s) for s in parent.input.get("patch_size") or [256] * dims)
    mode = "resize" if parent.input.get("mode", "resize") == "resize" else "patch"
    spec = data_mod.PrepareSpec(parent.in_channels, num_classes, dims, patch, mode, dict(parent.normalization))
    cache = data_mod.SampleCache(examples, spec)
    for done in cache.preload():
        yield TrainProgress(0, steps or 0, 0, 0, None, 0.0, time.monotonic() - started, None, None, "loading",
                            f"loaded {done}/{len(examples)} examples")
    split = data_mod.split_examples(held_out_pool, 0.2, seed)
    split.train += list(range(held_out_pool, len(examples)))  # folder pairs only ever train
    val_samples = [cache.get(i) for i in split.val]

    augment = AugmentParams(**AUGMENTATION)
    phases = []  # (dataset, fraction of the run)
    lowres_fraction = settings["lowres_fraction"] if mode == "resize" else 0.0
    if lowres_fraction > 0:
        low = _halved(patch, divisor)
        low_cache = data_mod.SampleCache(examples, replace(spec, patch_size=low))
        phases.append((data_mod.TrainingDataset(low_cache, split.train, augment, seed, 0.8), lowres_fraction))
        crop = low if settings["crop_full_resolution"] else patch
        phases.append((data_mod.TrainingDataset(cache, split.train, augment, seed + 1, 0.8, patch_size=crop), 1.0))
    else:
        phases.append((data_mod.TrainingDataset(cache, split.train, augment, seed, 0.8), 1.0))

    # -- the score to beat -----------------------------------------------------------------
    def evaluate() -> dict[str, float]:
        return means(evaluate_sums(network, val_samples, torch_device, num_classes, batch_size=batch_size))

    eval_started = time.monotonic()
    before = evaluate()
    eval_seconds = time.monotonic() - eval_started
    metric = "dice"
    best_value, best_metrics = before[metric], before
    best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    validation_note = split.describe()
    yield TrainProgress(0, steps or 0, 0, 0, None, 0.0, time.monotonic() - started, None, before, "validate",
                        f"starting model: dice {before[metric]:.4f} on {validation_note}")

    # -- train -----------------------------------------------------------------------------
    torch.manual_seed(seed)
    if freeze:
        freeze_first_half(network)
    trainable = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=1e-4)
    warmup = int(settings["warmup_steps"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(warmup, 1)))

    def budget_left() -> float:
        return math.inf if time_budget is None else time_budget - (time.monotonic() - started)

    step, step_seconds, last_report = 0, 0.0, 0.0
    last_eval_step, last_eval_time = 0, time.monotonic()

    def validate_and_keep() -> tuple[dict[str, float], bool]:
        nonlocal best_value, best_metrics, best_state, last_eval_step, last_eval_time, eval_seconds
        tick = time.monotonic()
        metrics = evaluate()
        eval_seconds = max(eval_seconds, time.monotonic() - tick)
        last_eval_step, last_eval_time = step, time.monotonic()
        better = metrics[metric] > best_value + 1e-9
        if better:
            best_value, best_metrics = metrics[metric], metrics
            best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        return metrics, better
    stopped = False
    total_estimate = steps or 0
    epoch = 0
    while True:
        phase_index = 0
        if len(phases) > 1:
            if steps is not None and time_budget is None:
                progress_fraction = step / max(steps, 1)
            else:
                spent = time.monotonic() - started
                progress_fraction = spent / time_budget if time_budget else step / max(steps or 1, 1)
            phase_index = 0 if progress_fraction < phases[0][1] else 1
        dataset = phases[phase_index][0]
        dataset.set_epoch(epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(dataset))
        epoch += 1
        finished = False
        for start in range(0, len(order), batch_size):
            if steps is not None and step >= steps:
                finished = True
                break
            if budget_left() < eval_seconds + step_seconds:
                finished = True
                break
            if should_stop and should_stop():
                finished = stopped = True
                break
            items = [dataset[int(i)] for i in order[start:start + batch_size]]
            batch_images = torch.stack([x for x, _ in items]).to(torch_device)
            batch_masks = torch.stack([y for _, y in items]).to(torch_device)
            tick = time.monotonic()
            network.train()
            _freeze_norm_statistics(network)
            with autocast():
                logits = network(batch_images)
            loss = segmentation_loss(logits, batch_masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            duration = time.monotonic() - tick
            step_seconds = duration if step == 1 else 0.8 * step_seconds + 0.2 * duration
            if time_budget is not None and steps is None:
                total_estimate = step + max(int(budget_left() / max(step_seconds, 1e-6)), 0)
            now = time.monotonic()
            if now - last_report >= 0.05:
                last_report = now
                remaining = None if time_budget is None else max(budget_left(), 0.0)
                yield TrainProgress(step, total_estimate, epoch, 0, float(loss.detach()), scheduler.get_last_lr()[0],
                                    now - started, remaining, None, "train", "")
            due = (step - last_eval_step >= eval_every) if eval_every else \
                (now - last_eval_time >= settings["eval_every_seconds"])
            if due:
                metrics, better = validate_and_keep()
                yield TrainProgress(step, total_estimate, epoch, 0, None, scheduler.get_last_lr()[0],
                                    time.monotonic() - started, None, metrics, "validate",
                                    "improved" if better else "no improvement")
        if finished:
            break
    if step > last_eval_step:
        metrics, better = validate_and_keep()
        yield TrainProgress(step, total_estimate, epoch, 0, None, scheduler.get_last_lr()[0],
                            time.monotonic() - started, None, metrics, "validate",
                            "improved" if better else "no improvement")

    # -- save --------------------------------------------------------------------------------
    network.load_state_dict(best_state)
    improved = best_value > before[metric] + 1e-9
    new_name = name or new_version_name(parent.name)
    destination = Path(output) if output is not None else user_model_dir()
    elapsed = time.monotonic() - started
    note = ("no improvement on validation: the weights are the starting model's" if not improved
            else f"validation dice {before[metric]:.4f} -> {best_value:.4f}")
    card = replace(
        parent, name=new_name, version=next_version(parent.version),
        description=f"{parent.description} Fine-tuned from {parent.name} on {len(examples)} user example(s).".strip(),
        training={**{k: v for k, v in parent.training.items() if k in ("data", "terms")},
                  "finetune": {"preset": preset, "steps": step, "seconds": round(elapsed, 1),
                               "time_budget": time_budget, "lr": lr, "batch_size": batch_size,
                               "frozen_encoder": freeze, "seed": seed, "device": torch_device.type,
                               "data": data_record}},
        metrics={"split": f"validation: {validation_note}", "selected_by": metric,
                 **{k: round(v, 6) for k, v in best_metrics.items()}},
        lineage={"parent": parent.name, "parent_version": parent.version, "parent_path": str(loaded.path or ""),
                 "parent_sha256": parent_sha, "data": data_record,
                 "metrics_before": {k: round(v, 6) for k, v in before.items()},
                 "metrics_after": {k: round(v, 6) for k, v in best_metrics.items()},
                 "improved": improved, "validated_on_training": split.validated_on_training,
                 "parent_lineage": parent.lineage or None},
        weights={}, created="",
    )
    yield TrainProgress(step, step, epoch, 0, None, 0.0, time.monotonic() - started, 0.0, best_metrics, "saving", note,
                        output=str(destination / f"{card.name}.json"))
    network.cpu()
    card_path = save_model(network, card, destination)
    split_record = {"description": validation_note, "train": [examples[i].name for i in split.train],
                    "val": [examples[i].name for i in split.val]}
    message = note + ("; validated on the training examples (fewer than 3 examples)" if split.validated_on_training else "")
    if stopped:
        message += "; stopped early on request"
    yield TrainProgress(step, step, epoch, 0, None, 0.0, time.monotonic() - started, 0.0, best_metrics, "done", message)
    return FinetuneResult(card_path, new_name, before, best_metrics, improved, step, time.monotonic() - started,
                          split.validated_on_training, message, destination, split_record,
                          verdict="better" if improved else "no evidence", saved=True,
                          candidate=LoadedModel(network.eval(), card, card_path, "user"))


def finetune(model, *, on_progress: Callable[[TrainProgress], None] | None = None, **options) -> FinetuneResult:
    """Run :func:`finetune_steps` to the end (same keyword arguments); ``on_progress`` sees every report."""
    from napari_lgms._generators import run_to_end

    return run_to_end(finetune_steps(model, **options), on_progress)
