"""Depthwise convolutions on the standard layout against channels-last, per shipped model, A/B interleaved.

    python benchmarks/depthwise_layout.py [--threads 2] [--repeats 9] [--precision fp32] [--output rows.json]

One fine-tuning step (forward, backward, AdamW) and one inference pass of each model on fixed random
input of the fine-tune's batch (two corrections and two unlabelled images), with the depthwise
convolutions switched by :func:`napari_lgms.models.layout.set_depthwise_layout`; ``--precision auto``
(the default) as fine-tuning chooses it: bf16 autocast where the CPU has native bf16, else fp32.
Prints the median milliseconds and the channels-last / standard ratio.
"""
from __future__ import annotations

import contextlib
import time

import torch

from _options import cpu_info, parse_options, write_rows

CASES = [("lgmsnet-breast-us", (4, 1, 160, 160)), ("lgmsnet-polyp", (4, 3, 160, 160)),
         ("esdmrnet-breast-us", (4, 1, 160, 160)), ("lgmsnet3d-hippocampus", (4, 1, 32, 32, 32))]


def timed(job, network, repeats: int) -> dict[bool, float]:
    """Median seconds of ``job`` per layout, the two layouts alternating after a warm-up each."""
    from napari_lgms.models.layout import set_depthwise_layout

    times: dict[bool, list[float]] = {False: [], True: []}
    for channels_last in (False, True):
        set_depthwise_layout(network, channels_last)
        job(), job()
    for _ in range(repeats):
        for channels_last in (False, True):
            set_depthwise_layout(network, channels_last)
            started = time.perf_counter()
            job()
            times[channels_last].append(time.perf_counter() - started)
    return {layout: sorted(values)[len(values) // 2] for layout, values in times.items()}


def main() -> None:
    from napari_lgms.training.engine import resolve_precision
    from napari_lgms.zoo import load_model

    options = parse_options(__doc__, lambda parser: parser.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto"))
    dtype, _ = resolve_precision(options.precision, torch.device("cpu"))
    autocast = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype is not None else contextlib.nullcontext
    precision = "bf16 autocast" if dtype is not None else "fp32"
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"{cpu_info()['name']}, {capability}, {options.threads} threads, {precision}")
    header = ("model", "input", "job", "standard ms", "channels-last ms", "ratio")
    print("{:<24} {:<18} {:<10} {:>12} {:>17} {:>6}".format(*header))
    rows = []
    for name, shape in CASES:
        network = load_model(name, "cpu").network.eval()
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-6)
        x = torch.randn(*shape)

        def train_step():
            with autocast():
                y = network(x)
            optimizer.zero_grad()
            y.float().mean().backward()
            optimizer.step()

        def inference():
            with torch.no_grad(), autocast():
                network(x)

        for job_name, job in (("train step", train_step), ("inference", inference)):
            median = timed(job, network, options.repeats)
            ratio = median[True] / median[False]
            rows.append({"model": name, "input": list(shape), "job": job_name, "precision": precision,
                         "standard_ms": 1000 * median[False], "channels_last_ms": 1000 * median[True],
                         "ratio": ratio})
            print(f"{name:<24} {'x'.join(map(str, shape)):<18} {job_name:<10} {1000 * median[False]:>12.1f} "
                  f"{1000 * median[True]:>17.1f} {ratio:>6.2f}", flush=True)
    write_rows(options.output, {"cpu": cpu_info()["name"], "threads": options.threads, "rows": rows})


if __name__ == "__main__":
    main()
