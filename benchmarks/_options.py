"""The options the side-by-side timing scripts share: threads, repeats, a JSON copy of the rows."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def parse_options(doc: str, add_arguments=None) -> argparse.Namespace:
    """``--threads`` (also applied to torch), ``--repeats`` and ``--output``; ``doc``: the script's
    docstring; ``add_arguments(parser)``: the script's own options."""
    import torch

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, help="also write the rows as JSON")
    if add_arguments is not None:
        add_arguments(parser)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    return options


def cpu_info() -> dict:
    """``name`` (the model name), ``family`` and ``model`` (AMD family 25: Zen 3/4, 26: Zen 5) and the
    ``flags`` of the first CPU in /proc/cpuinfo; the platform's processor name where there is none."""
    import platform

    fields: dict = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
            if key.strip() == "flags":
                break
    except OSError:
        pass
    return {"name": fields.get("model name") or platform.processor() or "unknown",
            "family": fields.get("cpu family"), "model": fields.get("model"),
            "flags": set(fields.get("flags", "").split())}


def write_rows(path: Path | None, payload: dict) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (nothing when ``path`` is None)."""
    if path is not None:
        from napari_lgms._atomic import atomic_write_text

        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
