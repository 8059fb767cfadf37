"""Fine-tuning from corrections: an honest verdict from every correction, nothing saved unless better."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

SHAPE = (32, 32)
RESIZE_TO_32 = {"patch_size": [32, 32], "size_divisor": 4,
                "mode": "resize", "spacing": None}


def ellipse(rng: np.random.Generator, shape=SHAPE, low=0.3, high=0.7) -> np.ndarray:
    """A filled ellipse (uint8 0/1) centred in [low, high] of each axis."""
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    centre = [rng.uniform(low, high) * s for s in shape]
    radii = [rng.uniform(0.15, 0.25) * s for s in shape]
    return (sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0).astype(np.uint8)


def phantom(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipse in noise: (image float32, mask uint8)."""
    mask = ellipse(rng)
    return np.clip(rng.normal(60, 12, SHAPE) + 90 * mask, 0, 255).astype(np.float32), mask


def store_of(root, count: int, seed: int = 0, random_labels: bool = False):
    """A corrections store of ``count`` phantoms the parent "missed" (empty predictions); with
    ``random_labels`` each mask is an ellipse anywhere, unrelated to its image."""
    from napari_lgms.corrections import CorrectionsStore

    store = CorrectionsStore(root)
    rng = np.random.default_rng(seed)
    for index in range(count):
        image, mask = phantom(rng)
        if random_labels:
            mask = ellipse(rng, low=0.1, high=0.9)
        store.save(f"img{index}", image, mask, np.zeros_like(mask), model="tiny-test", geometry={"axes": "YX"})
    return root


def saved_parent(tiny_model, folder):
    """A tiny model (resize to 32x32) saved in ``folder`` and loaded from there."""
    from napari_lgms.zoo import load_model, save_model

    loaded = tiny_model(input=RESIZE_TO_32)
    return load_model(save_model(loaded.network, loaded.card, folder))


def with_batch_norm(tiny_model, folder):
    """A small ESDMR-Net (it has batch norm) with the tiny model's card, saved in ``folder`` and loaded."""
    from dataclasses import replace

    from napari_lgms.models.registry import build_network
    from napari_lgms.zoo import load_model, save_model

    arguments = {"in_channels": 1, "num_classes": 1, "spatial_dims": 2, "widths": [4, 4, 8, 8, 8]}
    card = replace(tiny_model(input=RESIZE_TO_32).card, architecture="esdmrnet", arguments=arguments)
    return load_model(save_model(build_network("esdmrnet", arguments).eval(), card, folder))


@pytest.fixture
def parent(tiny_model, tmp_path):
    """A saved tiny model (resize to 32x32) the tests fine-tune."""
    return saved_parent(tiny_model, tmp_path / "parent")


def run(generator):
    reports = []
    while True:
        try:
            reports.append(next(generator))
        except StopIteration as done:
            return done.value, reports


def test_learnable_corrections_give_a_better_model_judged_on_every_correction(parent, tmp_path):
    from napari_lgms.training import finetune_steps
    from napari_lgms.zoo import load_model, sha256_of

    store = store_of(tmp_path / "store", 8)
    result, reports = run(finetune_steps(parent, corrections=store, output=tmp_path / "out", steps=120, lr=0.02,
                                         batch_size=4, device="cpu", seed=1))
    assert result.verdict == "better" and result.saved
    assert {"loading", "train", "validate", "saving", "done"} <= {r.phase for r in reports}
    assert result.metrics_after["iou"] > result.metrics_before["iou"] + 0.1
    evidence = result.evidence
    assert evidence["held_out"] == 8 and len(evidence["differences"]) == 8
    assert sorted(row["name"] for row in evidence["per_correction"]) == [f"img{i}" for i in range(8)]
    failed = sum(row["before"] < 0.5 for row in evidence["per_correction"])
    assert evidence["parent_failed"] == failed, "the parent's failures among the checked corrections"
    card = json.loads(result.card_path.read_text())
    assert card["name"] == result.name and card["name"].startswith("tiny-test-ft-") and card["version"] == "2"
    lineage = card["lineage"]
    assert lineage["verdict"] == "better" and lineage["parent"] == "tiny-test"
    assert lineage["parent_sha256"] == sha256_of(parent.path.with_suffix(".safetensors"))
    assert lineage["data"]["kind"] == "corrections" and len(lineage["data"]["keys"]) == 8
    assert load_model(result.card_path).card.name == card["name"]


