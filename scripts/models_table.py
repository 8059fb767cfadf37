"""The README's table of shipped models, generated from their cards (``resources/models/*.json``).

    python scripts/models_table.py           # print the markdown table
    python scripts/models_table.py --write   # replace the table in README.md between the markers

One validation figure per model, as users run it: the card's engine score
(``metrics.engine``: ``napari-lgms evaluate`` with the card's default test-time
augmentation), IoU for one foreground class, mean Dice over the classes otherwise,
with its split; a card without engine scores (the demo model) gives its training
loop's validation. ``tests/test_shipped_models.py`` checks that README.md holds
exactly this output.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARDS = ROOT / "resources" / "models"
README = ROOT / "README.md"
START, END = "<!-- models-table:start -->", "<!-- models-table:end -->"
HEADER = ("| model | network | input → classes | trained on | validation (as users run it) |\n"
          "|---|---|---|---|---|")
CHANNELS = {1: "grey", 3: "RGB"}


def network_cell(card: dict) -> str:
    dims = card["arguments"].get("spatial_dims", 2)
    return f"`{card['architecture']}` {dims}D"


def input_cell(card: dict) -> str:
    from napari_lgms.zoo import ModelCard

    contract = card["input"]
    image_channels = ModelCard.from_dict(card).image_channels  # the arguments' channels less the prompt's
    channels = CHANNELS.get(image_channels, f"{image_channels} channels")
    patch = "x".join(str(size) for size in contract["patch_size"])
    if contract["mode"] == "resize":
        how = f"resized to {patch}"
    else:
        how = f"{patch} windows"
    if contract.get("spacing"):
        how += " at " + "x".join(f"{s:g}" for s in contract["spacing"]) + " mm"
    if card.get("prompt"):
        channels += " + clicks"
    return f"{channels}, {how} → {', '.join(card['class_names'][1:])}"


def validation_cell(card: dict) -> str:
    metrics = card["metrics"]
    if "clicks" in metrics:
        clicks = metrics["clicks"]
        split = metrics["split"].removeprefix("validation: ")
        return (f"NoC@85 {clicks['noc85']:.1f}, IoU {clicks['iou@3']:.3f} after 3 clicks (simulated user) "
                f"on {split}")
    engine = metrics.get("engine")
    scores = engine or metrics
    if card["arguments"]["num_classes"] == 1:
        figure = f"IoU {scores['iou']:.3f}"
    else:
        figure = f"mean Dice {scores.get('mean_class_dice', scores['dice']):.3f}"
    passes = (engine or {}).get("test_time_augmentation") or card["output"].get("test_time_augmentation", "none")
    passes = "one pass" if passes == "none" else passes
    if engine:
        items = "volumes" if card["arguments"].get("spatial_dims", 2) == 3 else "images"
        split = f"{engine['images']} {items} of `{engine['split'].split(':')[0]}`"
        return f"{figure} ({passes}) on {split}"
    return f"{figure} ({passes}, training loop); split: {metrics['split'].removeprefix('validation: ')}"


def row(card: dict) -> str:
    training = card["training"]
    cells = (f"`{card['name']}`", network_cell(card), input_cell(card),
             f"{training['data']}. Terms: {training['terms']}", validation_cell(card))
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def table(cards_dir: Path = CARDS) -> str:
    """The markdown table, one row per card, sorted by name."""
    cards = [json.loads(path.read_text(encoding="utf-8")) for path in sorted(cards_dir.glob("*.json"))]
    return "\n".join([HEADER, *(row(card) for card in cards)])


def readme_table(text: str) -> str:
    """The text between the markers in ``text`` (without the surrounding blank lines)."""
    if text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"README.md must hold {START} and {END} once each")
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n")


def write(readme: Path = README) -> bool:
    """Replace the README's table; True when it changed."""
    text = readme.read_text(encoding="utf-8")
    old = readme_table(text)
    if old == table():
        return False
    head, rest = text.split(START, 1)
    readme.write_text(f"{head}{START}\n{table()}\n{END}{rest.split(END, 1)[1]}", encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the table in README.md")
    args = parser.parse_args(argv)
    if args.write:
        print("README.md updated" if write() else "README.md already up to date")
    else:
        print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
