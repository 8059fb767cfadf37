"""The one optimisation loop behind training (:mod:`.engine`) and fine-tuning (:mod:`.finetuning`).

:func:`optimise` takes batches, a loss, a :class:`Budget` (optimiser steps, seconds, or both) and
optional hooks (the learning rate as a function of progress, something to do after each step),
and yields one report per step. What differs between the two callers stays with them: the
training engine's epochs, validation, checkpoints and DDP; fine-tuning's cross-fitting and its
pull towards the parent's weights.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterable


@dataclass(frozen=True)
class Budget:
    """When a run is done: after ``steps`` optimiser steps, after ``seconds``, or at the first of both."""

    steps: int | None = None
    seconds: float | None = None

    def progress(self, step: int, elapsed: float) -> float:
        """How far a run is, in [0, 1] (1: done). With neither bound it is never done."""
        fractions = [step / self.steps if self.steps is not None else 0.0,
                     elapsed / max(self.seconds, 1e-9) if self.seconds is not None else 0.0]
        return min(max(fractions), 1.0)


class Stepper:
    """One optimiser step: backward (through a grad scaler when there is one), optional gradient-norm
    clipping, the optimiser's step. With ``skip_non_finite`` a step whose loss or gradient is NaN or
    infinite changes nothing (its loss is still returned): one such gradient through AdamW would make
    every weight NaN for good."""

    def __init__(self, optimizer, *, scaler=None, grad_clip: float = 0.0, skip_non_finite: bool = False):
        self.optimizer, self.scaler, self.grad_clip = optimizer, scaler, float(grad_clip)
        self.skip_non_finite = skip_non_finite
        self.skipped = 0

    def __call__(self, loss) -> float:
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        if self.skip_non_finite and not bool(torch.isfinite(loss.detach()).all()):
            return self._skip(loss)
        if self.scaler is None:
            loss.backward()
            if self.skip_non_finite and not self._finite_gradients():
                return self._skip(loss)
            if self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self._parameters(), self.grad_clip)
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            if self.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self._parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return float(loss.detach())

    def _parameters(self) -> list:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _finite_gradients(self) -> bool:
        import torch

        gradients = [p.grad for p in self._parameters() if p.grad is not None]
        return bool(torch.isfinite(torch.nn.utils.get_total_norm(gradients)))

    def _skip(self, loss) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped += 1
        return float(loss.detach())


def optimise(stepper: Stepper, batches: Iterable, loss_of: Callable[[Any], Any], *, budget: Budget,
             report: Callable[[int, float, float], Any], should_stop: Callable[[], bool] | None = None,
             lr_at: Callable[[float], float] | None = None,
             after_step: Callable[[float], None] | None = None) -> Generator[Any, None, tuple[int, bool]]:
    """Take optimiser steps on ``batches`` until the budget is spent, the batches run out, or
    ``should_stop()`` (checked before every step) says to stop.

    ``loss_of(batch)``: the scalar loss (the forward pass included). ``lr_at(progress)``: the
    learning rate to set before a step, from the budget's progress (None: the optimiser's own, or a
    scheduler stepped in ``after_step``). ``after_step(progress)`` runs after every step;
    ``report(steps taken, loss, progress)`` makes what is yielded after every step.
    Returns ``(steps taken, whether should_stop stopped it)``.
    """
    started, step = time.monotonic(), 0
    iterator = iter(batches)
    while True:
        progress = budget.progress(step, time.monotonic() - started)
        if progress >= 1.0:
            return step, False
        if should_stop is not None and should_stop():
            return step, True
        try:
            batch = next(iterator)
        except StopIteration:
            return step, False
        if lr_at is not None:
            for group in stepper.optimizer.param_groups:
                group["lr"] = lr_at(progress)
        loss = stepper(loss_of(batch))
        step += 1
        if after_step is not None:
            after_step(progress)
        yield report(step, loss, budget.progress(step, time.monotonic() - started))


def cosine_fraction(progress: float, warmup: float = 0.05) -> float:
    """Learning-rate factor at ``progress`` in [0, 1] of a run: linear warm-up, then cosine to zero."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return (progress + 1e-3) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (progress - warmup) / (1.0 - warmup)))