def refused_after_better_checks(parent, tmp_path):
    """A run on learnable corrections whose checked models gain, which must still save nothing."""
    from napari_lgms.training import finetuning

    result = finetuning.finetune(parent, corrections=store_of(tmp_path / "store", 8), output=tmp_path / "out",
                                 steps=120, lr=0.02, batch_size=4, device="cpu", seed=1)
    assert result.evidence["mean_difference"] > 0.1, "the checked models were better overall"
    assert result.verdict == "no evidence" and not result.saved and list((tmp_path / "out").iterdir()) == []
    return result


def test_a_check_better_overall_but_worse_where_the_parent_was_right_saves_nothing(parent, tmp_path, monkeypatch):
    from napari_lgms.training import finetuning

    monkeypatch.setattr(finetuning, "kept_change", lambda rows: (-0.05, -0.2, 3))
    result = refused_after_better_checks(parent, tmp_path)
    assert result.evidence["hurt_successes"] and result.evidence["successes"] == 3
    assert result.evidence["weighed_change"] == -0.05
    assert "worse on the 3 the current model had right (-20.0 IoU points), by more than" in result.message


def test_a_check_refused_for_what_it_lost_on_failures_says_so(parent, tmp_path, monkeypatch):
    from napari_lgms.training import finetuning

    monkeypatch.setattr(finetuning, "kept_change", lambda rows: (-0.05, 0.02, 3))  # the successes held
    result = refused_after_better_checks(parent, tmp_path)
    failures = [row["after"] - row["before"] for row in result.evidence["per_correction"] if row["before"] < 0.5]
    assert result.evidence["failures"] == len(failures) > 0
    assert result.evidence["failures_change"] == pytest.approx(np.mean(failures))
    assert f"worse on the {len(failures)} the current model had failed on (" in result.message
    assert "had right (" not in result.message


def test_a_final_model_that_diverged_after_a_better_check_is_not_saved(parent, tmp_path, monkeypatch):
    """The check judges models trained on half the corrections; the candidate trains on after it."""
    from napari_lgms.training import finetuning

    adapt_steps = finetuning.adapt_steps

    def diverging(context, samples, **options):
        network, taken = yield from adapt_steps(context, samples, **options)
        if options["label"] == "final model":
            with torch.no_grad():
                next(network.parameters()).fill_(float("nan"))
        return network, taken

    monkeypatch.setattr(finetuning, "adapt_steps", diverging)
    result = refused_after_better_checks(parent, tmp_path)
    assert result.evidence["unfit"] and result.evidence["candidate_fit"] == 0.0
    assert "fits your corrections worse" in result.message


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_labels_never_give_a_better_model(parent, tmp_path, seed):
    from napari_lgms.training import finetune

    store = store_of(tmp_path / "store", 8, seed=seed, random_labels=True)
    result = finetune(parent, corrections=store, output=tmp_path / "out", steps=120, lr=0.02, device="cpu",
                      seed=seed)
    assert result.verdict != "better"
    assert not result.saved and result.card_path is None and result.name == "tiny-test"
    assert list((tmp_path / "out").iterdir()) == []
    assert result.candidate is not None  # the run's model, for callers who want to look at it
    if result.verdict == "no evidence":
        assert "of them better" in result.message  # how mixed the held-out changes were


def test_one_correction_is_no_evidence_and_saves_nothing(parent, tmp_path):
    from napari_lgms.training import finetune

    result = finetune(parent, corrections=store_of(tmp_path / "store", 1), output=tmp_path / "out", steps=5,
                      device="cpu")
    assert result.verdict == "no evidence" and not result.saved
    assert "1 correction cannot show" in result.message and list((tmp_path / "out").iterdir()) == []


def test_fewer_than_five_corrections_are_never_evidence_however_consistent(parent, tmp_path):
    from napari_lgms.training import finetune

    result = finetune(parent, corrections=store_of(tmp_path / "store", 4), output=tmp_path / "out", steps=120,
                      lr=0.02, batch_size=4, device="cpu", seed=1)
    assert result.evidence["held_out"] == 4 and min(result.evidence["differences"]) > 0.05  # each one gained
    assert result.verdict == "no evidence" and not result.saved
    assert "at least 5" in result.message and list((tmp_path / "out").iterdir()) == []


