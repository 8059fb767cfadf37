"""How many clicks does a click model need, and how fast is one click? (issue #20)

    NAPARI_LGMS_DATA=../shared/datasets python benchmarks/clicks.py --threads 2 --output clicks.json
    python benchmarks/clicks.py --data ../shared/datasets --cases breast busbra --images 40

For each case (a click model, its parent and a set of images: the parent's validation images that
click training did not choose its stages on, or a seeded sample of one image per patient of an
unseen domain), every object (each foreground label:
one lesion, or each hippocampus part) at the image's own resolution through the public API:

* automatic: :func:`napari_lgms.segment` with the parent (the card's test-time augmentation);
* box: the same inside the true bounding box grown by 10 % (the Segment widget's box);
* clicks: a simulated user (:mod:`napari_lgms.clicks.simulate`) on a :class:`ClickSession`,
  from nothing, and from the automatic mask (the user corrects what "Segment" showed).

It prints IoU for each, NoC@85 and NoC@90 (at most 20 clicks), IoU after 1, 3 and 5 clicks, Dice
after 3 clicks (and in the JSON the share of objects reaching Dice 0.90 within 3 clicks), and
the time per click (median and 90th percentile, end to end through ``add_click``), beside SAM
ViT-B's image encoder and its per-click prompt encoder + mask decoder (random weights, timing
only; needs the ``benchmark`` extra) in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adaptation import Case, cpu_description, load_domain, parse_data_options


@dataclass(frozen=True)
class ClickCase:
    model: str
    parent: str
    domain: Case
    split: str | None  # the parent's recorded split: its validation images; None: one per patient


CASES = {
    "polyp": ClickCase("lgmsnet-polyp-clicks", "lgmsnet-polyp", Case("lgmsnet-polyp", "kvasir-seg", "names"),
                       "kvasir-seg.json"),
    "breast": ClickCase("lgmsnet-breast-us-clicks", "lgmsnet-breast-us",
                        Case("lgmsnet-breast-us", "busi", "names"), "busi.json"),
    "busbra": ClickCase("lgmsnet-breast-us-clicks", "lgmsnet-breast-us",
                        Case("lgmsnet-breast-us", "busbra-logiq5", "cases.csv"), None),
    "hippocampus": ClickCase("lgmsnet3d-hippocampus-clicks", "lgmsnet3d-hippocampus",
                             Case("lgmsnet3d-hippocampus", "msd-hippocampus", "volumes"), "msd-hippocampus.json"),
}
SPLITS = Path(__file__).resolve().parents[1] / "training" / "splits"


def chosen_items(case: ClickCase, data: Path, limit: int, seed: int, stages: list[dict]):
    """At most ``limit`` items (seeded): validation images the click model's stages (its card's
    ``training.click_stages``) were not chosen on, or one image per patient of an unseen domain."""
    items = load_domain(case.domain, data)
    if case.split is not None:
        wanted = unseen_validation(case, data, stages)
        items = [item for item in items if item.name in wanted]
    else:
        rng = np.random.default_rng(seed)
        by_group: dict[str, list] = {}
        for item in items:
            by_group.setdefault(item.group, []).append(item)
        items = [group[int(rng.integers(len(group)))] for group in by_group.values()]
    rng = np.random.default_rng(seed)
    return [items[i] for i in sorted(rng.permutation(len(items))[:limit])]


def unseen_validation(case: ClickCase, data: Path, stages: list[dict]) -> set[str]:
    """The split's validation names less the ones any click-training stage was kept on (stages
    recorded without their count and seed used the defaults)."""
    from napari_lgms.training.clicks import ClickTraining, selection_indices
    from napari_lgms.training.data import discover_examples, split_from_file

    pairs, _, _ = discover_examples(str(data / case.domain.domain))
    split = split_from_file(SPLITS / case.split, [p.name for p in pairs])
    defaults = ClickTraining("", "", "", "")
    chosen = set()
    for stage in stages or [{}]:
        chosen.update(selection_indices(split, stage.get("validation_images", defaults.validation_images),
                                        stage.get("seed", defaults.seed)))
    return {pairs[i].name for i in split.val if i not in chosen}


def box_around(mask: np.ndarray, margin: float = 0.1):
    """The bounding box of ``mask`` grown by ``margin`` of its size per axis: ((start, stop), ...)."""
    others = [tuple(a for a in range(mask.ndim) if a != axis) for axis in range(mask.ndim)]
    rows = [np.flatnonzero(mask.any(axis=other)) for other in others]
    return tuple((max(0, int(r[0] - margin * (r[-1] - r[0] + 1))),
                  min(size, int(r[-1] + 1 + margin * (r[-1] - r[0] + 1)))) for r, size in zip(rows, mask.shape))


def run_case(name: str, case: ClickCase, data: Path, limit: int, seed: int) -> dict:
    """Scores of every object (each foreground label of a mask) of the case's images."""
    from napari_lgms import load_model, segment
    from napari_lgms.clicks import ClickSession
    from napari_lgms.clicks.simulate import iou, simulate, summarize_traces

    model, parent = load_model(case.model, "cpu"), load_model(case.parent, "cpu")
    automatic, boxed, fresh, corrected, seconds = [], [], [], [], []
    for item in chosen_items(case, data, limit, seed, model.card.training.get("click_stages", [])):
        auto_labels = segment(item.image, parent, channel_axis=item.channel_axis, spacing=item.spacing).labels
        for value in (v for v in np.unique(item.mask) if v > 0):
            truth = item.mask == value
            part = value if parent.card.num_classes > 1 else 1
            auto = auto_labels == part
            automatic.append(iou(truth, auto))
            boxed.append(iou(truth, segment(item.image, parent, channel_axis=item.channel_axis, spacing=item.spacing,
                                            roi=box_around(truth)).labels == part))
            for start, traces in ((None, fresh), (auto, corrected)):
                session = ClickSession(item.image, model, channel_axis=item.channel_axis, mask=start,
                                       spacing=item.spacing)

                def click(chosen, session=session):
                    began = time.perf_counter()
                    mask = session.add_click(chosen.position, chosen.positive)
                    seconds.append(time.perf_counter() - began)
                    return mask

                traces.append(simulate(truth, click, start=start))
            print(f"  {name} {item.name} object {value}: auto {automatic[-1]:.3f} box {boxed[-1]:.3f} "
                  f"clicks {[round(v, 3) for v in fresh[-1].ious[:5]]}", flush=True)
    ms = 1000 * np.asarray(seconds)
    return {"case": name, "model": case.model, "objects": len(automatic), "automatic": float(np.mean(automatic)),
            "box": float(np.mean(boxed)), "clicks": summarize_traces(fresh) | dice_within(fresh, 3),
            "clicks_from_automatic": summarize_traces(corrected) | dice_within(corrected, 3),
            "ms_per_click": {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90))}}


