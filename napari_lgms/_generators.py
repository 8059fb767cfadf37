"""Driving the engines' step generators to the end."""
from __future__ import annotations

from typing import Any, Callable, Generator


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