def test_too_few_corrections_are_refused_before_training_when_a_model_is_wanted(parent, tmp_path, capsys):
    from napari_lgms.cli import main
    from napari_lgms.errors import InputError
    from napari_lgms.training import finetune_steps

    store = store_of(tmp_path / "store", 3)
    steps = finetune_steps(parent, corrections=store, output=tmp_path / "out", steps=5, device="cpu",
                           require_evidence=True)
    with pytest.raises(InputError, match="3 corrections: .* at least 5 .* save 2 more"):
        for report in steps:
            assert report.phase == "loading", "nothing trained"
    assert main(["finetune", "--model", str(parent.path), "--corrections", str(store), "--steps", "5",
                 "--output", str(tmp_path / "out"), "--device", "cpu"]) == 2
    assert "save 2 more" in capsys.readouterr().err and list((tmp_path / "out").iterdir()) == []


def test_unlabelled_images_change_what_is_learned(parent, tmp_path):
    from napari_lgms.io import write_mask
    from napari_lgms.training import finetune

    store = store_of(tmp_path / "store", 4)
    rng = np.random.default_rng(5)
    arrays = [phantom(rng)[0] for _ in range(3)]
    options = dict(corrections=store, output=tmp_path / "out", steps=6, lr=0.01, device="cpu")
    plain = finetune(parent, **options)
    with_arrays = finetune(parent, unlabelled=arrays, **options)
    for index, array in enumerate(arrays):
        write_mask(array.astype(np.uint8), tmp_path / "unlabelled" / f"u{index}.png")
    with_folder = finetune(parent, unlabelled=tmp_path / "unlabelled", **options)
    weights = [dict(r.candidate.network.state_dict()) for r in (plain, with_arrays, with_folder)]
    assert not all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert with_arrays.candidate.card.training["finetune"]["data"]["unlabelled"] == 3
    assert with_folder.candidate.card.training["finetune"]["data"]["unlabelled"] == 3


def test_the_preparation_before_training_says_what_it_is_doing(tiny_model, tmp_path):
    """On a slow CPU the parent's scores and predictions take a quarter of the budget."""
    from napari_lgms.training import finetune_steps

    parent = with_batch_norm(tiny_model, tmp_path / "parent")
    rng = np.random.default_rng(6)
    _, reports = run(finetune_steps(parent, corrections=store_of(tmp_path / "store", 4), steps=2, device="cpu",
                                    unlabelled=[phantom(rng)[0] for _ in range(3)], output=tmp_path / "out"))
    first_step = next(i for i, r in enumerate(reports) if r.phase == "train")
    said = [r.message for r in reports[:first_step]]
    assert "scoring the model on your corrections: 4/4" in said
    assert "re-estimating normalisation: 7/7 images" in said
    assert all(r.phase == "loading" for r in reports[:first_step])


def test_the_time_budget_covers_the_whole_run(parent, tmp_path, monkeypatch):
    import itertools
    import time

    from napari_lgms.training import finetune

    ticks = itertools.count(0.0, 0.05)  # a clock that moves 50 ms per reading, however fast the machine
    monkeypatch.setattr(time, "monotonic", lambda: next(ticks))
    store = store_of(tmp_path / "store", 6)
    result = finetune(parent, corrections=store, output=tmp_path / "out", time_budget=20.0, device="cpu")
    assert result.steps > 0 and result.evidence["held_out"] == 6
    assert result.elapsed <= 20.0


def test_every_run_eases_in_so_a_short_run_cannot_wreck_the_parent(parent, tmp_path):
    """A few full-rate Adam steps move every weight of a trained network by the learning rate; the
    rate therefore rises over the first 30 % of every run (measured: issue #19, k = 3 in 30 s)."""
    from napari_lgms.training import finetune_steps

    result, reports = run(finetune_steps(parent, corrections=store_of(tmp_path / "store", 4), steps=20, lr=0.01,
                                         output=tmp_path / "out", device="cpu"))
    rates = [r.lr for r in reports if r.phase == "train" and r.message == "final model"]
    assert len(rates) == 20
    peak = rates.index(max(rates))
    assert rates[0] < 0.05 * max(rates) and peak >= 5
    assert all(a < b for a, b in zip(rates[:peak], rates[1:peak + 1])), "rises to the peak"
    assert max(rates) == pytest.approx(0.01, rel=0.05)


