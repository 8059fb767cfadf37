"""Does fine-tuning on a few corrections help on a domain the model never saw? (issue #19)

    NAPARI_LGMS_DATA=../shared/datasets python benchmarks/adaptation.py --quick
    python benchmarks/adaptation.py --data ../shared/datasets --cases shift new-task --output adaptation.json

For each case (a shipped base model and a target domain folder, or the model's own validation
images under a simulated device change) and each cell (k corrections, a time budget, a number of
draws), every draw:

1. picks k patients (cases, near-duplicate groups or volumes; seeded) and one image of each: the
   "corrections", saved into a corrections store with the parent's prediction as a user would
   (``--worst-of N``: the k the parent scored worst of N * k patients, as a user correcting its
   failures would pick them);
2. picks up to ``--unlabelled`` further patients as the user's unlabelled images of the domain;
3. fine-tunes through the public :func:`napari_lgms.finetune` on the CPU within the budget;
4. scores the parent, the fine-tuned candidate and the model the run handed back (the candidate
   when the run saved it, else the parent) on the remaining patients (at most ``--eval-limit``
   images, seeded), through :func:`napari_lgms.segment` with the card's test-time augmentation.

Per cell it prints the mean gain the user got (IoU points; mean Dice over classes in 3D), the
worst draw, the candidate's own gain, wall time, steps, the verdicts and whether each verdict
agreed with the candidate's real gain (beyond +-1 point), and the verdict ceiling: how often the
same rule could agree were the k corrections scored by the candidate itself (from every scored
image's parent and candidate scores, which the JSON keeps; ``--ceilings JSON`` re-reads them under
looser rules). ``--rejudge JSON`` prints a recorded run's table with its verdicts decided again by
the current rule from the recorded check. ``--review N``: after each run, a simulated user reviews
the N unlabelled images whose masks the candidate changes most (:func:`simulated_review`), and
each cell gets a second line: what the user got after that review. Data are never copied anywhere.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Case:
    model: str
    domain: str
    grouping: str  # "cases.csv", "name-prefix", "near-duplicates", "volumes"
    simulated: str | None = None  # "scanner" (3D MRI) or "endoscope" (RGB video): a simulated device change
    split: str | None = None  # only the validation images of this split file in training/splits/

    @property
    def volumetric(self) -> bool:
        return self.grouping == "volumes"


CASES = {
    "shift": Case("lgmsnet-breast-us", "busbra-logiq5", "cases.csv"),
    "shift-esdmrnet": Case("esdmrnet-breast-us", "busbra-logiq5", "cases.csv"),
    "new-task": Case("lgmsnet-breast-us", "ddti", "name-prefix"),
    "new-modality": Case("lgmsnet-polyp", "busi", "near-duplicates"),
    "shift-endoscope": Case("lgmsnet-polyp", "kvasir-seg", "near-duplicates", "endoscope", "kvasir-seg.json"),
    "3d-scanner": Case("lgmsnet3d-hippocampus", "msd-hippocampus", "volumes", "scanner",
                       "msd-hippocampus.json"),
}
FULL_CELLS_2D = [(10, 120.0, 5), (1, 30.0, 3), (3, 30.0, 3)]  # (corrections, seconds, draws)
FULL_CELLS_3D = [(1, 120.0, 3), (3, 120.0, 3)]
QUICK_CELLS_2D = [(10, 120.0, 1)]
QUICK_CELLS_3D = [(3, 120.0, 1)]
AGREEMENT_MARGIN = 0.01  # a gain within +-1 point has no sign to agree with


@dataclass
class Item:
    name: str
    group: str
    image: np.ndarray  # spatial axes first, channels last if any
    channel_axis: int | None
    mask: np.ndarray
    spacing: tuple[float, ...] | None = None


# ----------------------------------------------------------------------------- data
def _groups(case: Case, root: Path, names: list[str], images: list[np.ndarray]) -> list[str]:
    if case.grouping == "cases.csv":
        with open(root / "cases.csv", newline="") as handle:
            by_image = {row["image"]: row["case"] for row in csv.DictReader(handle)}
        return [by_image[name] for name in names]
    if case.grouping == "name-prefix":  # DDTI: 139_1(2) is the second nodule crop of image 1 of case 139
        return [name.split("_")[0] for name in names]
    if case.grouping == "near-duplicates":
        from napari_lgms.training.data import duplicate_groups, thumbnail

        thumbs = [thumbnail(np.atleast_3d(image).transpose(2, 0, 1).astype(np.float32)) for image in images]
        return [str(g) for g in duplicate_groups(thumbs, 0.97)]
    return list(names)


def _simulated_scanner(volume: np.ndarray, seed: int) -> np.ndarray:
    """A smooth multiplicative bias field, a gamma contrast change and 3 mm slices along the last
    axis (block-averaged, then linearly interpolated back to the 1 mm grid)."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    data = volume.astype(np.float32)
    low, high = np.percentile(data, [0.5, 99.5])
    unit = np.clip((data - low) / max(high - low, 1e-6), 0, 1)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in data.shape], indexing="ij")
    field = np.exp(sum(rng.uniform(-0.35, 0.35) * g for g in grids) + rng.uniform(-0.2, 0.2) * grids[0] * grids[1])
    unit = unit ** rng.uniform(0.6, 0.8) * field
    tensor = torch.from_numpy(unit.astype(np.float32))[None, None]
    depth = data.shape[-1]
    thick = F.avg_pool3d(tensor, (1, 1, 3), ceil_mode=True)
    back = F.interpolate(thick, size=tuple(data.shape), mode="trilinear", align_corners=False)
    return (back[0, 0].numpy()[..., :depth] * (high - low) + low).astype(np.float32)


