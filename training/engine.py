"""The training engine: a generator of progress that the CLI and the napari widget both drive.

>>> gen = train_steps(config)                      # doctest: +SKIP
>>> for progress in gen: print(progress.step)      # doctest: +SKIP

``train_steps`` yields :class:`TrainProgress` (one per optimiser step, through the
one optimisation loop :func:`napari_lgms.training.loop.optimise`, plus one per
phase change and per epoch) and returns a :class:`TrainResult` as
``StopIteration.value``; :func:`train` runs it to the end. It stops cleanly
when ``should_stop()`` turns true (the best model so far is still saved) or
when the generator is closed (nothing more is written).

Each epoch ends with validation, a JSON-lines log, an atomic checkpoint
(model, optimiser, scheduler, grad scaler, RNG states, epoch, best) and, when
validation improved, the model file. ``resume=True`` continues from the
checkpoint and reaches bit-identical weights to an uninterrupted run: every
epoch reseeds torch from (seed, epoch, rank) and every sample's augmentation
from (seed, epoch, index), so nothing depends on where a run was interrupted.

With ``teacher`` set, each batch also goes through that frozen model and the loss mixes in
its probabilities (:mod:`napari_lgms.training.teacher`).

Under ``torchrun`` the same code runs DistributedDataParallel: each rank sees
its share of the data (DistributedSampler), validation metrics are summed
over ranks, and only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Generator

from napari_lgms.errors import InputError
from napari_lgms.training.config import TrainConfig, config_from_dict

LOG_NAME = "training_log.jsonl"
PLOT_NAME = "training_curves.png"
SPLIT_NAME = "split.json"
CONFIG_NAME = "train_config.yaml"


@dataclass
class TrainProgress:
    """One report. ``phase``: "loading", "train", "validate", "epoch", "saving", "done"."""

    step: int
    total_steps: int
    epoch: int  # 1-based epoch being trained (or just finished for "epoch")
    epochs: int
    loss: float | None
    lr: float
    elapsed: float
    remaining: float | None
    val_metrics: dict[str, float] | None
    phase: str
    message: str = ""
    output: str = ""  # with phase "saving": the card file about to be written


@dataclass
class TrainResult:
    card_path: Path | None
    metrics: dict[str, Any]
    best_epoch: int
    epochs_completed: int
    steps: int
    stopped: bool
    output_dir: Path
    log_path: Path | None = None
    plot_path: Path | None = None
    checkpoint_path: Path | None = None
    split: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- helpers
def resolve_precision(precision: str, device) -> tuple[Any, bool]:
    """(autocast dtype or None, use a GradScaler)."""
    import torch

    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device.type == "cpu" and cpu_has_native_bf16():
            # benchmarks/training_variants.py: 0.49 of the fp32 step time on an AVX512-BF16 CPU,
            # loss after the same steps within 4e-4; CPUs without it would emulate bf16 (slower).
            precision = "bf16"
        else:
            precision = "fp32"
    if precision == "fp32":
        return None, False
    if precision == "fp16":
        if device.type != "cuda":
            raise InputError("precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
        return torch.float16, True
    return torch.bfloat16, False


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), so autocast pays off."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_factory(device, dtype):
    import torch

    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def lr_factor(config: TrainConfig, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base LR after ``step`` optimiser steps (per-iteration schedules)."""
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    floor = config.min_lr / config.lr if config.lr > 0 else 0.0

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        progress = min(max(step - warmup, 0) / max(total_steps - warmup, 1), 1.0)
        if config.schedule == "poly":
            return max((1.0 - progress) ** config.poly_power, floor)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_optimizer(config: TrainConfig, parameters):
    import torch

    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)


def build_start_network(config: TrainConfig):
    """(network, parent card or None): a registry model with ``model_args``, or an existing model's weights."""
    from napari_lgms.models.registry import create_model, get_model_config
    from napari_lgms.zoo import load_model
    from napari_lgms.zoo.locations import resolve_card_path

    card_path = resolve_card_path(config.model)
    if card_path is not None:
        loaded = load_model(card_path, "cpu")
        return loaded.network, loaded.card
    try:
        get_model_config(config.model)
    except KeyError as error:
        raise InputError(str(error.args[0])) from None
    try:
        return create_model(config.model, **config.model_args), None
    except (TypeError, ValueError) as error:
        raise InputError(f"model {config.model!r}: bad model_args {config.model_args} ({error})") from None


