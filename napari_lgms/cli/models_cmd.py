"""``napari-lgms models``: one row per available model."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "models",
        help="list available models",
        description="List every model: the user's fine-tuned ones, the shipped ones and the "
        "untrained architectures, with their parameter count and where the weights come from.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def model_rows() -> tuple[list[dict], list[str]]:
    """One dict per model with its exact parameter count, and one line per card that was left out.

    Parameters are counted on torch's meta device: no weights are allocated.
    """
    from napari_lgms.models.registry import get_model_config
    from napari_lgms.zoo import ModelLoadError, scan_models
    from napari_lgms.zoo.store import parameter_count

    entries, problems = scan_models()
    rows = []
    for entry in entries:
        arguments = entry.card.arguments if entry.card else get_model_config(entry.name).arguments
        try:
            parameters = parameter_count(entry.architecture, arguments, entry.card_path or entry.name)
        except ModelLoadError as error:
            problems.append(str(error))
            continue
        rows.append({
            "name": entry.name,
            "architecture": entry.architecture,
            "dims": f"{entry.spatial_dims}D",
            "in_channels": entry.in_channels,
            "classes": entry.num_classes,
            "parameters": parameters,
            "weights": entry.origin,
            "path": str(entry.card_path) if entry.card_path else "",
        })
    return rows, problems


def format_table(rows: list[dict]) -> str:
    headers = ["name", "architecture", "dims", "in_channels", "classes", "parameters", "weights"]
    cells = [[f"{row[h]:,}" if h == "parameters" else str(row[h]) for h in headers] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    right = {"in_channels", "classes", "parameters"}
    lines = []
    for line in [headers] + cells:
        lines.append("  ".join(
            text.rjust(w) if h in right else text.ljust(w) for text, w, h in zip(line, widths, headers)
        ).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rows, problems = model_rows()
    for problem in problems:
        print(f"napari-lgms models: skipped {problem}", file=sys.stderr)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0
