"""Loss and validation curves as a PNG (matplotlib Agg); skipped when matplotlib is missing."""
from __future__ import annotations

from pathlib import Path


def plot_history(history: list[dict], path: str | Path) -> Path | None:
    """One panel of losses, one of validation metrics, per epoch; returns the path or None."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError:
        return None
    from napari_lgms._atomic import atomic_write_with

    rows = [r for r in history if "epoch" in r]
    if not rows:
        return None
    figure = Figure(figsize=(9, 3.5), dpi=100)
    loss_axes, metric_axes = figure.subplots(1, 2)
    epochs = [r["epoch"] for r in rows]
    loss_axes.plot(epochs, [r.get("train_loss") for r in rows], label="train loss")
    validated = [r for r in rows if r.get("val")]
    if validated:
        loss_axes.plot([r["epoch"] for r in validated], [r["val"].get("loss") for r in validated], label="val loss")
        for key in validated[-1]["val"]:
            if key != "loss":
                metric_axes.plot([r["epoch"] for r in validated], [r["val"].get(key) for r in validated], label=key)
    loss_axes.set_xlabel("epoch")
    loss_axes.legend()
    metric_axes.set_xlabel("epoch")
    metric_axes.set_ylim(0, 1)
    metric_axes.set_title("validation")
    if validated:
        metric_axes.legend(fontsize="small")
    figure.tight_layout()
    path = Path(path)
    atomic_write_with(path, lambda tmp: figure.savefig(tmp, format="png"))
    return path