def dice_within(traces, clicks: int, target: float = 0.90) -> dict:
    """Mean Dice after ``clicks`` clicks and the share of objects reaching Dice ``target`` by then."""
    def dice(value: float) -> float:
        return 2 * value / (1 + value)

    return {f"dice@{clicks}": float(np.mean([dice(trace.iou_after(clicks)) for trace in traces])),
            f"dice{round(100 * target)}_within_{clicks}":
                float(np.mean([any(dice(v) >= target for v in trace.ious[:clicks]) for trace in traces]))}


def sam_timings(repeats: int = 3) -> dict | None:
    """Seconds for SAM ViT-B's image encoder (once per image) and for one click (prompt encoder and
    mask decoder on a stored embedding), with random weights; None without segment-anything."""
    import torch

    from peers import sam_click_decoder, sam_encoder

    try:
        encoder, version, what = sam_encoder("vit_b")
        prompt_encoder, decoder = sam_click_decoder()
    except ImportError:
        return None
    with torch.inference_mode():
        image = torch.randn(1, 3, 1024, 1024)
        encode = []
        for _ in range(repeats):
            began = time.perf_counter()
            embedding = encoder(image)
            encode.append(time.perf_counter() - began)
        click = []
        for n in range(1, 21):
            points = (torch.rand(1, n, 2) * 1024, torch.ones(1, n, dtype=torch.int))
            began = time.perf_counter()
            sparse, dense = prompt_encoder(points=points, boxes=None, masks=None)
            decoder(image_embeddings=embedding, image_pe=prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
            click.append(time.perf_counter() - began)
    return {"version": version, "encoder": what, "encoder_s": float(np.median(encode)),
            "ms_per_click": {"median": 1000 * float(np.median(click)), "p90": 1000 * float(np.percentile(click, 90))}}


def print_table(rows: list[dict], sam: dict | None) -> None:
    print(f"{'case':<11} {'objects':>7} {'auto':>6} {'box':>6} {'IoU@1':>6} {'IoU@3':>6} {'IoU@5':>6} "
          f"{'NoC85':>6} {'NoC90':>6} {'Dice@3':>6} | from auto: {'IoU@1':>6} {'IoU@3':>6} {'NoC85':>6} | "
          f"ms/click med p90")
    for row in rows:
        c, a = row["clicks"], row["clicks_from_automatic"]
        print(f"{row['case']:<11} {row['objects']:>7} {row['automatic']:>6.3f} {row['box']:>6.3f} {c['iou@1']:>6.3f} "
              f"{c['iou@3']:>6.3f} {c['iou@5']:>6.3f} {c['noc85']:>6.2f} {c['noc90']:>6.2f} {c['dice@3']:>6.3f} |            "
              f"{a['iou@1']:>6.3f} {a['iou@3']:>6.3f} {a['noc85']:>6.2f} | "
              f"{row['ms_per_click']['median']:>5.0f} {row['ms_per_click']['p90']:>5.0f}")
    if sam is not None:
        print(f"SAM ViT-B ({sam['version']}): image encoder {sam['encoder_s']:.1f} s once per image, then "
              f"{sam['ms_per_click']['median']:.0f} ms per click (p90 {sam['ms_per_click']['p90']:.0f})")
    else:
        print("SAM ViT-B: not timed (pip install the 'benchmark' extra)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=os.environ.get("NAPARI_LGMS_DATA"),
                        help="the datasets folder (default: $NAPARI_LGMS_DATA)")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--images", type=int, default=60, help="images per case at most (seeded sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-sam", action="store_true")
    parser.add_argument("--output", type=Path, help="write the rows as JSON")
    options = parse_data_options(parser, argv)
    sam = None if options.no_sam else sam_timings()
    rows = [run_case(name, CASES[name], Path(options.data), options.images, options.seed) for name in options.cases]
    print()
    print_table(rows, sam)
    if options.output:
        from napari_lgms._atomic import atomic_write_text

        payload = {"cpu": cpu_description(), "command": " ".join(sys.argv), "rows": rows, "sam_vit_b": sam}
        atomic_write_text(options.output, json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
