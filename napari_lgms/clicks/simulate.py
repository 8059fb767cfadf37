"""Simulated users, as RITM trains and scores click models: the first click at the object's most
interior point, each next click at the most interior point of the largest error (positive in a
miss, negative in a false positive). Used by click training and by the benchmark.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from napari_lgms.clicks.encoding import Click

MAX_CLICKS = 20
IOU_TARGETS = (0.85, 0.90)


def depth_in(region: np.ndarray) -> np.ndarray:
    """Each pixel's distance to the nearest pixel outside ``region`` or beyond the image border."""
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(np.pad(region, 1))[(slice(1, -1),) * region.ndim]


def _interior(region: np.ndarray) -> tuple[float, np.ndarray]:
    """(depth, position) of the point of ``region`` farthest from its boundary and the image border
    (of several, the one nearest their centre)."""
    depth = depth_in(region)
    deepest = np.argwhere(depth == depth.max())  # a ridge: take its point nearest its middle
    position = deepest[np.argmin(((deepest - deepest.mean(axis=0)) ** 2).sum(axis=1))]
    return float(depth.max()), position


def next_click(truth: np.ndarray, predicted: np.ndarray | None) -> Click | None:
    """The click a careful user makes next on ``predicted`` (None: nothing shown yet) against
    ``truth`` (both boolean, same shape); None when there is nothing left to fix."""
    truth = np.asarray(truth, bool)
    if predicted is None:
        predicted = np.zeros_like(truth)
    missed, extra = truth & ~predicted, predicted & ~truth
    depth_missed, at_missed = _interior(missed) if missed.any() else (0.0, None)
    depth_extra, at_extra = _interior(extra) if extra.any() else (0.0, None)
    if depth_missed == 0 and depth_extra == 0:
        return None
    if depth_missed >= depth_extra:
        return Click(tuple(float(v) for v in at_missed), True)
    return Click(tuple(float(v) for v in at_extra), False)


def iou(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1 when both are empty)."""
    union = np.logical_or(truth, predicted).sum()
    return float(np.logical_and(truth, predicted).sum() / union) if union else 1.0


@dataclass
class ClickTrace:
    """IoU after each click of one simulated session (``ious[0]``: after the first click)."""

    ious: list[float] = field(default_factory=list)

    def clicks_to(self, target: float, limit: int = MAX_CLICKS) -> int:
        """Clicks until the IoU first reaches ``target`` (``limit`` when it never does): NoC@target."""
        for count, value in enumerate(self.ious[:limit], start=1):
            if value >= target:
                return count
        return limit

    def iou_after(self, clicks: int) -> float:
        """The IoU after ``clicks`` clicks (the last one reached when the session stopped earlier)."""
        return self.ious[min(clicks, len(self.ious)) - 1]


def simulate(truth: np.ndarray, click: Callable[[Click], np.ndarray], *, limit: int = MAX_CLICKS,
             stop_at: float = max(IOU_TARGETS), min_clicks: int = 5,
             start: np.ndarray | None = None) -> ClickTrace:
    """Run a simulated user against ``click`` (a click -> the whole current mask, e.g.
    :meth:`ClickSession.add_click`) for up to ``limit`` clicks; it stops earlier once the IoU has
    reached ``stop_at`` after at least ``min_clicks``. ``start``: the mask shown before the first
    click (None: nothing)."""
    truth = np.asarray(truth, bool)
    trace, shown = ClickTrace(), start
    for _ in range(limit):
        chosen = next_click(truth, shown)
        if chosen is None:
            trace.ious.append(1.0)
            break
        shown = np.asarray(click(chosen), bool)
        trace.ious.append(iou(truth, shown))
        if trace.ious[-1] >= stop_at and len(trace.ious) >= min_clicks:
            break
    return trace


def summarize_traces(traces: Sequence[ClickTrace], limit: int = MAX_CLICKS) -> dict[str, float]:
    """NoC@85 and NoC@90 (mean clicks, at most ``limit``) and the mean IoU after 1, 3 and 5 clicks."""
    summary = {f"noc{round(t * 100)}": float(np.mean([tr.clicks_to(t, limit) for tr in traces]))
               for t in IOU_TARGETS}
    summary.update({f"iou@{n}": float(np.mean([tr.iou_after(n) for tr in traces])) for n in (1, 3, 5)})
    summary["images"] = len(traces)
    return summary
