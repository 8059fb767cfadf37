"""The user's review of a fine-tuned model: a blind A/B look at the images it changes most.

The check of a fine-tune (:mod:`.finetuning`) scores models on the user's own corrections, which
are few and tend to be the images the model failed on: it missed real gains on a shifted scanner
and vouched for models that lost polyps on frames nobody corrected (``benchmarks/README.md``). A
user who looks at the new model's masks beside the current one's on the project's other images
adds the evidence the check lacks, at the price of a glance per image instead of a drawn mask:

>>> items = review_items(result, images)                    # doctest: +SKIP
>>> answers = ["A", "same", "B", "A", "A", "A"]             # which mask is better, per item
>>> reviewed = accept_review(result, items, answers)        # doctest: +SKIP
>>> reviewed.verdict, reviewed.saved                        # doctest: +SKIP
('better', True)

:func:`review_items` segments every image with both models (as :func:`napari_lgms.segment` does) and
keeps the :data:`REVIEW_COUNT` images whose masks differ most, each shown as "A" and "B" in a seeded
random order, so the reviewer does not know which is new. :func:`review_verdict` turns the answers
into "better", "no evidence" or "worse" by a one-sided sign test; :func:`reviewed_decision` combines
it with the check's; :func:`accept_review` saves a candidate the review confirms, or deletes a
saved version the review contradicts.
"""
from __future__ import annotations

import heapq
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generator, Sequence

import numpy as np

from napari_lgms.errors import InputError

REVIEW_COUNT = 8  # images shown: the first 4 or 6 of the same simulated reviews kept a model that lost
# 1.9 points on the endoscope change, and 6 missed one that gained 4.6 on the breast scanner
CHANGED_AT_LEAST = 0.02  # of the two masks' foreground union that differs: below it, the same mask
ANSWERS = ("A", "B", "same")


@dataclass(frozen=True)
class ReviewItem:
    """One image to judge. ``image``: as given; ``first`` / ``second``: the labels shown as "A" / "B"
    (same spatial shape as the image); ``new_is_first``: whether "A" is the fine-tuned model's (not
    shown to the reviewer); ``changed``: the fraction of the masks' foreground union that differs."""

    index: int
    name: str
    image: Any
    first: np.ndarray
    second: np.ndarray
    new_is_first: bool
    changed: float

    def preferred(self, answer: str) -> str:
        """"new", "old" or "same" for an answer of :data:`ANSWERS`."""
        if answer not in ANSWERS:
            raise InputError(f"review answer {answer!r} not understood; accepted: {', '.join(ANSWERS)}")
        if answer == "same":
            return "same"
        return "new" if (answer == "A") == self.new_is_first else "old"


@dataclass(frozen=True)
class ReviewVerdict:
    """``decision`` (better / no evidence / worse) from ``new`` answers for the fine-tuned model,
    ``old`` for the current one and ``same``; ``p_value``: the one-sided sign test in the direction
    of the majority (1 when neither leads)."""

    decision: str
    new: int
    old: int
    same: int
    p_value: float

    def describe(self) -> str:
        count = self.new + self.old + self.same
        return (f"the new model's mask was better on {self.new} of the {count} images you reviewed, "
                f"the current one's on {self.old}")

    def record(self) -> dict[str, Any]:
        return {"decision": self.decision, "new_better": self.new, "old_better": self.old,
                "same": self.same, "p_value": self.p_value}


def reviewable(result) -> bool:
    """Whether a run's new model can be reviewed: it has one (the run was not stopped) and the
    check did not find it worse (a "worse" check stands whatever a review says)."""
    return getattr(result, "candidate", None) is not None and result.verdict != "worse"


def mask_change(first: np.ndarray, second: np.ndarray) -> float:
    """The fraction of the two label images' foreground union whose label differs (0: identical)."""
    first, second = np.asarray(first), np.asarray(second)
    union = np.logical_or(first > 0, second > 0)
    total = int(union.sum())
    return 0.0 if total == 0 else float(np.logical_and(union, first != second).sum()) / total


@dataclass(frozen=True)
class ReviewProgress:
    """A report of :func:`review_items_steps`: ``done`` of ``total`` images segmented by both models."""

    done: int
    total: int
    message: str