def test_the_candidate_continues_the_last_checked_model_on_every_correction(parent, tmp_path, monkeypatch):
    """Measured on a new modality (issue #19): started from the parent, it gained 4-9 IoU points less."""
    from napari_lgms.training import finetuning

    runs = []
    adapt_steps = finetuning.adapt_steps

    def recorded(context, samples, **options):
        network, taken = yield from adapt_steps(context, samples, **options)
        runs.append((len(samples), options.get("start"), network))
        return network, taken

    monkeypatch.setattr(finetuning, "adapt_steps", recorded)
    result = finetuning.finetune(parent, corrections=store_of(tmp_path / "store", 6), steps=4, lr=0.01,
                                 output=tmp_path / "out", device="cpu")
    (_, first_start, _), (_, second_start, checked), (count, start, candidate) = runs
    assert first_start is None and second_start is None, "each checked model starts from the parent"
    assert count == 6 and start is checked and candidate is result.candidate.network
    assert candidate is not checked


def test_tail_average_is_the_mean_of_the_weights_from_its_start_on():
    from napari_lgms.training.adaptation import TailAverage

    network = torch.nn.Linear(3, 2)
    frozen = network.bias.detach().clone()
    network.bias.requires_grad_(False)
    average, seen = TailAverage(network, start=0.5), []
    for step, progress in enumerate((0.0, 0.25, 0.5, 0.75, 0.9)):
        with torch.no_grad():
            network.weight.fill_(float(step))
        if progress >= 0.5:
            seen.append(float(step))
        average.update(progress)
    assert average.apply() == 3
    assert torch.allclose(network.weight, torch.full((2, 3), float(np.mean(seen))))
    assert torch.equal(network.bias, frozen), "frozen parameters are left alone"

    off = TailAverage(network, start=1.0)
    before = network.weight.detach().clone()
    with torch.no_grad():
        network.weight.add_(1.0)
    off.update(0.99)
    assert off.apply() == 0 and torch.equal(network.weight, before + 1.0)


def test_parent_anchor_blends_towards_the_parent():
    from napari_lgms.training.adaptation import ParentAnchor

    network = torch.nn.Linear(3, 2)
    parent_weight = network.weight.detach().clone()
    network.bias.requires_grad_(False)
    anchor = ParentAnchor(network, strength=0.0)
    with torch.no_grad():
        network.weight.add_(2.0)
        network.bias.add_(5.0)
    frozen = network.bias.detach().clone()
    anchor.blend(0.0)
    assert torch.allclose(network.weight, parent_weight + 2.0), "share 0 changes nothing"
    anchor.blend(0.25)
    assert torch.allclose(network.weight, parent_weight + 1.5)
    assert torch.equal(network.bias, frozen), "frozen parameters are left alone"
    anchor.blend(3.0)
    assert torch.allclose(network.weight, parent_weight), "a share above 1 is clipped: the parent's weights"


def test_every_run_mixes_in_the_parent_by_its_trust(parent, tmp_path, monkeypatch):
    from napari_lgms.training import adaptation, finetune

    shares = []
    monkeypatch.setattr(adaptation.ParentAnchor, "blend", lambda self, share: shares.append(share))
    result = finetune(parent, corrections=store_of(tmp_path / "store", 6), steps=4, output=tmp_path / "out",
                      device="cpu")
    trust, share = result.evidence["parent_trust"], result.candidate.card.training["finetune"]["settings"]
    assert share["parent_share"] > 0
    assert shares == pytest.approx([share["parent_share"] * trust] * 3), "both checks and the candidate"


def test_every_run_hands_back_its_averaged_weights(parent, tmp_path, monkeypatch):
    """Measured on the shifted scanner (issue #19): see benchmarks/README.md."""
    from napari_lgms.training import adaptation

    applied = []
    apply = adaptation.TailAverage.apply
    monkeypatch.setattr(adaptation.TailAverage, "apply", lambda self: applied.append(apply(self)) or applied[-1])
    from napari_lgms.training import finetune

    finetune(parent, corrections=store_of(tmp_path / "store", 6), steps=8, output=tmp_path / "out", device="cpu")
    assert applied == [2, 2, 4], "the checks (4 steps each) and the candidate average their last half"


