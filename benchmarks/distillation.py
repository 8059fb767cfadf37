"""What a teacher costs per training step: labels only, a one-pass teacher, a flip-averaged teacher.

    python benchmarks/distillation.py [--threads 2] [--repeats 5] [--output benchmarks/distillation.json]

One optimiser step (forward, loss, backward, AdamW) of the shipped
``esdmrnet-polyp`` on a batch of 8 random 160x160 RGB inputs, as the CPU stages
train it (the engine's automatic precision), with no teacher, with
``lgmsnet-polyp`` as a one-pass teacher, and with it averaged over flips. The
three are interleaved after one warm-up step each; medians and ratios to
"labels only" are printed as a table. The accuracy side is in the README.
"""
from __future__ import annotations

import statistics
import time

from _options import parse_options, write_rows

STUDENT, TEACHER, BATCH, SIZE = "esdmrnet-polyp", "lgmsnet-polyp", 8, 160


def main() -> int:
    import torch

    from napari_lgms import load_model
    from napari_lgms.inference.augment import flip_sets
    from napari_lgms.training.engine import autocast_factory, resolve_precision
    from napari_lgms.training.losses import distilled_loss
    from napari_lgms.models.layout import use_layout_for
    from napari_lgms.training.teacher import Teacher

    args = parse_options(__doc__)
    device = torch.device("cpu")
    dtype, _ = resolve_precision("auto", device)
    autocast = autocast_factory(device, dtype)
    student = load_model(STUDENT).network.train()
    use_layout_for(student, device, training=True)
    loaded = load_model(TEACHER)
    teacher = loaded.network.eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 3, SIZE, SIZE, generator=generator)
    masks = (torch.rand(BATCH, SIZE, SIZE, generator=generator) > 0.5).long()
    variants = {"labels only": None,
                **{f"teacher, {name}": Teacher(teacher, loaded.card, flip_sets(choice, 2), choice)
                   for name, choice in (("one pass", "none"), ("flips", "flips"))}}

    def step(teach) -> float:
        started = time.perf_counter()
        with autocast():  # as training/engine.py runs a step
            logits = student(images)
            taught = None if teach is None else teach(images)
        loss = distilled_loss(logits, masks, taught, 0.5)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - started

    times: dict[str, list[float]] = {name: [] for name in variants}
    for teach in variants.values():
        step(teach)
    for _ in range(args.repeats):
        for name, teach in variants.items():
            times[name].append(step(teach))
    medians = {name: statistics.median(values) for name, values in times.items()}
    rows = [{"variant": name, "seconds": seconds, "ratio": seconds / medians["labels only"]}
            for name, seconds in medians.items()]
    print(f"{STUDENT} step, batch {BATCH} at {SIZE}x{SIZE}, {str(dtype or 'fp32').replace('torch.', '')}, "
          f"{args.threads} thread(s), median of {args.repeats}; teacher {TEACHER}")
    print(f"{'variant':20} {'step s':>7} {'ratio':>6}")
    for row in rows:
        print(f"{row['variant']:20} {row['seconds']:>7.3f} {row['ratio']:>6.2f}")
    write_rows(args.output, {"threads": args.threads, "precision": str(dtype), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