def review_items_steps(result, images: Sequence, *, names: Sequence[str] | None = None, parent=None,
                       count: int = REVIEW_COUNT, seed: int = 0
                       ) -> Generator[ReviewProgress, None, list[ReviewItem]]:
    """The up to ``count`` of ``images`` whose masks the run's candidate changes most (at least
    :data:`CHANGED_AT_LEAST`), most changed first; yields a report per image.

    ``result``: a :class:`~.finetuning.FinetuneResult` with a candidate; ``images``: arrays (spatial
    axes first, channels last if any) or objects with ``array`` and ``spacing`` (as
    :class:`~napari_lgms.io.image.ImageData`, whose spacing a 3D model's resampling uses); those of another
    dimensionality than the model's are skipped. ``parent``: the model the user has now (a name, a
    card path or a LoadedModel; default: the one the candidate's card names as its parent).
    """
    from napari_lgms import load_model, segment

    if not reviewable(result):
        raise InputError("this run has no new model to review (it was stopped, or its check found it worse)")
    candidate = result.candidate
    if parent is None:
        lineage = candidate.card.lineage or {}
        parent = lineage.get("parent_path") or lineage.get("parent")
    if not hasattr(parent, "network"):
        parent = load_model(parent, allow_untrained=True)
    dims = candidate.card.spatial_dims
    kept: list = []  # a heap of the `count` most changed so far: (changed, -index, ...), smallest first
    for index, image in enumerate(images):
        array = np.asarray(getattr(image, "array", image))
        name = names[index] if names is not None else f"image {index + 1}"
        if _spatial_dims(array, dims, candidate.card.in_channels) == dims:
            spacing = getattr(image, "spacing", None)
            old = segment(array, parent, spacing=spacing).labels
            new = segment(array, candidate, spacing=spacing).labels
            changed = mask_change(old, new)
            if changed >= CHANGED_AT_LEAST and count > 0:
                entry = (changed, -index, name, image, old, new)  # -index: the earlier image wins a tie
                (heapq.heappush if len(kept) < count else heapq.heappushpop)(kept, entry)
        yield ReviewProgress(index + 1, len(images), f"{name}: both models segmented")
    rng = np.random.default_rng(seed)
    items = []
    for changed, negative_index, name, image, old, new in sorted(kept, key=lambda e: e[:2], reverse=True):
        index = -negative_index
        new_first = bool(rng.random() < 0.5)
        first, second = (new, old) if new_first else (old, new)
        items.append(ReviewItem(index, name, image, first, second, new_first, changed))
    return items


def _spatial_dims(array: np.ndarray, dims: int, channels: int) -> int | None:
    """How many spatial axes ``array`` has for a model of ``dims`` and ``channels`` (None: unreadable)."""
    from napari_lgms.inference.geometry import find_channel_axis

    try:
        axis = find_channel_axis(array.shape, "auto", dims, channels)
    except InputError:
        return None
    return array.ndim - (axis is not None)


def review_items(result, images: Sequence, **options) -> list[ReviewItem]:
    """Run :func:`review_items_steps` to the end (same arguments)."""
    from napari_lgms._generators import run_to_end

    return run_to_end(review_items_steps(result, images, **options))


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided sign test: the chance of ``wins`` or more of ``wins + losses`` fair coin flips."""
    total = wins + losses
    if total == 0:
        return 1.0
    return float(sum(math.comb(total, k) for k in range(wins, total + 1)) / 2 ** total)


def review_verdict(items: Sequence[ReviewItem], answers: Sequence[str]) -> ReviewVerdict:
    """The review's verdict: "better" when the new model's masks were preferred more often than
    the current one's at the check's one-sided level (:data:`~.finetuning.VERDICT_LEVEL`: four of
    four, five of six with no loss...), "worse" symmetrically, else "no evidence"."""
    from napari_lgms.training.finetuning import VERDICT_LEVEL

    if len(answers) != len(items):
        raise InputError(f"{len(answers)} review answer(s) for {len(items)} image(s); answer every image")
    preferred = [item.preferred(answer) for item, answer in zip(items, answers)]
    new, old, same = (preferred.count(k) for k in ("new", "old", "same"))
    p_value = sign_test_p(max(new, old), min(new, old)) if new != old else 1.0
    decision = "no evidence"
    if new != old and p_value <= VERDICT_LEVEL:
        decision = "better" if new > old else "worse"
    return ReviewVerdict(decision, new, old, same, p_value)


def reviewed_decision(check: str, review: ReviewVerdict) -> str:
    """The run's decision once reviewed. A review that prefers the current model's masks as often
    as the new one's (and at least once) withdraws a "better"; one that shows the new model better
    turns the check's "no evidence" into "better"; the check's "worse" stands (its corrections
    were scored, not glanced at), and so does the review's."""
    if check == "worse" or review.decision == "worse":
        return "worse"
    if check == "better":
        return "no evidence" if review.old and review.old >= review.new else "better"
    return "better" if review.decision == "better" else check