def test_a_short_budget_prepares_fewer_unlabelled_images(parent, tmp_path, monkeypatch):
    import itertools
    import time

    from napari_lgms.training import finetune

    ticks = itertools.count(0.0, 0.05)
    monkeypatch.setattr(time, "monotonic", lambda: next(ticks))
    rng = np.random.default_rng(3)
    arrays = [phantom(rng)[0] for _ in range(12)]
    result = finetune(parent, corrections=store_of(tmp_path / "store", 4), unlabelled=arrays, time_budget=10.0,
                      output=tmp_path / "out", device="cpu")
    assert result.candidate.card.training["finetune"]["data"]["unlabelled"] == 5  # one per 2 s of budget


def test_a_cancelled_run_leaves_nothing_behind(parent, tmp_path):
    from napari_lgms.training import finetune

    store = store_of(tmp_path / "store", 6)
    reports = []

    def should_stop() -> bool:
        return bool(reports) and reports[-1].phase == "train" and reports[-1].step >= 3

    result = finetune(parent, corrections=store, output=tmp_path / "out", steps=1000, device="cpu",
                      should_stop=should_stop, on_progress=reports.append)
    assert not result.saved and result.verdict == "no evidence" and "stopped" in result.message
    assert 3 <= result.steps < 10 and list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("stage", ["loading your corrections", "loading unlabelled images",
                                   "scoring the model on your corrections", "re-estimating normalisation",
                                   "scoring the re-normalised model", "model predictions on unlabelled images"])
def test_a_run_stops_while_it_prepares_at_its_next_image(parent, tiny_model, tmp_path, stage):
    """On a slow CPU the preparation takes half a minute: Cancel must not wait for its end."""
    from napari_lgms.training import finetune

    rng = np.random.default_rng(4)
    reports = []

    def should_stop() -> bool:
        return any(r.message.startswith(stage) and r.message.split(": ")[1].split("/")[0] != "0" for r in reports)

    if "normalis" in stage:  # the tiny parent has no batch norm to re-estimate
        parent = with_batch_norm(tiny_model, tmp_path / "parent-bn")
    result = finetune(parent, corrections=store_of(tmp_path / "store", 6), output=tmp_path / "out",
                      unlabelled=[phantom(rng)[0] for _ in range(9)], steps=50, device="cpu",
                      should_stop=should_stop, on_progress=reports.append)
    in_stage = [r.message for r in reports if r.message.startswith(stage)]
    assert len(in_stage) == 2 and reports[-1].message == in_stage[-1], "it stops at its first report after"
    assert all(r.phase == "loading" for r in reports)
    assert not result.saved and result.steps == 0 and "stopped" in result.message
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("options, words", [
    ({"time_budget": float("nan")}, "time budget"),
    ({"time_budget": -1}, "time budget"),
    ({"lr": float("nan")}, "lr"),
    ({"batch_size": -1}, "batch size"),
    ({"batch_size": 2.5}, "batch size"),
    ({"steps": 0}, "steps"),
    ({"name": "../../x"}, "not a plain name"),
    ({"preset": "slow"}, "unknown preset"),
    ({"unlabelled": "/no/such/folder"}, "unlabelled images: /no/such/folder is not a folder"),
])
def test_bad_arguments_fail_before_any_work(parent, tmp_path, options, words):
    from napari_lgms.errors import InputError
    from napari_lgms.training import finetune_steps

    steps = finetune_steps(parent, corrections=tmp_path / "missing-store", output=tmp_path / "out", **options)
    with pytest.raises(InputError, match=words) as error:
        next(steps)
    assert "\n" not in str(error.value)


def test_an_output_that_is_a_file_fails_before_any_work(parent, tmp_path):
    from napari_lgms.errors import InputError
    from napari_lgms.training import finetune

    (tmp_path / "taken").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        finetune(parent, corrections=tmp_path / "missing-store", output=tmp_path / "taken", steps=1)


