"""The session log: one JSON line per widget run, next to the corrections store.

``session-log.jsonl`` in the project's store folder records every segmentation,
saved correction, fine-tune and roll back (when, what, with which model, on
which image, with which settings, how long, what came out), so a user can tell
later which model made which mask. Each record is one ``write`` of one line to a
file opened for appending, then flushed: records never interleave or tear.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

LOG_NAME = "session-log.jsonl"


def log_path(store_root) -> Path:
    return Path(store_root) / LOG_NAME


def append_record(store_root, action: str, *, model: str | None = None, image: str | None = None,
                  shape=None, settings: dict | None = None, seconds: float | None = None,
                  result=None) -> Path | None:
    """Append one record; returns the log's path (None without a store folder). Never raises."""
    if store_root is None:
        return None
    record = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "action": action,
        "model": model,
        "image": image,
        "shape": [int(s) for s in shape] if shape is not None else None,
        "settings": settings or {},
        "seconds": round(float(seconds), 3) if seconds is not None else None,
        "result": result,
    }
    line = json.dumps(record, default=str, ensure_ascii=False).replace("\n", " ") + "\n"
    path = log_path(store_root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as log:
            log.write(line)
            log.flush()
    except OSError as error:
        from napari_lgms.widgets._workers import notify_error

        notify_error(OSError(f"cannot write the session log {path} ({error})"))
        return None
    return path


def read_records(store_root) -> list[dict]:
    path = log_path(store_root)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
