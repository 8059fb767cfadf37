"""Training throughput per registered model and fine-tuning gain on generated data.

    python benchmarks/training_benchmark.py [--models lgmsnet unext] [--size 128] [--batch 4]
        [--steps 3] [--device cpu|cuda|all] [--finetune-model unext] [--budget 60] [--threads 2]

Prints two tables: images (2D) or voxels (3D) per second of forward+backward+step,
and validation Dice before/after a time-budgeted fine-tune on ellipse phantoms.
Not a test: numbers depend on the machine (note its load when quoting them).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def phantom(rng, shape):
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    centre = [rng.uniform(0.35, 0.65) * s for s in shape]
    radii = [rng.uniform(0.12, 0.3) * s for s in shape]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0
    return np.clip(rng.normal(60, 15, shape) + 80 * inside, 0, 255).astype(np.float32), inside.astype(np.uint8)


def throughput(name, device, size, batch, steps):
    import torch

    from napari_lgms.models import create_model, get_model_config
    from napari_lgms.training.losses import segmentation_loss

    config = get_model_config(name)
    dims = config.spatial_dims
    spatial = (size,) * 2 if dims == 2 else (min(size, 64),) * 3
    network = create_model(name).to(device).train()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, config.in_channels, *spatial, device=device)
    y = torch.randint(0, max(config.num_classes, 2), (batch, *spatial), device=device)
    if config.num_classes == 1:
        y = (y > 0).long()
    timings = []
    for i in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        tick = time.perf_counter()
        loss = segmentation_loss(network(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step warms up
            timings.append(time.perf_counter() - tick)
    seconds = float(np.median(timings))
    unit = "img/s" if dims == 2 else "Mvox/s"
    rate = batch / seconds if dims == 2 else batch * np.prod(spatial) / seconds / 1e6
    return dims, spatial, rate, unit, seconds


def finetune_gain(name, size, budget, count=10):
    from napari_lgms.corrections import CorrectionsStore
    from napari_lgms.training.finetune import finetune
    from napari_lgms.zoo import load_model, save_model, untrained_card

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = load_model(name, "cpu", allow_untrained=True)
        card = untrained_card(name)
        card.input["patch_size"] = [size, size]
        parent = save_model(start.network, card, tmp / "parent")
        store = CorrectionsStore(tmp / "store")
        channels = card.in_channels
        for i in range(count):
            image, mask = phantom(rng, (size, size))
            if channels > 1:
                image = np.stack([image] * channels, -1)
            store.save(f"ex{i}", image, mask, np.zeros_like(mask), model=name)
        result = finetune(parent, corrections=store.root, output=tmp / "out", time_budget=budget,
                          preset="fast", device="cpu")
        return result.metrics_before["dice"], result.metrics_after["dice"], result.steps, result.elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="registered model names (default: all)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="all", help="cpu, cuda or all (every available)")
    parser.add_argument("--finetune-model", default="unext")
    parser.add_argument("--budget", type=float, default=60.0, help="fine-tune budget in seconds (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from napari_lgms.models import list_model_configs

    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")]
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices = [torch.device("cuda")] if args.device == "cuda" else devices + [torch.device("cuda")]
    names = args.models or [c.name for c in list_model_configs()]
    print(f"training throughput (forward+backward+SGD step, batch {args.batch}, median of {args.steps})")
    print(f"{'model':<14} {'device':<6} {'input':<16} {'rate':>12} {'s/step':>8}")
    for name in names:
        for device in devices:
            try:
                dims, spatial, rate, unit, seconds = throughput(name, device, args.size, args.batch, args.steps)
            except Exception as error:  # one broken model must not hide the others
                print(f"{name:<14} {device.type:<6} error: {type(error).__name__}: {error}")
                continue
            print(f"{name:<14} {device.type:<6} {'x'.join(map(str, spatial)):<16} {rate:>8.2f} {unit:<6} {seconds:>6.3f}")
    if args.budget > 0:
        before, after, steps, elapsed = finetune_gain(args.finetune_model, args.size, args.budget)
        print(f"\nfine-tuning gain ({args.finetune_model}, untrained start, 10 phantoms {args.size}px, "
              f"preset fast, budget {args.budget:.0f}s, CPU)")
        print(f"{'dice before':>12} {'dice after':>12} {'steps':>6} {'seconds':>8}")
        print(f"{before:>12.4f} {after:>12.4f} {steps:>6d} {elapsed:>8.1f}")


if __name__ == "__main__":
    main()
