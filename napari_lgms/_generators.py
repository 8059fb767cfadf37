"""Driving the engines' step generators: to the end, and throttled.

The engines yield a report after every step; their consumers decide how many to show. The one
throttle is :func:`throttled` (napari workers, the command line's progress lines).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Generator

MIN_SECONDS_BETWEEN_YIELDS = 0.05  # at most 20 progress updates per second


def run_to_end(steps: Generator[Any, None, Any], on_progress: Callable[[Any], None] | None = None) -> Any:
    """Exhaust ``steps``, passing each yielded report to ``on_progress``; return the generator's value."""
    while True:
        try:
            progress = next(steps)
        except StopIteration as finished:
            return finished.value
        if on_progress is not None:
            on_progress(progress)


def every(seconds: float, clock: Callable[[], float]) -> Callable[[], bool]:
    """A gate that opens at most once per ``seconds`` (for throttled console lines)."""
    last = [float("-inf")]

    def ready() -> bool:
        now = clock()
        if now - last[0] < seconds:
            return False
        last[0] = now
        return True

    return ready


def throttled(steps: Generator, min_interval: float = MIN_SECONDS_BETWEEN_YIELDS,
              should_stop: Callable[[], bool] = lambda: False,
              always: Callable[[Any], bool] = lambda item: False) -> Generator:
    """Re-yield ``steps``'s items, at most one per ``min_interval`` seconds; return its return value.

    The first item and the last item before the end are always passed on, so a
    progress bar starts and ends at the right place, and so is every item for
    which ``always(item)`` is true (e.g. a validation score for the plot).
    When ``should_stop()`` becomes true, ``steps`` is closed (it never resumes:
    nothing after its current yield runs) and None is returned.
    """
    last_sent = 0.0
    pending = None
    while True:
        if should_stop():
            steps.close()
            return None
        try:
            item = next(steps)
        except StopIteration as stop:
            if pending is not None:
                yield pending
            return stop.value
        now = time.monotonic()
        if always(item):
            if pending is not None:
                yield pending
            last_sent, pending = now, None
            yield item
        elif now - last_sent >= min_interval:
            last_sent = now
            pending = None
            yield item
        else:
            pending = item