def _simulated_endoscope(image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Another hospital's colonoscopy video frames, simulated on an RGB image (H, W, 3) and its mask:
    a closer view (the centre 67-80 % of the frame), motion blur along a random direction (9 to 21
    pixels), another white balance and a gamma change. Measured on the polyp model's validation
    images: motion blur alone costs it about 5 IoU points, the closer view about 7, colour almost
    nothing."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    height, width = mask.shape
    crop = rng.uniform(0.67, 0.8)
    rows, cols = int(round(height * crop)), int(round(width * crop))
    top, left = (height - rows) // 2, (width - cols) // 2
    image, mask = image[top:top + rows, left:left + cols], mask[top:top + rows, left:left + cols]
    length = int(rng.integers(9, 22))
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0 / length
    kernel = ndimage.rotate(kernel, rng.uniform(0, 180), reshape=False, order=1)
    kernel /= kernel.sum()
    unit = image.astype(np.float32) / 255.0
    blurred = np.stack([ndimage.convolve(unit[..., c], kernel, mode="nearest") for c in range(3)], axis=-1)
    gains = np.array([0.85, 1.0, 1.15]) * rng.uniform(0.95, 1.05, 3)
    changed = np.clip(blurred * gains, 0.0, 1.0) ** rng.uniform(0.8, 0.9)
    return (changed * 255.0 + 0.5).astype(np.uint8), np.ascontiguousarray(mask)


def load_domain(case: Case, data_root: Path) -> list[Item]:
    """Every image/mask pair of the case's domain folder (its split's validation images when it names
    a split), read as the user's readers read them, under the case's simulated device change."""
    from napari_lgms.io import read_image, read_mask
    from napari_lgms.training.data import dataset_folders, pair_folders

    root = data_root / case.domain
    layout = dataset_folders(root)
    if layout is None:
        raise SystemExit(f"{root}: no images/ + masks/ or imagesTr/ + labelsTr/")
    pairs, _ = pair_folders(layout[0], layout[1])
    if case.split is not None:
        from napari_lgms.training.data import read_split

        wanted = set(read_split(Path(__file__).parents[1] / "training" / "splits" / case.split)["val"])
        pairs = [p for p in pairs if p.name in wanted]
    images, rows = [], []
    for pair in pairs:
        image = read_image(pair.image_path)
        array, mask = np.asarray(image.array), np.asarray(read_mask(pair.mask_path))
        seed = sum(map(ord, pair.name))
        if case.simulated == "scanner":
            array = _simulated_scanner(array, seed)
        elif case.simulated == "endoscope":
            array, mask = _simulated_endoscope(array, mask, seed)
        images.append(array)
        rows.append((pair.name, image.channel_axis, mask, image.spacing))
    groups = _groups(case, root, [r[0] for r in rows], images)
    return [Item(name, group, array, axis, mask, tuple(spacing) if spacing else None)
            for (name, axis, mask, spacing), array, group in zip(rows, images, groups)]


def draw(items: list[Item], k: int, unlabelled: int, eval_limit: int, seed: int,
         worst_of: int = 1, parent_scores=None):
    """(corrections, unlabelled, evaluation) items: k patients with one image each, then up to
    ``unlabelled`` further patients, then at most ``eval_limit`` images of every other patient.

    ``worst_of`` > 1 draws as a user who looked at ``worst_of * k`` patients' images and corrected
    the k the parent scored worst (``parent_scores``); the others become unlabelled images first.
    """
    rng = np.random.default_rng(seed)
    by_group: dict[str, list[Item]] = {}
    for item in items:
        by_group.setdefault(item.group, []).append(item)
    order = [list(by_group)[i] for i in rng.permutation(len(by_group))]
    seen = worst_of * k
    looked_at = [by_group[g][int(rng.integers(len(by_group[g])))] for g in order[:seen]]
    if worst_of > 1:
        ranked = sorted(range(seen), key=lambda i: parent_scores(looked_at[i]))
        order[:seen] = [order[i] for i in ranked]
        looked_at = [looked_at[i] for i in ranked]
    corrections = looked_at[:k]
    pool = [item for g in order[k:k + unlabelled] for item in by_group[g]]
    rest = [item for g in order[k + unlabelled:] for item in by_group[g]]
    if len(rest) > eval_limit:
        rest = [rest[i] for i in sorted(rng.choice(len(rest), eval_limit, replace=False))]
    return corrections, pool, rest


# ----------------------------------------------------------------------------- scoring
def score(model, item: Item) -> float:
    """IoU (binary) or mean Dice over the foreground classes, through the public segment()."""
    from napari_lgms import segment

    labels = segment(item.image, model, channel_axis=item.channel_axis, spacing=item.spacing).labels
    return mask_score(labels, item.mask, model.card.num_classes)


def mask_score(labels: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    from napari_lgms.metrics import binary_scores, class_dice

    if num_classes == 1:
        return binary_scores(labels > 0, truth > 0)["iou"]
    return float(np.mean(list(class_dice(labels, truth, list(range(1, num_classes))).values())))


class ParentScores:
    """The parent's score per image, computed once across draws."""

    def __init__(self, model):
        self.model = model
        self._cache: dict[str, float] = {}

    def __call__(self, item: Item) -> float:
        if item.name not in self._cache:
            self._cache[item.name] = score(self.model, item)
        return self._cache[item.name]


# ----------------------------------------------------------------------------- one draw
def run_draw(case: Case, parent, parent_scores: ParentScores, items: list[Item], k: int, budget: float,
             seed: int, options) -> dict:
    from napari_lgms import finetune, segment
    from napari_lgms.corrections import CorrectionsStore

    corrections, pool, rest = draw(items, k, options.unlabelled, options.eval_limit, seed,
                                   options.worst_of, parent_scores)
    with tempfile.TemporaryDirectory() as tmp:
        store = CorrectionsStore(Path(tmp) / "corrections")
        for item in corrections:
            prediction = segment(item.image, parent, channel_axis=item.channel_axis, spacing=item.spacing).labels
            geometry = {"spacing": list(item.spacing)} if item.spacing else {}
            store.save(item.name, item.image, item.mask, prediction, model=case.model, geometry=geometry)
        extra = {"unlabelled": [item.image for item in pool]} if options.unlabelled and pool else {}
        started = time.monotonic()
        result = finetune(case.model, corrections=store.root, time_budget=budget, device="cpu",
                          output=Path(tmp) / "models", seed=seed, **extra)
        wall = time.monotonic() - started
        candidate = result.candidate
        pictures = options.review_pictures
        review = simulated_review(result, parent, pool, seed, options.review, Path(tmp) / "models",
                                  pictures=None if pictures is None else pictures / f"{case.model}-{seed}")
    parent_rest = [parent_scores(item) for item in rest]
    candidate_rest = [score(candidate, item) for item in rest]
    before, candidate_score = float(np.mean(parent_rest)), float(np.mean(candidate_rest))
    delivered = candidate_score if result.saved else before
    gain = candidate_score - before
    per_image = [[item.name, item.group, p, c] for item, p, c in zip(rest, parent_rest, candidate_rest)]
    expected = expected_verdict(gain)
    agrees = expected is None or result.verdict == expected
    if review is not None:
        review.update(gain=gain if review["saved"] else 0.0,
                      agrees=expected is None or review["verdict"] == expected)
    row = {"seed": seed, "corrections": [item.name for item in corrections], "unlabelled": len(pool),
           "evaluated": len(rest), "before": before, "candidate": candidate_score, "after": delivered,
           "gain": delivered - before, "candidate_gain": gain, "verdict": result.verdict,
           "agrees": agrees, "saved": result.saved, "steps": result.steps, "wall_s": wall,
           "evidence": result.evidence,
           "ceiling": verdict_ceiling(per_image, k, seed=seed), "per_image": per_image}
    return row if review is None else {"review": review, **row}


REVIEW_VISIBLE = 0.05  # score difference at which the simulated reviewer prefers one mask


def simulated_review(result, parent, pool: list, seed: int, count: int, output: Path,
                     pictures: Path | None = None) -> dict | None:
    """The run after a user's blind A/B review (:mod:`napari_lgms.training.review`) of the ``count``
    unlabelled images whose masks the candidate changes most, the user played by the truth: the
    mask that scores :data:`REVIEW_VISIBLE` more is preferred, else "same". None when there is no
    review to make (``count`` 0, no candidate, a "worse" check, no unlabelled images). ``fewer``:
    the decisions had the user stopped after the 4, 6... most changed images. ``pictures``: a folder
    to write each item's two pictures into (``01-A.png``, ``01-B.png``...; the image with the mask
    outlined, as ``napari-lgms finetune --review`` shows them) for a person to answer blind; the
    result's ``items`` then hold what scoring those answers needs (``benchmarks/review_by_eye.py``)."""
    from types import SimpleNamespace

    from napari_lgms.training.review import (accept_review, review_items, review_verdict, reviewable,
                                             reviewed_decision, write_pictures)

    if not count or not reviewable(result) or not pool:
        return None
    images = [SimpleNamespace(array=item.image, spacing=item.spacing) for item in pool]
    items = review_items(result, images, names=[item.name for item in pool],
                         parent=parent, count=count, seed=seed)
    answers, keys = [], []
    for number, entry in enumerate(items, 1):
        truth = pool[entry.index]
        first, second = (mask_score(labels, truth.mask, parent.card.num_classes)
                         for labels in (entry.first, entry.second))
        answers.append("A" if first - second > REVIEW_VISIBLE else "B" if second - first > REVIEW_VISIBLE
                       else "same")
        keys.append({"name": entry.name, "new_is_first": entry.new_is_first, "first": first,
                     "second": second, "changed": entry.changed})
        if pictures is not None:
            pictures.mkdir(parents=True, exist_ok=True)
            write_pictures(entry, pictures, number, stem=f"{number:02d}")  # no name: nothing but the masks
    reviewed = accept_review(result, items, answers, output=output)
    found = reviewed.evidence["review"]
    fewer = {str(n): reviewed_decision(result.verdict, review_verdict(items[:n], answers[:n]))
             for n in range(4, len(items), 2)}  # the same review stopped after the n most changed images
    return {"verdict": reviewed.verdict, "saved": reviewed.saved, "images": len(items),
            "new_better": found["new_better"], "old_better": found["old_better"], "same": found["same"],
            "fewer": fewer, "answers": answers, "items": keys,
            **({"pictures": str(pictures)} if pictures is not None else {})}


def reviewed_line(review: dict | None) -> str:
    if review is None:
        return ""
    return (f"; after review {review['verdict']} (new {review['new_better']}, old {review['old_better']}, "
            f"same {review['same']})")


def expected_verdict(gain: float) -> str | None:
    """The verdict a real gain calls for: None within +-1 point, where every verdict agrees."""
    return "better" if gain > AGREEMENT_MARGIN else "worse" if gain < -AGREEMENT_MARGIN else None


def _patient_groups(per_image: list) -> list[list[tuple[float, float]]]:
    """``[name, patient, parent score, candidate score]`` rows as (parent score, gain) pairs per patient."""
    by_patient: dict[str, list[tuple[float, float]]] = {}
    for _, patient, parent_score, candidate_score in per_image:
        by_patient.setdefault(patient, []).append((parent_score, candidate_score - parent_score))
    return list(by_patient.values())


def _one_image_per_patient(groups: list, k: int, subsets: int, seed: int):
    """``subsets`` seeded (k, 2) arrays of (parent score, gain): k patients, one image of each."""
    rng = np.random.default_rng(seed)
    for _ in range(subsets):
        yield np.asarray([groups[i][int(rng.integers(len(groups[i])))]
                          for i in rng.choice(len(groups), k, replace=False)])


def verdict_ceiling(per_image: list, k: int, subsets: int = 2000, seed: int = 0,
                    level: float | None = None) -> dict:
    """How often the run's own paired test could agree with this candidate's real gain, were its k
    corrections scored by the candidate itself instead of by models trained on half of them.

    ``per_image``: ``[name, group, parent score, candidate score]`` on the rest of the domain.
    Draws ``subsets`` seeded sets of k images (one per patient) and judges each with
    :func:`~napari_lgms.training.adaptation.judge` at the fine-tune's margin and ``level``
    (default: the fine-tune's):
    ``agreement`` is the share whose verdict agrees with the mean gain (as a run's verdict is
    counted), ``false_better`` the share judged "better" once the mean gain is removed (a candidate
    exactly as good as its parent, with the same per-image spread).
    """
    from napari_lgms.training.adaptation import judge
    from napari_lgms.training.finetuning import VERDICT_LEVEL, VERDICT_MARGIN, VERDICT_MINIMUM

    groups = _patient_groups(per_image)
    mean = float(np.mean([gain for g in groups for _, gain in g]))
    expected = expected_verdict(mean)
    if k < VERDICT_MINIMUM or len(groups) < k:  # never evidence: "no evidence" agrees only with no change
        return {"agreement": float(expected is None), "false_better": 0.0}
    rule = dict(margin=VERDICT_MARGIN, level=level or VERDICT_LEVEL, minimum=VERDICT_MINIMUM)
    agreed = false_better = 0
    for chosen in _one_image_per_patient(groups, k, subsets, seed):
        gains = chosen[:, 1]
        agreed += expected is None or judge(gains, **rule).decision == expected
        false_better += judge(gains - mean, **rule).decision == "better"
    return {"agreement": agreed / subsets, "false_better": false_better / subsets}


def summarise(rows: list[dict]) -> dict:
    """A cell's figures. ``claims``: the "better" and "worse" verdicts; ``claims_right``: those whose
    sign the candidate's real gain bore out (or within +-1 point of none)."""
    gains = [r["gain"] for r in rows]
    claims = [r for r in rows if r["verdict"] != "no evidence"]
    summary = {"draws": len(rows), "mean_gain": float(np.mean(gains)), "worst_gain": float(np.min(gains)),
               "mean_candidate_gain": float(np.mean([r["candidate_gain"] for r in rows])),
               "mean_before": float(np.mean([r["before"] for r in rows])),
               "wall_s": float(np.mean([r["wall_s"] for r in rows])),
               "steps": float(np.mean([r["steps"] for r in rows])),
               "verdicts": {v: sum(r["verdict"] == v for r in rows)
                            for v in ("better", "no evidence", "worse")},
               "agreement": float(np.mean([r["agrees"] for r in rows])),
               "claims": len(claims),
               "claims_right": sum(expected_verdict(r["candidate_gain"]) in (None, r["verdict"])
                                   for r in claims),
               "verdict_ceiling": float(np.mean([r["ceiling"]["agreement"] for r in rows])),
               "ceiling_false_better": float(np.mean([r["ceiling"]["false_better"] for r in rows]))}
    return summary | reviewed_summary(rows)


def reviewed_summary(rows: list[dict]) -> dict:
    """The cell's figures after the simulated review; a draw without one (no candidate, a "worse"
    check) keeps its run's outcome. Empty when no draw was reviewed."""
    if not any("review" in r for r in rows):
        return {}
    outcomes = [r.get("review") or {"verdict": r["verdict"], "gain": r["gain"], "agrees": r["agrees"]}
                for r in rows]
    gains = [o["gain"] for o in outcomes]
    return {"reviewed": {
        "mean_gain": float(np.mean(gains)), "worst_gain": float(np.min(gains)),
        "verdicts": {v: sum(o["verdict"] == v for o in outcomes) for v in ("better", "no evidence", "worse")},
        "agreement": float(np.mean([o["agrees"] for o in outcomes])),
        "images": float(np.mean([o.get("images", 0) for o in outcomes]))}}


def print_ceilings(path: Path, levels=(0.1, 0.2, 0.3), counts=(5, 10, 20, 40)) -> None:
    """Per cell of a recorded run (k >= 5), from every draw's per-image scores: the verdict ceiling
    and its false "better" rate under looser rules, then under the fine-tune's rule had the same
    candidates been checked on fewer or more corrections."""
    from napari_lgms.training.finetuning import VERDICT_LEVEL

    cells = [(row, [d for d in row["draws"] if "per_image" in d])
             for row in json.loads(Path(path).read_text())["table"] if row["k"] >= 5]
    cells = [(row, draws) for row, draws in cells if draws]
    print(f"{'case':<15} {'k':>3} {'draws':>5} {'p <=':>5} {'checked on':>10} {'ceiling':>8} {'false better':>13}")
    for row, draws in cells:
        variants = [(v, row["k"]) for v in levels] + [(VERDICT_LEVEL, n) for n in counts if n != row["k"]]
        for level, count in variants:
            found = [verdict_ceiling(d["per_image"], count, seed=d["seed"], level=level) for d in draws]
            print(f"{row['case']:<15} {row['k']:>3} {len(draws):>5} {level:>5.2f} {count:>10} "
                  f"{100 * np.mean([f['agreement'] for f in found]):>7.0f}% "
                  f"{100 * np.mean([f['false_better'] for f in found]):>12.0f}%")
    print("\nA mean test (t, p <= 0.10) on the k corrections, plain and with the oracle control variate "
          "(covariate_ceiling):")
    print(f"{'case':<15} {'k':>3} {'draws':>5} {'plain: ceiling':>15} {'false better':>13} "
          f"{'covariate: ceiling':>19} {'false better':>13}")
    for row, draws in cells:
        found = [covariate_ceiling(d["per_image"], row["k"], seed=d["seed"]) for d in draws]
        shares = [100 * np.mean([f[name][key] for f in found]) for name in ("plain", "covariate")
                  for key in ("agreement", "false_better")]
        print(f"{row['case']:<15} {row['k']:>3} {len(draws):>5} {shares[0]:>14.0f}% {shares[1]:>12.0f}% "
              f"{shares[2]:>18.0f}% {shares[3]:>12.0f}%")


def covariate_ceiling(per_image: list, k: int, subsets: int = 1000, seed: int = 0,
                      level: float = 0.10) -> dict:
    """The verdict ceiling of a mean test (one-sided t at ``level``, the fine-tune's margin) on k corrections,
    plain and with a control variate that no check has: each image's *parent score*, whose mean over
    the whole domain is taken as known (an oracle a label-free stand-in could only approximate). The
    covariate removes the luck of drawing more or fewer of the parent's failures; does it leave ten
    corrections enough? ``{"plain"|"covariate": {"agreement", "false_better"}}``, as
    :func:`verdict_ceiling` counts them."""
    from scipy import stats

    from napari_lgms.training.finetuning import VERDICT_MARGIN

    groups = _patient_groups(per_image)
    pairs = np.asarray([pair for g in groups for pair in g])
    mean, domain_parent = float(pairs[:, 1].mean()), float(pairs[:, 0].mean())
    expected = expected_verdict(mean)

    def decision(estimate: float, error: float, freedom: int) -> str | None:
        p_value = stats.t.sf(abs(estimate) / error, freedom) if error > 0 else 1.0
        if abs(estimate) <= VERDICT_MARGIN or p_value > level:
            return None
        return "better" if estimate > 0 else "worse"

    def rules(parent: np.ndarray, gains: np.ndarray) -> dict[str, str | None]:
        design = np.column_stack([np.ones(k), parent - domain_parent])
        coefficients, *_ = np.linalg.lstsq(design, gains, rcond=None)
        residual = gains - design @ coefficients
        covariance = residual @ residual / (k - 2) * np.linalg.pinv(design.T @ design)
        return {"plain": decision(gains.mean(), gains.std(ddof=1) / np.sqrt(k), k - 1),
                "covariate": decision(coefficients[0], float(np.sqrt(max(covariance[0, 0], 0.0))), k - 2)}

    counts = {name: {"agreement": 0, "false_better": 0} for name in ("plain", "covariate")}
    for chosen in _one_image_per_patient(groups, k, subsets, seed):
        for name, found in rules(chosen[:, 0], chosen[:, 1]).items():
            counts[name]["agreement"] += expected is None or found == expected
        for name, found in rules(chosen[:, 0], chosen[:, 1] - mean).items():
            counts[name]["false_better"] += found == "better"
    return {name: {key: value / subsets for key, value in found.items()} for name, found in counts.items()}


def rejudge(path: Path) -> list[dict]:
    """A recorded run's table with every draw's verdict judged again by today's rule from the
    check's recorded per-correction scores (the rule decides only what is handed back, not how
    anything trains), including what the parent had right being kept (``finetuning.kept_change``).
    A draw newly judged "better" is assumed to pass the candidate's fit check, which the recorded run
    did not need to make; ceilings are recomputed where per-image scores exist."""
    from napari_lgms.training.adaptation import judge
    from napari_lgms.training.finetuning import VERDICT_LEVEL, VERDICT_MARGIN, VERDICT_MINIMUM, check_decision

    table = []
    for row in json.loads(Path(path).read_text())["table"]:
        draws = []
        for draw in row["draws"]:
            evidence = draw.get("evidence", {})
            judged = judge(evidence.get("differences", []), margin=VERDICT_MARGIN, level=VERDICT_LEVEL,
                           minimum=VERDICT_MINIMUM)
            verdict, _ = check_decision(judged, evidence.get("per_correction", []))
            if verdict == "better" and evidence.get("unfit"):
                verdict = "no evidence"
            gain = draw["candidate_gain"]
            expected = expected_verdict(gain)
            ceiling = (verdict_ceiling(draw["per_image"], row["k"], seed=draw["seed"]) if "per_image" in draw
                       else {"agreement": 0.0, "false_better": 0.0})
            draws.append(dict(draw, verdict=verdict, gain=gain if verdict == "better" else 0.0,
                              agrees=expected is None or verdict == expected, ceiling=ceiling))
        table.append(dict(row, draws=draws, summary=summarise(draws)))
    return table


def print_table(table: list[dict]) -> None:
    width = max([15] + [len(row["case"]) for row in table])
    header = (f"{'case':<{width}} {'k':>3} {'budget':>6} {'draws':>5} {'before':>7} {'gain':>7} {'worst':>7} "
              f"{'cand.':>7} {'wall s':>7} {'steps':>6}  verdicts (better/none/worse)  agree  ceiling  claims right")
    print(header)
    print("-" * len(header))
    for row in table:
        s = row["summary"]
        v = s["verdicts"]
        print(f"{row['case']:<{width}} {row['k']:>3} {row['budget']:>6.0f} {s['draws']:>5} {s['mean_before']:>7.3f} "
              f"{100 * s['mean_gain']:>+7.1f} {100 * s['worst_gain']:>+7.1f} {100 * s['mean_candidate_gain']:>+7.1f} "
              f"{s['wall_s']:>7.0f} {s['steps']:>6.0f}  {v['better']}/{v['no evidence']}/{v['worse']:<22} "
              f"{100 * s['agreement']:>4.0f}%  {100 * s.get('verdict_ceiling', 0):>5.0f}%  "
              f"{s.get('claims_right', 0):>6}/{s.get('claims', 0)}")
        if "reviewed" in s:
            r, v = s["reviewed"], s["reviewed"]["verdicts"]
            print(f"{'  after review':<{width + 25}} {100 * r['mean_gain']:>+7.1f} "
                  f"{100 * r['worst_gain']:>+7.1f} {'':>7} {'':>7} {'':>6}  "
                  f"{v['better']}/{v['no evidence']}/{v['worse']:<22} {100 * r['agreement']:>4.0f}%  "
                  f"({r['images']:.1f} images reviewed)")


def cpu_description() -> str:
    """The CPU as figures must name it: model, family, bf16 / AMX, and torch's kernels."""
    import torch
    from _options import cpu_info

    cpu = cpu_info()
    family = f" (family {cpu['family']} model {cpu['model']})" if cpu["family"] else ""
    extras = "".join(f", {flag}" for flag in ("avx512_bf16", "amx_bf16") if flag in cpu["flags"])
    return f"{cpu['name']}{family}{extras}, torch {torch.__version__}, " \
           f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"


def parse_data_options(parser: argparse.ArgumentParser, argv: list[str] | None):
    """Parse ``argv`` (with ``--data`` and ``--threads``), check the datasets folder, set torch's
    threads and print the CPU."""
    import torch

    options = parser.parse_args(argv)
    if options.data is None or not Path(options.data).is_dir():
        parser.error("give --data DIR or set NAPARI_LGMS_DATA to the datasets folder")
    torch.set_num_threads(options.threads)
    print(f"CPU: {cpu_description()}", flush=True)
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=os.environ.get("NAPARI_LGMS_DATA"),
                        help="the datasets folder (default: $NAPARI_LGMS_DATA)")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--quick", action="store_true", help="one draw, k = 10 only (3D: k = 3)")
    parser.add_argument("--cells", nargs="+", metavar="K:SECONDS:DRAWS", help="override the cells")
    parser.add_argument("--unlabelled", type=int, default=20, help="unlabelled patients per draw (0: none)")
    parser.add_argument("--eval-limit", type=int, default=150, help="images scored per draw at most")
    parser.add_argument("--worst-of", type=int, default=1, metavar="N",
                        help="correct the k images the parent scored worst of N * k patients (1: at random)")
    parser.add_argument("--review", type=int, default=0, metavar="N",
                        help="after each run, a simulated user reviews the N unlabelled images the new "
                             "model changes most (0: no review)")
    parser.add_argument("--review-pictures", type=Path, metavar="DIR",
                        help="with --review: also write each draw's review pictures into DIR/<model>-<seed>/ "
                             "for a person to answer blind (benchmarks/review_by_eye.py scores the answers)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, help="write the table and every draw as JSON")
    parser.add_argument("--ceilings", type=Path, metavar="JSON",
                        help="print a recorded run's verdict ceilings under looser rules, and stop")
    parser.add_argument("--rejudge", type=Path, metavar="JSON",
                        help="print a recorded run's table with its verdicts judged by today's rule, and stop")
    known, _ = parser.parse_known_args(argv)
    if known.ceilings:
        print_ceilings(known.ceilings)
        return 0
    if known.rejudge:
        print_table(rejudge(known.rejudge))
        return 0
    options = parse_data_options(parser, argv)

    from napari_lgms import load_model

    table = []
    for name in options.cases:
        case = CASES[name]
        items = load_domain(case, Path(options.data))
        parent = load_model(case.model, "cpu")
        parent_scores = ParentScores(parent)
        if options.cells:
            cells = [(int(a), float(b), int(c)) for a, b, c in (text.split(":") for text in options.cells)]
        elif options.quick:
            cells = QUICK_CELLS_3D if case.volumetric else QUICK_CELLS_2D
        else:
            cells = FULL_CELLS_3D if case.volumetric else FULL_CELLS_2D
        for k, budget, draws in cells:
            rows = []
            for index in range(draws):
                row = run_draw(case, parent, parent_scores, items, k, budget, seed=1000 * k + index,
                               options=options)
                print(f"  {name} k={k} draw {index}: before {row['before']:.3f} candidate {row['candidate']:.3f} "
                      f"verdict {row['verdict']} ({row['steps']} steps, {row['wall_s']:.0f} s)"
                      + reviewed_line(row.get("review")), flush=True)
                rows.append(row)
            label = name if options.worst_of == 1 else f"{name} (the {k} worst of {options.worst_of * k})"
            table.append({"case": label, "model": case.model, "domain": case.domain, "k": k, "budget": budget,
                          "summary": summarise(rows), "draws": rows})
    print()
    print_table(table)
    if options.output:
        from napari_lgms._atomic import atomic_write_text

        payload = {"cpu": cpu_description(), "command": " ".join(sys.argv), "table": table}
        atomic_write_text(options.output, json.dumps(payload, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
