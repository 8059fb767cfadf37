"""A stand-in fine-tune engine for the widget tests (no training, instant)."""
from __future__ import annotations


def fake_engine(tiny_model, verdict="better", saved=True, during_save=lambda: None):
    """A stand-in for ``finetune_steps``: a few reports, then (if ``saved``) a new version of tiny-2d."""
    from dataclasses import replace

    from napari_lgms.training.engine import TrainProgress
    from napari_lgms.training.finetuning import FinetuneResult
    from napari_lgms.zoo import save_model, user_model_dir

    def finetune_steps(model, *, corrections=None, unlabelled=None, time_budget=None, steps=None, **options):
        fake_engine.calls.append({"model": model, "unlabelled": unlabelled, "time_budget": time_budget})
        for step in range(1, 4):
            yield TrainProgress(step, 3, 1, 0, 1.0 / step, 1e-3, 0.01 * step, None,
                                {"dice": 0.5} if step == 3 else None, "train")
        card_path = None
        if saved:
            loaded = tiny_model(spatial_dims=2, name="tiny-2d-ft-20261205-120000",
                                lineage={"parent": "tiny-2d"})
            card_path = user_model_dir() / f"{loaded.card.name}.json"
            yield TrainProgress(3, 3, 1, 0, None, 0.0, 0.05, 0.0, None, "saving", output=str(card_path))
            card_path = save_model(loaded.network, replace(loaded.card), user_model_dir())
            during_save()
            yield TrainProgress(3, 3, 1, 0, None, 0.0, 0.06, 0.0, None, "done")
        return FinetuneResult(card_path, "tiny-2d-ft-20261205-120000" if saved else "tiny-2d", {"dice": 0.5},
                              {"dice": 0.6 if verdict == "better" else 0.5}, 3, 0.06, "",
                              user_model_dir(), verdict=verdict, saved=saved)

    fake_engine.calls = []
    return finetune_steps