def test_cli_prints_the_verdict_and_takes_unlabelled_images(parent, tmp_path, capsys):
    from napari_lgms.cli import main
    from napari_lgms.io import write_mask

    store = store_of(tmp_path / "store", 8)
    write_mask((np.random.default_rng(0).random(SHAPE) * 255).astype(np.uint8), tmp_path / "u" / "a.png")
    code = main(["finetune", "--model", str(parent.path), "--corrections", str(store), "--steps", "120",
                 "--lr", "0.02", "--unlabelled", str(tmp_path / "u"), "--output", str(tmp_path / "out"),
                 "--device", "cpu", "--seed", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "verdict: better" in out
    assert len(list((tmp_path / "out").glob("tiny-test-ft-*.json"))) == 1
    preparing = [line for line in out.splitlines() if line.startswith(("loading", "scoring", "model predictions"))]
    assert preparing[:2] == ["loading your corrections: 0/8", "loading unlabelled images: 0"]
    assert len(preparing) <= 8, "a line as each stage starts (then one every 2 s), not one per image"
    assert main(["finetune", "--model", str(parent.path), "--output", str(tmp_path / "out")]) == 2
    assert main(["finetune", "--model", str(parent.path), "--corrections", str(store),
                 "--time-budget", "nan"]) == 2


def test_cli_says_how_to_decide_when_the_check_cannot(parent, tmp_path, capsys):
    from napari_lgms.cli import main

    store = store_of(tmp_path / "store", 6)
    code = main(["finetune", "--model", str(parent.path), "--corrections", str(store), "--steps", "2",
                 "--lr", "1e-9", "--output", str(tmp_path / "out"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and "verdict: no evidence" in out, out
    assert "run again with --unlabelled DIR --review DIR" in out
    assert list((tmp_path / "out").glob("*.json")) == []


def test_the_package_function_is_not_shadowed_by_its_module():
    import napari_lgms
    import napari_lgms.training.finetuning  # noqa: F401

    assert callable(napari_lgms.finetune) and callable(napari_lgms.training.finetune)


def test_a_3d_model_trains_on_patches_and_is_judged_by_sliding_windows(tiny_model, tmp_path):
    from napari_lgms.corrections import CorrectionsStore
    from napari_lgms.training import finetune
    from napari_lgms.zoo import load_model, save_model

    loaded = tiny_model(spatial_dims=3, num_classes=3)
    parent = load_model(save_model(loaded.network, loaded.card, tmp_path / "parent"))
    store = CorrectionsStore(tmp_path / "store")
    rng = np.random.default_rng(0)
    for index in range(4):
        mask = np.zeros((20, 24, 18), np.uint8)
        mask[4:10, 5:15, 4:12], mask[10:16, 5:15, 4:12] = 1, 2
        image = (rng.normal(50, 10, mask.shape) + 40 * mask).astype(np.float32)
        store.save(f"vol{index}", image, mask, np.zeros_like(mask), model="tiny-test", geometry={})
    unlabelled = [rng.normal(50, 10, (20, 24, 18)).astype(np.float32), rng.normal(size=(32, 32))]
    result = finetune(parent, corrections=store.root, unlabelled=unlabelled, output=tmp_path / "out", steps=4,
                      device="cpu")
    assert result.evidence["held_out"] == 4 and result.evidence["metric"] == "dice"
    assert result.candidate.card.training["finetune"]["data"]["unlabelled"] == 1  # the 2D image is not for it


def test_volumes_are_resampled_to_the_models_spacing_where_theirs_is_known():
    from napari_lgms.io.image import ImageData
    from napari_lgms.training.data import PrepareSpec, RawExample, prepare
    from napari_lgms.training.finetuning import _unlabelled_samples

    spec = PrepareSpec(1, 3, 3, (16, 16, 16), "patch", {"kind": "zscore"}, spacing=(1.0, 1.0, 1.0))
    volume = np.random.default_rng(0).normal(size=(10, 24, 18)).astype(np.float32)
    read = ImageData(volume, "ZYX", (2.0, 0.5, 1.0), ("mm",) * 3, None, None, "napari")
    samples = list(_unlabelled_samples([read, volume], spec, limit=8, seed=0))
    assert [s.image.shape for s in samples] == [(1, 20, 12, 18), (1, 10, 24, 18)]  # a bare array: as it is
    mask = np.ones(volume.shape, np.uint8)
    correction = prepare(RawExample(volume[None], mask, None, (2.0, 0.5, 1.0)), spec)
    assert correction.image.shape == (1, 20, 12, 18)  # corrections as the unlabelled images and inference
