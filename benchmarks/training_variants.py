"""Training-step variants on the CPU, interleaved: fp32, channels-last, bf16 autocast, both.

    python benchmarks/training_variants.py [--model lgmsnet] [--size 256] [--batch 8] [--repeats 4]

One step = forward, BCE + Dice loss, backward, SGD step, on fixed random data.
Prints the median seconds per step, images/s, the ratio to fp32, and the loss
after the same steps from the same start (how far bf16 drifts), then writes
``benchmarks/training_variants.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from napari_lgms.models import create_model
from napari_lgms.models.layout import use_layout_for
from napari_lgms.training.losses import segmentation_loss

VARIANTS = {
    "fp32": (False, None),
    "channels_last": (True, None),
    "bf16_autocast": (False, torch.bfloat16),
    "bf16+channels_last": (True, torch.bfloat16),
}


def make_step(network, channels_last: bool, dtype):
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
    autocast = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else contextlib.nullcontext

    def step(images, masks) -> float:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = network(images)
        loss = segmentation_loss(logits.float(), masks)
        loss.backward()
        optimizer.step()
        return float(loss)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lgmsnet")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = create_model(args.model).train()
    use_layout_for(start, "cpu", training=True)
    images = torch.randn(args.batch, start.arguments["in_channels"], args.size, args.size)
    masks = (torch.rand(args.batch, args.size, args.size) > 0.7).long()
    steps, losses, times = {}, {}, {name: [] for name in VARIANTS}
    for name, (channels_last, dtype) in VARIANTS.items():
        network = copy.deepcopy(start)
        if channels_last:
            network = network.to(memory_format=torch.channels_last)
        steps[name] = make_step(network, channels_last, dtype)
        steps[name](images, masks)  # warm-up, also the first of the compared steps
    for _ in range(args.repeats):
        for name in VARIANTS:
            began = time.perf_counter()
            losses[name] = steps[name](images, masks)
            times[name].append(time.perf_counter() - began)
    base = statistics.median(times["fp32"])
    rows = []
    print(f"{args.model} {args.size}x{args.size} batch {args.batch}, {args.threads} threads, "
          f"median of {args.repeats} interleaved steps")
    print(f"{'variant':22s} {'s/step':>8s} {'img/s':>7s} {'ratio':>6s} {'loss after':>11s}")
    for name in VARIANTS:
        seconds = statistics.median(times[name])
        rows.append({"variant": name, "seconds_per_step": seconds, "images_per_s": args.batch / seconds,
                     "ratio": seconds / base, "loss_after_steps": losses[name]})
        print(f"{name:22s} {seconds:8.2f} {args.batch / seconds:7.2f} {seconds / base:6.2f} {losses[name]:11.5f}")
    out = Path(__file__).with_name("training_variants.json")
    out.write_text(json.dumps({"args": vars(args), "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
