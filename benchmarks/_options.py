"""The options the side-by-side timing scripts share: threads, repeats, a JSON copy of the rows."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def parse_options(doc: str) -> argparse.Namespace:
    """``--threads`` (also applied to torch), ``--repeats`` and ``--output``; ``doc``: the script's docstring."""
    import torch

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, help="also write the rows as JSON")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    return options


def write_rows(path: Path | None, payload: dict) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (nothing when ``path`` is None)."""
    if path is not None:
        from napari_lgms._atomic import atomic_write_text

        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