RESIZE_MARGIN = 1.5  # whole-image models are trusted this much beyond the largest training image


def largest_resize_factor(samples, patch_size) -> float | None:
    """How many patches the largest example spans along any axis (resize mode), or None."""
    ratios = [max(s / p for s, p in zip(sample.original_shape, patch_size))
              for sample in samples if sample.original_shape]
    return max(ratios) if ratios else None


def card_input(config: TrainConfig, network, spacing, resize_factor: float | None = None):
    """The card's input contract. Resize mode records ``max_resize_factor``: images up to that many
    patches per axis are resized whole at inference, as in training; larger ones are tiled."""
    from napari_lgms.inference.engine import RESIZE_LIMIT
    from napari_lgms.zoo.card import InputSpec

    arguments = network.arguments
    dims = int(arguments.get("spatial_dims", 2))
    if config.input_mode == "resize":
        mode = "resize"
    else:
        mode = "sliding_window" if dims == 3 else "tile"
    factor = round(max(RESIZE_LIMIT, RESIZE_MARGIN * resize_factor), 2) if mode == "resize" and resize_factor else None
    return InputSpec.for_network(config.patch_size, int(getattr(network, "size_divisor", 1)), mode, spacing, factor)


def command_line() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith(("napari-lgms", "__main__.py")):
        argv[0] = "napari-lgms"
    return shlex.join(argv)


def _median_spacing(samples) -> list[float] | None:
    import numpy as np

    spacings = [s.spacing for s in samples if s.spacing]
    if not spacings or len({len(s) for s in spacings}) != 1:
        return None
    return [round(float(v), 4) for v in np.median(np.asarray(spacings), axis=0)]


STAGE_KEYS = ("command", "initialised_from", "best_epoch", "steps", "device", "precision", "progress")


def earlier_stages(parent_card) -> list[dict]:
    """The training stages that made ``parent_card``'s weights, oldest first: its own
    ``earlier_stages`` plus itself (command, best epoch, validation scores), so a model
    trained on in several stages still says every command that made it."""
    training = parent_card.training or {}
    own = {key: training[key] for key in STAGE_KEYS if key in training}
    return [*training.get("earlier_stages", []),
            {"model": parent_card.name, **own, "validation": validation_scores(parent_card)}]


def validation_scores(card) -> dict:
    """A card's validation scores: in the training loop (iou, dice) and through the engine (engine_*)."""
    metrics = card.metrics or {}
    scores = {key: metrics[key] for key in ("selected_by", "epoch", "iou", "dice") if key in metrics}
    engine = metrics.get("engine") or {}
    scores.update({f"engine_{key}": engine[key] for key in ("iou", "dice") if key in engine})
    return scores


def _set_threads_for_workers(_worker_id: int) -> None:
    import torch

    torch.set_num_threads(1)


# ----------------------------------------------------------------------------- the generator
def train_steps(
    config: TrainConfig | dict,
    should_stop: Callable[[], bool] | None = None,
    *,
    command: str | None = None,
) -> Generator[TrainProgress, None, TrainResult]:
    """Train per ``config``; yields :class:`TrainProgress`, returns :class:`TrainResult`."""

    from napari_lgms.training import distributed

    if isinstance(config, dict):
        config = config_from_dict(config)
    config = replace(config).validate()
    for module in config.imports:
        __import__(module)
    info, device = distributed.setup(config.device)
    try:
        result = yield from _run(config, should_stop, command or command_line(), info, device)
    finally:
        distributed.teardown(info)
    return result


