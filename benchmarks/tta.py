"""What test-time augmentation costs: one pass against flip averaging, per shipped model.

    python benchmarks/tta.py [--threads 2] [--repeats 5] [--output benchmarks/tta.json]

Each shipped model segments a generated input of a typical size for its task
(``napari_lgms.inference.segment``, preprocessing included), "none" and "flips"
interleaved after one warm-up call each; the medians and their ratio are
printed as a table. The accuracy side is in each card's ``metrics.engine``
(``one_pass`` beside the default) and in the README.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
from _options import parse_options, write_rows

# model name -> a typical input: Kvasir frames are about 576x720 RGB, BUSI images 500x600 grey,
# MSD hippocampus crops about 36x50x35 voxels.
CASES = {
    "lgmsnet-polyp": (576, 720, 3),
    "esdmrnet-polyp": (576, 720, 3),
    "lgmsnet-breast-us": (500, 600),
    "esdmrnet-breast-us": (500, 600),
    "lgmsnet3d-hippocampus": (36, 50, 35),
}


def time_case(name: str, shape: tuple[int, ...], repeats: int) -> dict:
    from napari_lgms import load_model, segment

    model = load_model(name)
    image = np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8)
    channel_axis = -1 if model.card.in_channels == 3 else None
    times: dict[str, list[float]] = {"none": [], "flips": []}
    for choice in times:  # warm-up: builds the optimised copy and the ONNX Runtime session
        segment(image, model, channel_axis=channel_axis, test_time_augmentation=choice)
    for _ in range(repeats):
        for choice, values in times.items():
            started = time.perf_counter()
            segment(image, model, channel_axis=channel_axis, test_time_augmentation=choice)
            values.append(time.perf_counter() - started)
    medians = {choice: statistics.median(values) for choice, values in times.items()}
    return {"model": name, "input": "x".join(map(str, shape)), "default": model.card.output.test_time_augmentation or "none",
            **medians, "ratio": medians["flips"] / medians["none"]}


def main() -> int:
    args = parse_options(__doc__)
    rows = [time_case(name, shape, args.repeats) for name, shape in CASES.items()]
    print(f"{args.threads} thread(s), median of {args.repeats}")
    print(f"{'model':24} {'input':12} {'card default':>12} {'one pass s':>10} {'flips s':>9} {'ratio':>6}")
    for row in rows:
        print(f"{row['model']:24} {row['input']:12} {row['default']:>12} {row['none']:>10.3f} "
              f"{row['flips']:>9.3f} {row['ratio']:>6.2f}")
    write_rows(args.output, {"threads": args.threads, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
