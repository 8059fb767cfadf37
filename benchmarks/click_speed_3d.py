"""Milliseconds per click of a 3D click model on 2 CPU threads, before one is trained (issue #20).

    NAPARI_LGMS_DATA=../shared/datasets python benchmarks/click_speed_3d.py

The hippocampus model widened with the prompt channels (``promptable_from``; its weights do not
change the time) segments the first hippocampus part of the validation volumes
(``training/splits/msd-hippocampus.json``) with the simulated user's clicks, through
:class:`napari_lgms.clicks.ClickSession`, end to end per click.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from adaptation import Case, load_domain, parse_data_options  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=os.environ.get("NAPARI_LGMS_DATA"))
    parser.add_argument("--volumes", type=int, default=6)
    parser.add_argument("--clicks", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    options = parse_data_options(parser, argv)

    from napari_lgms import load_model
    from napari_lgms.clicks import ClickSession
    from napari_lgms.clicks.network import promptable_from
    from napari_lgms.clicks.simulate import next_click
    from napari_lgms.training.data import read_split
    from napari_lgms.zoo import LoadedModel

    parent = load_model("lgmsnet3d-hippocampus", "cpu")
    network, card = promptable_from(parent.network, parent.card)
    model = LoadedModel(network.eval(), card, None, "user")
    split = read_split(Path(__file__).parents[1] / "training" / "splits" / "msd-hippocampus.json")
    items = load_domain(Case(parent.card.name, "msd-hippocampus", "volumes"), options.data,
                        split["val"][:options.volumes])
    first, later = [], []
    for item in items:
        truth = item.mask == 1
        session, mask = ClickSession(item.image, model, channel_axis=None), np.zeros_like(truth)
        for index in range(options.clicks):
            click = next_click(truth, mask)
            began = time.perf_counter()
            mask = session.add_click(click.position, click.positive)
            (first if index == 0 else later).append(time.perf_counter() - began)
        print(f"  {item.name} {item.image.shape}: {[round(1000 * t) for t in (first[-1:] + later[1 - options.clicks:])]} ms")
    print(f"first click: median {1000 * np.median(first):.0f} ms; later clicks: median {1000 * np.median(later):.0f} ms, "
          f"p90 {1000 * np.percentile(later, 90):.0f} ms ({len(items)} volumes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
