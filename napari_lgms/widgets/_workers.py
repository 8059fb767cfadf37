"""Run an engine generator in a napari thread worker: progress bar, throttling, Cancel.

The engines (inference, fine-tuning) are generators that yield progress
records and *return* their result. :func:`start_engine_task` runs one in a
napari ``GeneratorWorker`` so that:

* napari's activity dock shows a progress bar whose total follows the engine's
  ``Progress.total`` (set on the main thread, in the ``yielded`` handler);
* at most ~20 progress records per second cross to the main thread (a flood of
  signals from a thread makes napari's progress widget crash);
* Cancel works even between throttled yields: the engine gets a ``should_stop``
  callable, and the worker is asked to quit;
* every callback (``on_progress``, ``on_done``, ``on_error``, ``on_finished``)
  runs on the main thread, so it may touch layers; nothing else does;
* an engine's exception comes back as the worker's *result*, never through its
  ``errored`` signal: napari 0.9 connects to that signal a status callback that
  takes one argument too few, so every failure would also raise a TypeError in
  Qt's event loop.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Generator

from napari_lgms._generators import MIN_SECONDS_BETWEEN_YIELDS, throttled


class Failure:
    """What a worker returns instead of raising (see the module docstring)."""

    def __init__(self, error: BaseException):
        self.error = error


def returning_failures(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` returning a :class:`Failure` where it would raise an Exception."""

    def guarded(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - handed to the caller's failure handler
            return Failure(error)

    return guarded


class EngineTask:
    """A started worker with its stop flag; ``cancel()`` is safe to call any time, from any thread
    (it only raises flags: the engine's ``should_stop`` and the worker's quit request)."""

    def __init__(self, worker, stop_event: threading.Event):
        self.worker = worker
        self._stop = stop_event
        self.finished = False

    def cancel(self) -> None:
        self._stop.set()
        self.worker.quit()


def progress_fields(record: Any) -> tuple[int, int, str]:
    """(done, total, message) from an engine progress record, whatever its exact class."""
    done = int(getattr(record, "done", getattr(record, "step", 0)) or 0)
    total = int(getattr(record, "total", getattr(record, "total_steps", 0)) or 0)
    message = str(getattr(record, "message", "") or "")
    return done, total, message


def start_engine_task(
    make_steps: Callable[[Callable[[], bool]], Generator],
    *,
    description: str,
    on_progress: Callable[[Any], None] | None = None,
    on_done: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finished: Callable[[bool], None] | None = None,
    min_interval: float = MIN_SECONDS_BETWEEN_YIELDS,
    always: Callable[[Any], bool] = lambda item: False,
) -> EngineTask:
    """Start ``make_steps(should_stop)`` (an engine generator) in a napari thread worker.

    ``on_done(result)`` gets the generator's return value unless cancelled (or
    the engine returned None); ``on_error(exception)`` gets what it raised;
    ``on_finished(cancelled)`` always comes last. All on the main thread.
    ``always(record)``: records that must reach ``on_progress`` despite throttling.
    """
    from napari.qt.threading import create_worker

    stop = threading.Event()

    def run():
        try:
            steps = make_steps(stop.is_set)
            return (yield from throttled(steps, min_interval, stop.is_set, always))
        except Exception as error:  # noqa: BLE001 - handed to on_error on the main thread
            return Failure(error)

    run.__name__ = run.__qualname__ = description  # how napari's close dialog names a running task
    worker = create_worker(run, _progress={"desc": description}, _ignore_errors=True,
                           _start_thread=False)
    task = EngineTask(worker, stop)
    progress_bar = getattr(worker, "pbar", None)

    def show_progress(record):
        if progress_bar is not None:
            done, total, message = progress_fields(record)
            if total > 0 and progress_bar.total != total:
                progress_bar.total = total
            if done > progress_bar.n:
                progress_bar.update(done - progress_bar.n)
            if message:
                progress_bar.set_description(f"{description}: {message}")
        if on_progress is not None:
            on_progress(record)

    def returned(result):
        if isinstance(result, Failure):
            errored(result.error)
        elif result is not None and not stop.is_set() and on_done is not None:
            on_done(result)

    def errored(error):
        if on_error is not None:
            on_error(error)

    def finished():
        task.finished = True
        if on_finished is not None:
            on_finished(stop.is_set())

    worker.yielded.connect(show_progress)
    worker.returned.connect(returned)
    worker.finished.connect(finished)
    worker.start()
    return task


def one_line(error: BaseException) -> str:
    """The message a user sees: the first line of ``str(error)``, or the class name."""
    text = str(error).strip().splitlines()
    if isinstance(error, KeyError) and text:
        return text[0].strip("'\"")
    return text[0] if text else type(error).__name__


def notify_error(error: BaseException) -> None:
    """Show a one-line napari error notification (no traceback for user errors)."""
    from napari.utils.notifications import show_error

    show_error(one_line(error))
