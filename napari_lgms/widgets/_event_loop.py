"""How responsive the GUI stays: the longest gap between ticks of a fast QTimer.

A ``QTimer`` firing every few milliseconds runs on the main thread; whenever
something holds that thread (a heavy import, a model load, a big layer
update), the next tick comes late. ``EventLoopGapMeter`` records the gaps
between ticks, so a test or a script can say how long napari froze while,
say, a first segmentation ran. It measures; it decides nothing.
"""
from __future__ import annotations

import time


class EventLoopGapMeter:
    """Start it, run the work (processing Qt events), stop it; ``longest`` is the worst gap in seconds.

    ``note(label)`` marks a moment of main-thread work inside the run (say, a layer added by a
    worker's result handler), so a report can tell which gap it fell in.
    """

    def __init__(self, interval_ms: int = 4):
        from qtpy.QtCore import QTimer

        self.interval = interval_ms / 1000.0
        self.gaps: list[tuple[float, float]] = []  # (when, gap) for gaps over 20 ms
        self.notes: list[tuple[str, float]] = []  # (label, when)
        self.longest = 0.0
        self.ticks = 0
        self._last = None
        self._timer = QTimer()
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            gap = now - self._last
            self.longest = max(self.longest, gap)
            if gap > 0.02:
                self.gaps.append((now - self._start, gap))
        self._last = now
        self.ticks += 1

    def start(self) -> "EventLoopGapMeter":
        self._start = time.perf_counter()
        self._last = self._start  # a call that blocks right after start() counts
        self._timer.start()
        return self

    def stop(self) -> float:
        self._timer.stop()
        return self.longest

    def note(self, label: str) -> None:
        """Record that ``label`` happened now (call it from the main thread, say from a layer event)."""
        self.notes.append((label, time.perf_counter() - self._start))

    def gap_around(self, label: str) -> float:
        """The gap (seconds, 0 when under 20 ms) in which the note ``label`` was taken."""
        times = [when for name, when in self.notes if name == label]
        return max((gap for end, gap in self.gaps for when in times if end - gap <= when <= end), default=0.0)

    def report(self) -> str:
        worst = sorted(self.gaps, key=lambda g: -g[1])[:5]
        listed = ", ".join(f"{gap * 1000:.0f} ms at {when:.2f} s" for when, gap in worst)
        timed = "".join(f"; {label} at {when:.2f} s, in a {self.gap_around(label) * 1000:.0f} ms gap"
                        for label, when in self.notes)
        return (f"longest event-loop gap {self.longest * 1000:.0f} ms over {self.ticks} ticks "
                f"({listed or 'none over 20 ms'}){timed}")