def accept_review(result, items: Sequence[ReviewItem], answers: Sequence[str], *, output=None):
    """The run's :class:`~.finetuning.FinetuneResult` after the review: its candidate saved (with
    the review in its card's lineage) when the reviewed decision is "better", into the run's
    folder or ``output`` where it was not saved yet; a saved version deleted when the review
    withdrew the check's "better". Its message, verdict and ``evidence["review"]`` say what the
    review showed; ``result`` itself is left as it was."""
    from napari_lgms.zoo import LoadedModel, delete_model, save_model

    review = review_verdict(items, answers)
    decision = reviewed_decision(result.verdict, review)
    evidence = {**result.evidence, "review": {**review.record(), "images": [item.name for item in items],
                                              "answers": list(answers), "check_verdict": result.verdict}}
    message = _reviewed_message(result.verdict, decision, review)
    changes = dict(verdict=decision, evidence=evidence, message=message)
    if decision == "better":
        card = result.candidate.card
        lineage = {**card.lineage, "verdict": "better", "improved": True, "evidence": evidence}
        card = replace(card, lineage=lineage)
        if result.saved:
            destination = result.card_path.parent
        else:
            destination = Path(output) if output is not None else result.output_dir
        network = result.candidate.network
        card_path = save_model(_cpu_copy(network), card, destination)  # the same name: replaced atomically
        changes.update(card_path=card_path, saved=True, name=card.name,
                       candidate=LoadedModel(network, card, card_path, "user"))
    elif result.saved:
        delete_model(result.card_path)
        parent = (result.candidate.card.lineage or {}).get("parent", result.name)
        changes.update(card_path=None, saved=False, name=parent)
    return replace(result, **changes)


def write_pictures(item: ReviewItem, folder, number: int, stem: str | None = None) -> list[Path]:
    """The review pictures of ``item`` in ``folder``: PNGs of the image with mask A and with mask B
    outlined (2D), or the two masks as NIfTI beside the image's geometry (3D), named
    ``{stem}-A`` / ``{stem}-B`` (default stem: ``{number:02d}-{image name}``); returns their paths."""
    from napari_lgms.io import write_mask

    folder = Path(folder)
    if stem is None:
        stem = f"{number:02d}-" + re.sub(r"(\.nii)?\.[^.]*$", "", item.name)  # scan.nii.gz -> scan
    sides = (("A", item.first), ("B", item.second))
    if item.first.ndim == 3:
        reference = item.image if hasattr(item.image, "affine") else None
        return [write_mask(labels, folder / f"{stem}-{side}.nii.gz", reference) for side, labels in sides]
    return [outlined_png(item.image, labels, folder / f"{stem}-{side}.png") for side, labels in sides]


def outlined_png(image, labels, path) -> Path:
    """Write ``image`` (2D grey or RGB, or an object with ``array``) as an 8-bit RGB PNG with the
    outline of ``labels`` in yellow; returns ``path``."""
    from skimage.segmentation import find_boundaries

    from napari_lgms.io.raster import write_png

    array = np.asarray(getattr(image, "array", image), dtype=np.float32)
    array = np.repeat(array[..., None], 3, axis=-1) if array.ndim == 2 else array[..., :3]
    low, high = np.percentile(array, (0.5, 99.5))
    rgb = (np.clip((array - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)
    rgb[find_boundaries(np.asarray(labels), mode="thick")] = (255, 220, 0)
    write_png(rgb, path)
    return Path(path)


def _cpu_copy(network):
    import copy

    return copy.deepcopy(network).cpu()


def _reviewed_message(check: str, decision: str, review: ReviewVerdict) -> str:
    said = review.describe()
    if decision == "better" and check == "better":
        return f"kept after your review ({said})"
    if decision == "better":
        return f"better by your review ({said}): saved as a new model"
    if check == "better":
        return f"withdrawn by your review ({said}): the new model was deleted, the current one is kept"
    if decision == "worse":
        return f"worse by your review ({said}): nothing saved, keep the current model"
    return f"no evidence either way ({said}): nothing saved"