def _run(config: TrainConfig, should_stop, command: str, info, device):
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from napari_lgms.models.layout import use_layout_for
    from napari_lgms.training import data as data_mod
    from napari_lgms.training import distributed
    from napari_lgms.training.augment import AugmentParams
    from napari_lgms.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
    from napari_lgms.training.evaluate import evaluate_sums, means, metric_keys
    from napari_lgms.training.loop import Budget, Stepper, optimise
    from napari_lgms.training.losses import distilled_loss
    from napari_lgms.training.teacher import load_teacher

    started = time.monotonic()
    output = data_mod.expand_path(config.output)
    checkpoint_path = output / CHECKPOINT_NAME
    log_path = output / LOG_NAME
    main = info.is_main

    def report(step, total, epoch, loss, lr, phase, val=None, message="", remaining=None):
        return TrainProgress(step, total, epoch, config.epochs, loss, lr, time.monotonic() - started,
                             remaining, val, phase, message)

    # -- network ---------------------------------------------------------------------------
    torch.manual_seed(config.seed)
    network, parent_card = build_start_network(config)
    arguments = network.arguments
    num_classes = int(arguments["num_classes"])
    spec = data_mod.PrepareSpec(
        in_channels=int(arguments["in_channels"]), num_classes=num_classes,
        spatial_dims=int(arguments.get("spatial_dims", 2)), patch_size=tuple(config.patch_size),
        input_mode=config.input_mode, normalization=dict(config.normalization),
    )
    if len(config.patch_size) != spec.spatial_dims:
        raise InputError(f"patch_size {config.patch_size} has {len(config.patch_size)} sizes; the model is {spec.spatial_dims}D")
    divisor = int(getattr(network, "size_divisor", 1))
    if any(int(s) % divisor for s in config.patch_size):
        raise InputError(f"patch_size {config.patch_size} must be multiples of {divisor} for {network.architecture}")
    teacher = load_teacher(config, arguments, device)  # a bad teacher fails before the data load

    # -- data --------------------------------------------------------------------------------
    examples, kind, unpaired = data_mod.discover_examples(config.data, config.images, config.masks)
    cache = data_mod.SampleCache(examples, spec, keep=config.cache)
    total_examples = len(examples)
    yield report(0, 0, 0, None, 0.0, "loading", message=f"{total_examples} examples ({kind})"
                 + (f", {len(unpaired)} images without a mask skipped" if unpaired else ""))
    if config.cache or (config.group_duplicates and config.val_fraction > 0):
        for done in cache.preload():
            yield report(0, 0, 0, None, 0.0, "loading", message=f"loaded {done}/{total_examples}")
    if config.split_file:
        split = data_mod.split_from_file(data_mod.expand_path(config.split_file), [e.name for e in examples])
    else:
        groups = None
        if config.group_duplicates and config.val_fraction > 0 and total_examples >= 3:
            groups = data_mod.near_duplicate_groups(cache, config.duplicate_correlation)
        split = data_mod.split_examples(total_examples, config.val_fraction, config.split_seed, groups)
    val_samples = [cache.get(i) for i in split.val]
    split_record = {
        "description": split.describe(), "seed": split.seed, "val_fraction": split.val_fraction,
        "grouped_near_duplicates": split.grouped, "groups": split.groups,
        "validated_on_training": split.validated_on_training,
        "train": [examples[i].name for i in split.train], "val": [examples[i].name for i in split.val],
    }
    spacing = config.spacing or _median_spacing([cache.get(i) for i in range(min(total_examples, 64))]
                                                if config.cache else [])
    resize_factor = (largest_resize_factor([cache.get(i) for i in range(total_examples)], config.patch_size)
                     if config.cache and config.input_mode == "resize" else None)

    dataset = data_mod.TrainingDataset(cache, split.train, AugmentParams.from_config(config), config.seed,
                                       config.foreground_bias, config.samples_per_epoch)
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=config.seed, drop_last=False)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
                        pin_memory=device.type == "cuda", worker_init_fn=_set_threads_for_workers,
                        drop_last=False)
    steps_per_epoch = len(loader)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps > 0:
        total_steps = min(total_steps, config.max_steps)

    # -- optimisation ---------------------------------------------------------------------------
    network.to(device)
    model = network
    if info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(config, [p for p in network.parameters() if p.requires_grad])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, total_steps, steps_per_epoch))
    amp_dtype, use_scaler = resolve_precision(config.precision, device)
    autocast = autocast_factory(device, amp_dtype)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    selection = config.selection_metric
    if selection == "auto":
        selection = "iou" if num_classes == 1 else "dice"

    start_epoch, step = 0, 0
    best_value, best_epoch, best_state, best_metrics = -math.inf, 0, None, {}
    stale, history = 0, []
    if config.resume and checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path)
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        best_value, best_epoch = float(state["best_value"]), int(state["best_epoch"])
        best_state, best_metrics = state["best_state"], dict(state["best_metrics"])
        stale, history = int(state["stale"]), list(state["history"])
        yield report(step, total_steps, start_epoch, None, scheduler.get_last_lr()[0], "loading",
                     message=f"resumed after epoch {start_epoch}")

    inherited_class_names = (list(parent_card.class_names) if parent_card is not None
                             and parent_card.num_classes == num_classes else [])

    def card_of_best(metrics: dict, epoch_of_best: int):
        """The card of the best weights so far, with this run's record."""
        from napari_lgms.training.cards import card_metrics, model_card
        from napari_lgms.zoo import default_class_names
        from napari_lgms.zoo.card import NOT_A_MEDICAL_DEVICE, OutputSpec

        data_source = {"kind": kind, "data": config.data, "images": config.images, "masks": config.masks}
        return model_card(
            name=config.name, architecture=network.architecture, arguments=arguments,
            input_spec=card_input(config, network, spacing, resize_factor),
            normalization=config.normalization,
            class_names=config.class_names or inherited_class_names or default_class_names(num_classes),
            output_spec=OutputSpec("sigmoid" if num_classes == 1 else "softmax", 0.5,
                                   config.test_time_augmentation),
            version=str(config.version), description=config.description,
            training={
                "data": config.data_description or (config.data or config.images),
                "data_source": {k: v for k, v in data_source.items() if v},
                "terms": config.data_terms, "examples": total_examples,
                "split": {k: v for k, v in split_record.items() if k not in ("train", "val")},
                "seed": config.seed, "command": command, "world_size": info.world_size,
                "device": device.type, "precision": str(amp_dtype or "fp32").replace("torch.", ""),
                "best_epoch": epoch_of_best, "steps": step,
                "optimizer": config.optimizer, "lr": config.lr, "schedule": config.schedule,
                "batch_size": config.batch_size, "initialised_from": parent_card.name if parent_card else "random",
                **({"earlier_stages": earlier_stages(parent_card)} if parent_card is not None else {}),
                **({"teacher": teacher.describe(config.distill_weight)} if teacher is not None else {}),
                "config": config.to_dict(),
            },
            metrics=card_metrics(f"validation: {split.describe()}", selection, metrics, epoch=epoch_of_best),
            licence=config.licence, citation=config.citation,
            intended_use=config.intended_use or NOT_A_MEDICAL_DEVICE,
        )

    def save_best_model():
        from napari_lgms.zoo import save_model

        if best_state is None:
            return None
        current = copy.deepcopy(network.state_dict())
        network.load_state_dict(best_state)
        try:
            return save_model(network, card_of_best(best_metrics, best_epoch), output, half=config.save_half)
        finally:
            network.load_state_dict(current)

    if main:
        output.mkdir(parents=True, exist_ok=True)
        import yaml

        from napari_lgms._atomic import atomic_write_text

        atomic_write_text(output / SPLIT_NAME, json.dumps(split_record, indent=1))
        atomic_write_text(output / CONFIG_NAME, yaml.safe_dump(config.to_dict(), sort_keys=False))

    # -- epochs: the one optimisation loop (:mod:`.loop`), once per epoch -------------------------
    stepper = Stepper(optimizer, scaler=scaler, grad_clip=config.grad_clip)

    def loss_of(batch):
        images, masks = (t.to(device, non_blocking=True) for t in batch)
        with autocast():
            logits = model(images)
            teacher_logits = teacher(images) if teacher is not None else None
        return distilled_loss(logits, masks, teacher_logits, config.distill_weight)

    def stop_requested() -> bool:
        stop = bool(should_stop and should_stop())
        if info.enabled and should_stop is not None:
            stop = distributed.broadcast_flag(stop, info, device)
        return stop

    stopped, card_path = False, None
    session_start_step, session_start_time = step, time.monotonic()
    epoch = start_epoch
    for epoch in range(start_epoch, config.epochs):
        if step >= total_steps or (config.early_stop_patience > 0 and stale >= config.early_stop_patience):
            break  # done, or a resumed run that had already stopped early
        torch.manual_seed(config.seed * 100003 + epoch * 101 + info.rank)
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        model.train()
        use_layout_for(network, device, training=True)
        losses: list[float] = []

        def step_report(taken, loss, _progress, epoch=epoch, losses=losses):
            losses.append(loss)
            done = step + taken
            rate = (time.monotonic() - session_start_time) / max(done - session_start_step, 1)
            return report(done, total_steps, epoch + 1, loss, scheduler.get_last_lr()[0], "train",
                          remaining=rate * (total_steps - done))

        taken, stopped = yield from optimise(
            stepper, loader, loss_of, budget=Budget(steps=min(steps_per_epoch, total_steps - step)),
            report=step_report, should_stop=stop_requested, after_step=lambda _progress: scheduler.step())
        step += taken
        loss_sum, loss_count = float(sum(losses)), len(losses)
        epoch_complete = not stopped and loss_count == steps_per_epoch
        if stopped:
            break
        # -- validation and bookkeeping (every rank validates its share) --------------------------
        validate = (epoch + 1) % max(config.val_every, 1) == 0 or epoch + 1 == config.epochs or step >= total_steps
        totals = distributed.all_reduce_sums([loss_sum, float(loss_count)], info, device)
        row: dict[str, Any] = {"epoch": epoch + 1, "step": step, "train_loss": totals[0] / max(totals[1], 1),
                               "lr": scheduler.get_last_lr()[0], "elapsed": round(time.monotonic() - started, 3),
                               "complete": epoch_complete}
        improved = False
        if validate:
            yield report(step, total_steps, epoch + 1, None, scheduler.get_last_lr()[0], "validate")
            keys = metric_keys(num_classes) + ["count"]
            use_layout_for(network, device, training=False)
            sums = evaluate_sums(network, val_samples[info.rank::info.world_size], device, num_classes,
                                 batch_size=config.batch_size, autocast=autocast,
                                 window=tuple(config.patch_size) if config.input_mode == "patch" else None)
            reduced = distributed.all_reduce_sums([sums[k] for k in keys], info, device)
            metrics = means(dict(zip(keys, reduced)))
            row["val"] = metrics
            if metrics[selection] > best_value + 1e-12:
                best_value, best_epoch, best_metrics = metrics[selection], epoch + 1, metrics
                best_state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
                stale, improved = 0, True
            else:
                stale += 1
        history.append(row)
        if main:
            if improved:
                card_path = save_best_model()
            from napari_lgms._atomic import atomic_write_text

            atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in history))
            if epoch_complete:
                save_checkpoint(checkpoint_path, {
                    "epoch": epoch + 1, "step": step, "model": network.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "best_value": best_value, "best_epoch": best_epoch,
                    "best_state": best_state, "best_metrics": best_metrics, "stale": stale, "history": history,
                })
        distributed.barrier(info)
        yield report(step, total_steps, epoch + 1, row["train_loss"], scheduler.get_last_lr()[0], "epoch",
                     val=row.get("val"), message="improved" if improved else "")
        if config.early_stop_patience > 0 and stale >= config.early_stop_patience:
            yield report(step, total_steps, epoch + 1, None, scheduler.get_last_lr()[0], "epoch",
                         message=f"early stop: no improvement for {stale} validations")
            break

    # -- finish --------------------------------------------------------------------------------
    plot_path = None
    if main:
        yield report(step, total_steps, epoch + 1, None, scheduler.get_last_lr()[0], "saving")
        card_path = save_best_model()
        plot_path = _safe_plot(history, output / PLOT_NAME)
    distributed.barrier(info)
    result = TrainResult(
        card_path=card_path if main else None,
        metrics={"split": split.describe(), **best_metrics}, best_epoch=best_epoch,
        epochs_completed=sum(1 for r in history if r.get("complete")), steps=step, stopped=stopped,
        output_dir=output, log_path=log_path if main else None, plot_path=plot_path,
        checkpoint_path=checkpoint_path if checkpoint_path.exists() else None, split=split_record,
    )
    yield report(step, total_steps, epoch + 1, None, scheduler.get_last_lr()[0], "done",
                 val=best_metrics or None, message=str(card_path or "stopped before the first validation"))
    return result


def _safe_plot(history, path):
    from napari_lgms.training.plot import plot_history

    try:
        return plot_history(history, path)
    except Exception:  # a plot must never fail a finished training
        return None


def train(config: TrainConfig | dict, should_stop=None, on_progress: Callable[[TrainProgress], None] | None = None,
          *, command: str | None = None) -> TrainResult:
    """Run :func:`train_steps` to the end; ``on_progress`` sees every report."""
    from napari_lgms._generators import run_to_end

    return run_to_end(train_steps(config, should_stop, command=command), on_progress)
