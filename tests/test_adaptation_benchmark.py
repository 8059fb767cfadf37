"""The adaptation benchmark (benchmarks/adaptation.py): its verdict ceiling on made-up per-image scores,
and recorded runs judged again by the current rule."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def benchmark():
    path = Path(__file__).parents[1] / "benchmarks" / "adaptation.py"
    spec = importlib.util.spec_from_file_location("adaptation_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    monkeypatch.undo()


def per_image(gains, parent=0.6):
    """``[name, patient, parent score, candidate score]`` rows, two images per patient."""
    return [[f"image {i}", f"patient {i // 2}", parent, parent + g] for i, g in enumerate(gains)]


def test_a_large_steady_gain_is_confirmed_on_nearly_every_subset(benchmark):
    rng = np.random.default_rng(0)
    ceiling = benchmark.verdict_ceiling(per_image(0.10 + 0.02 * rng.standard_normal(200)), 10, subsets=300)
    assert ceiling["agreement"] > 0.99
    assert ceiling["false_better"] < 0.2


def test_a_gain_swamped_by_the_spread_between_images_is_rarely_confirmed(benchmark):
    rng = np.random.default_rng(1)
    gains = 0.03 + 0.15 * rng.standard_normal(200)
    ceiling = benchmark.verdict_ceiling(per_image(gains), 10, subsets=300)
    assert ceiling["agreement"] < 0.5
    assert ceiling["false_better"] < ceiling["agreement"]


def test_one_image_per_patient_and_nothing_below_the_verdict_minimum(benchmark):
    rows = per_image([0.2] * 8)  # four patients: ten images of distinct patients cannot be drawn
    assert benchmark.verdict_ceiling(rows, 10) == {"agreement": 0.0, "false_better": 0.0}
    assert benchmark.verdict_ceiling(per_image([0.2] * 40), 3) == {"agreement": 0.0, "false_better": 0.0}
    assert benchmark.verdict_ceiling(per_image([0.005] * 40), 3)["agreement"] == 1.0  # no change to disagree with


def test_a_clear_loss_is_agreed_with_only_when_judged_worse(benchmark):
    rng = np.random.default_rng(2)
    ceiling = benchmark.verdict_ceiling(per_image(-0.10 + 0.02 * rng.standard_normal(200)), 10, subsets=300)
    assert ceiling["agreement"] > 0.99


def test_ceilings_of_a_recorded_run_under_other_rules_and_counts(benchmark, tmp_path, capsys):
    rng = np.random.default_rng(3)
    draw = {"seed": 1, "per_image": per_image(0.05 + 0.15 * rng.standard_normal(120))}
    run = {"table": [{"case": "shift", "k": 10, "draws": [draw]}, {"case": "shift", "k": 3, "draws": [draw]}]}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    benchmark.print_ceilings(path, levels=(0.1, 0.3), counts=(5, 10, 40))
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.split("\n\n")[0].splitlines()[1:]]
    assert [(row[3], row[4]) for row in rows] == [("0.10", "10"), ("0.30", "10"), ("0.10", "5"), ("0.10", "40")]
    ceilings = {(row[3], row[4]): float(row[5].rstrip("%")) for row in rows}
    assert ceilings[("0.30", "10")] > ceilings[("0.10", "10")]  # a looser rule agrees more often...
    assert ceilings[("0.10", "40")] > ceilings[("0.10", "5")]  # ...and so do more corrections
    covariate = printed.split("\n\n")[1].splitlines()[2].split()
    assert covariate[:3] == ["shift", "10", "1"] and len(covariate) == 7  # the k = 10 cell only


def test_a_covariate_that_explains_the_gains_makes_ten_corrections_say_more(benchmark):
    # Images the parent failed on gain a lot, the others lose a little: the mean gain is +4 points,
    # and which images a draw holds decides most of its corrections' mean.
    rng = np.random.default_rng(4)
    parent = rng.uniform(0.2, 0.95, 300)
    gains = 0.04 + 0.6 * (parent.mean() - parent) + 0.01 * rng.standard_normal(300)
    rows = [[f"image {i}", f"patient {i}", p, p + g] for i, (p, g) in enumerate(zip(parent, gains))]
    found = benchmark.covariate_ceiling(rows, 10, subsets=300)
    assert found["covariate"]["agreement"] > 0.95 > found["plain"]["agreement"]
    assert found["covariate"]["false_better"] < 0.2


def test_a_recorded_run_rejudged_by_the_current_rule(benchmark, tmp_path):
    consistent = [0.05] * 9 + [-0.30]  # most corrections gained; one large loss
    mixed = [0.2, -0.2, 0.1, -0.1, 0.05, -0.05, 0.01, -0.01, 0.3, -0.25]

    def recorded(seed, differences, verdict, unfit=False):
        return {"seed": seed, "before": 0.6, "candidate_gain": 0.05, "gain": 0.0, "verdict": verdict,
                "wall_s": 100.0, "steps": 300, "evidence": {"differences": differences, "unfit": unfit}}

    draws = [recorded(1, consistent, "no evidence"), recorded(2, mixed, "no evidence"),
             recorded(3, consistent, "no evidence", unfit=True)]
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"table": [{"case": "shift", "k": 10, "budget": 120.0, "draws": draws}]}))
    (row,) = benchmark.rejudge(path)
    assert [d["verdict"] for d in row["draws"]] == ["better", "no evidence", "no evidence"]
    assert [d["gain"] for d in row["draws"]] == [0.05, 0.0, 0.0]
    assert row["summary"]["agreement"] == pytest.approx(1 / 3)
    assert row["summary"]["mean_gain"] == pytest.approx(0.05 / 3)
    assert (row["summary"]["claims"], row["summary"]["claims_right"]) == (1, 1)  # the one "better" was right


def test_the_simulated_endoscope_crops_image_and_mask_alike_and_repeats_with_its_seed(benchmark):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    mask = np.zeros((120, 160), np.uint8)
    mask[40:80, 50:110] = 1
    changed, cropped = benchmark._simulated_endoscope(image, mask, seed=7)
    assert changed.dtype == np.uint8 and changed.shape[:2] == cropped.shape and changed.shape[2] == 3
    assert 0.6 * 120 < cropped.shape[0] < 0.85 * 120 and 0.6 * 160 < cropped.shape[1] < 0.85 * 160
    assert set(np.unique(cropped)) == {0, 1}  # labels are cut, never interpolated
    top, left = (120 - cropped.shape[0]) // 2, (160 - cropped.shape[1]) // 2
    assert np.array_equal(cropped, mask[top:top + cropped.shape[0], left:left + cropped.shape[1]])
    noise_left = changed.astype(float).std(axis=(0, 1)) / image.astype(float).std(axis=(0, 1))
    assert (noise_left < 0.5).all()  # motion blur averages the noise out
    again, _ = benchmark._simulated_endoscope(image, mask, seed=7)
    other, _ = benchmark._simulated_endoscope(image, mask, seed=8)
    assert np.array_equal(changed, again) and not np.array_equal(changed, other)


def test_a_user_who_corrects_the_worst_images_gets_them_as_corrections_and_the_rest_as_unlabelled(benchmark):
    items = [benchmark.Item(f"image {i}", f"patient {i}", np.zeros((4, 4)), None, np.zeros((4, 4), np.uint8))
             for i in range(60)]
    score = {item.name: (7 * i % 60) / 60 for i, item in enumerate(items)}.__getitem__
    scores = lambda item: score(item.name)  # noqa: E731
    at_random = benchmark.draw(items, 5, 10, 100, seed=4)
    worst = benchmark.draw(items, 5, 10, 100, seed=4, worst_of=3, parent_scores=scores)
    looked_at = at_random[0] + at_random[1][:10]  # the same 15 patients, one image each
    assert {i.name for i in worst[0] + worst[1]} == {i.name for i in looked_at}
    assert max(scores(i) for i in worst[0]) <= min(scores(i) for i in worst[1])
    assert {i.name for i in worst[2]} == {i.name for i in at_random[2]}  # scored on the same other patients
    again = benchmark.draw(items, 5, 10, 100, seed=4, worst_of=1)
    assert [i.name for i in again[0]] == [i.name for i in at_random[0]]


def test_the_simulated_reviewer_prefers_the_mask_closer_to_the_truth(benchmark, monkeypatch, tmp_path):
    from dataclasses import replace
    from types import SimpleNamespace

    from napari_lgms.training import review
    from napari_lgms.training.review import ReviewItem

    truth = np.zeros((10, 10), np.uint8)
    truth[2:8, 2:8] = 1
    near, far = truth.copy(), np.zeros_like(truth)
    near[2, 2:8] = 0  # IoU 30/36 against 0
    pool = [benchmark.Item(f"image {i}", f"patient {i}", truth.astype(np.float32), None, truth)
            for i in range(3)]
    offered = [ReviewItem(0, "image 0", None, near, far, True, 0.5),  # A (new) is right
               ReviewItem(1, "image 1", None, far, near, True, 0.5),  # B (old) is right
               ReviewItem(2, "image 2", None, near, near, False, 0.0)]

    def review_items(result, images, **options):  # as the engine does: each item carries its image
        return [replace(item, image=images[item.index]) for item in offered]

    monkeypatch.setattr(review, "review_items", review_items)
    taken = {}

    def accept(result, items, answers, output):
        taken.update(answers=answers, output=output)
        return SimpleNamespace(verdict="no evidence", saved=False,
                               evidence={"review": {"new_better": 1, "old_better": 1, "same": 1}})

    monkeypatch.setattr(review, "accept_review", accept)
    parent = SimpleNamespace(card=SimpleNamespace(num_classes=1))
    result = SimpleNamespace(candidate=object(), verdict="no evidence")
    found = benchmark.simulated_review(result, parent, pool, seed=0, count=6, output=tmp_path,
                                       pictures=tmp_path / "pictures")
    assert taken["answers"] == ["A", "B", "same"] and taken["output"] == tmp_path
    keys = found.pop("items")
    assert found == {"verdict": "no evidence", "saved": False, "images": 3, "new_better": 1, "old_better": 1,
                     "same": 1, "fewer": {}, "answers": ["A", "B", "same"],
                     "pictures": str(tmp_path / "pictures")}
    assert [key["new_is_first"] for key in keys] == [True, True, False]
    assert keys[0]["first"] == pytest.approx(30 / 36, abs=1e-4)
    assert keys[0]["second"] == pytest.approx(0, abs=1e-4)
    written = sorted(p.name for p in (tmp_path / "pictures").iterdir())
    assert written == ["01-A.png", "01-B.png", "02-A.png", "02-B.png", "03-A.png", "03-B.png"]
    worse = SimpleNamespace(candidate=object(), verdict="worse")
    assert benchmark.simulated_review(worse, parent, pool, 0, 6, tmp_path) is None, "a worse check: no review"
    rows = [{"verdict": "no evidence", "gain": 0.0, "agrees": False,
             "review": {"verdict": "better", "gain": 0.06, "agrees": True, "images": 6}},
            {"verdict": "worse", "gain": 0.0, "agrees": True}]
    summary = benchmark.reviewed_summary(rows)["reviewed"]
    assert summary["mean_gain"] == pytest.approx(0.03) and summary["agreement"] == 1.0
    assert summary["verdicts"] == {"better": 1, "no evidence": 0, "worse": 1} and summary["images"] == 3.0


def test_a_persons_answers_are_scored_through_the_hidden_order(tmp_path, capsys):
    path = Path(__file__).parents[1] / "benchmarks" / "review_by_eye.py"
    spec = importlib.util.spec_from_file_location("review_by_eye", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    items = [{"name": f"image {i}", "new_is_first": i % 2 == 0, "first": 0.5, "second": 0.5, "changed": 0.1}
             for i in range(4)]
    draw = {"seed": 7, "verdict": "no evidence", "gain": 0.0, "agrees": False, "candidate_gain": 0.06,
            "review": {"items": items, "answers": ["A", "B", "A", "B"], "pictures": str(tmp_path / "m-7")}}
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"table": [{"case": "shift", "draws": [draw]}]}))
    (tmp_path / "m-7").mkdir()
    (tmp_path / "m-7" / "answers.txt").write_text("a\nb  # the outline hugs the lesion\na\ns\n")
    options = ["--run", str(run), "--answers", str(tmp_path), "--output", str(tmp_path / "eye.json")]
    assert module.main(options) == 0
    row = json.loads((tmp_path / "eye.json").read_text())["draws"][0]
    assert row["truth_played"] == {"new": 4, "old": 0, "same": 0, "decision": "better", "gain": 0.06,
                                   "agrees": True}
    assert (row["eye"]["new"], row["eye"]["old"], row["eye"]["same"]) == (3, 0, 1)
    assert row["eye"]["decision"] == "no evidence" and row["matched"] == 3  # three of four is p = 0.125
    (tmp_path / "m-7" / "answers.txt").write_text("a\nb\n")
    with pytest.raises(SystemExit, match="2 answers for 4 picture pairs"):
        module.main(["--run", str(run), "--answers", str(tmp_path)])
