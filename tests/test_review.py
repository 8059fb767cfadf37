"""The user's blind A/B review of a fine-tuned model: what is shown, how answers decide, what is saved."""
from __future__ import annotations

import json

import numpy as np
import pytest

from napari_lgms.errors import InputError
from tests.test_finetune import phantom, run, saved_parent, store_of

torch = pytest.importorskip("torch")


def items_of(new_first: list[bool]):
    from napari_lgms.training.review import ReviewItem

    blank = np.zeros((4, 4), np.uint8)
    return [ReviewItem(i, f"image {i}", blank, blank, blank, flag, 0.5) for i, flag in enumerate(new_first)]


def test_mask_change_is_the_share_of_the_foreground_union_that_differs():
    from napari_lgms.training.review import mask_change

    a = np.zeros((10, 10), np.uint8)
    a[:5] = 1
    b = np.zeros_like(a)
    b[:4] = 1
    assert mask_change(a, a) == 0.0 and mask_change(a * 0, b * 0) == 0.0
    assert mask_change(a, b) == pytest.approx(10 / 50)
    assert mask_change(a, 2 * a) == 1.0, "another class on the same pixels is a change"
    assert mask_change(a, 1 - a) == 1.0


def test_a_stopped_run_or_a_worse_check_has_nothing_to_review():
    from types import SimpleNamespace

    from napari_lgms.training.review import review_items, reviewable

    assert reviewable(SimpleNamespace(candidate=object(), verdict="no evidence"))
    for result in (SimpleNamespace(candidate=None, verdict="no evidence"),
                   SimpleNamespace(candidate=object(), verdict="worse")):
        assert not reviewable(result)
        with pytest.raises(InputError, match="no new model to review"):
            review_items(result, [np.zeros((8, 8))])


def test_the_sign_test_is_exact():
    from napari_lgms.training.review import sign_test_p

    assert sign_test_p(4, 0) == pytest.approx(1 / 16)
    assert sign_test_p(5, 1) == pytest.approx(7 / 64)
    assert sign_test_p(0, 0) == 1.0 and sign_test_p(0, 3) == 1.0


def test_answers_are_mapped_through_the_hidden_order_and_decide_by_the_sign_test():
    from napari_lgms.training.review import review_verdict

    items = items_of([True, False, True, False, True, False])
    # "A" on an item whose A is new, "B" on one whose B is new: the new mask every time
    assert review_verdict(items[:4], ["A", "B", "A", "B"]).decision == "better"
    verdict = review_verdict(items, ["A", "B", "A", "B", "A", "same"])
    assert (verdict.new, verdict.old, verdict.same, verdict.decision) == (5, 0, 1, "better")
    assert review_verdict(items[:3], ["A", "B", "A"]).decision == "no evidence", "three of three is p = 1/8"
    assert review_verdict(items, ["A", "B", "A", "B", "B", "A"]).decision == "no evidence", "four to two"
    assert review_verdict(items[:4], ["B", "A", "B", "A"]).decision == "worse"
    assert review_verdict(items[:2], ["same", "same"]).decision == "no evidence"
    with pytest.raises(InputError, match="answer every image"):
        review_verdict(items, ["A"])
    with pytest.raises(InputError, match="accepted: A, B, same"):
        review_verdict(items[:1], ["maybe"])


@pytest.mark.parametrize("check, new, old, decided", [
    ("better", 0, 0, "better"),  # nothing told apart: the check stands
    ("better", 3, 1, "better"),
    ("better", 1, 1, "no evidence"),  # the current model's masks preferred as often: withdrawn
    ("better", 0, 4, "worse"),
    ("no evidence", 4, 0, "better"),
    ("no evidence", 3, 0, "no evidence"),
    ("no evidence", 0, 4, "worse"),
    ("worse", 6, 0, "worse"),  # scored corrections outweigh a glance
])
def test_the_review_joins_the_check(check, new, old, decided):
    from napari_lgms.training.review import ReviewVerdict, reviewed_decision, sign_test_p

    decision = "no evidence"
    if new != old and sign_test_p(max(new, old), min(new, old)) <= 0.1:
        decision = "better" if new > old else "worse"
    assert reviewed_decision(check, ReviewVerdict(decision, new, old, 0, 0.5)) == decided


@pytest.fixture
def parent(tiny_model, tmp_path):
    return saved_parent(tiny_model, tmp_path / "parent")


@pytest.fixture
def unsure_check(monkeypatch):
    """Every check says "no evidence", whatever its numbers (the candidate is still trained)."""
    from napari_lgms.training import adaptation

    def no_evidence(differences, **rule):
        return adaptation.Verdict("no evidence", float(np.mean(differences)), 1.0, len(differences),
                                  tuple(differences))

    monkeypatch.setattr(adaptation, "judge", no_evidence)


def learned(parent, tmp_path):  
    """A run whose candidate learned the phantoms (120 steps); and ten new phantoms with their truth."""
    from napari_lgms.training import finetune

    result = finetune(parent, corrections=store_of(tmp_path / "store", 8), output=tmp_path / "out", steps=120,
                      lr=0.02, batch_size=4, device="cpu", seed=1)
    rng = np.random.default_rng(7)
    pairs = [phantom(rng) for _ in range(10)]
    return result, [image for image, _ in pairs], [mask for _, mask in pairs]


def truthful(items, truths) -> list[str]:
    """A reviewer who prefers the mask closer to the truth (IoU two points or more), else "same"."""
    from napari_lgms.metrics import binary_scores

    answers = []
    for item in items:
        a, b = (binary_scores(m, truths[item.index])["iou"] for m in (item.first, item.second))
        answers.append("A" if a - b > 0.02 else "B" if b - a > 0.02 else "same")
    return answers


def test_the_review_shows_the_most_changed_images_without_saying_which_is_new(parent, tmp_path, unsure_check):
    from napari_lgms import segment
    from napari_lgms.training.review import CHANGED_AT_LEAST, mask_change, review_items_steps

    result, images, _ = learned(parent, tmp_path)
    volume = np.zeros((4, 16, 16), np.float32)  # another dimensionality: skipped
    items, reports = run(review_items_steps(result, images + [volume], names=[f"p{i}" for i in range(11)],
                                            count=4, seed=3))
    assert [r.done for r in reports] == list(range(1, 12)) and reports[-1].total == 11
    assert 1 <= len(items) <= 4 and all(item.changed >= CHANGED_AT_LEAST for item in items)
    assert [item.changed for item in items] == sorted((item.changed for item in items), reverse=True)
    for item in items:
        old = segment(images[item.index], parent).labels
        new = segment(images[item.index], result.candidate).labels
        assert item.name == f"p{item.index}"
        assert np.array_equal(item.first, new if item.new_is_first else old)
        assert np.array_equal(item.second, old if item.new_is_first else new)
        assert item.changed == pytest.approx(mask_change(old, new))


def test_a_review_preferring_the_new_masks_saves_what_the_check_could_not_vouch_for(parent, tmp_path,
                                                                                     unsure_check):
    from napari_lgms.training.review import accept_review, review_items
    from napari_lgms.zoo import load_model

    result, images, truths = learned(parent, tmp_path)
    assert result.verdict == "no evidence" and not result.saved and list((tmp_path / "out").iterdir()) == []
    items = review_items(result, images, count=6)
    answers = truthful(items, truths)
    reviewed = accept_review(result, items, answers)
    assert reviewed.evidence["review"]["new_better"] >= 4, answers
    assert reviewed.verdict == "better" and reviewed.saved and reviewed.card_path.parent == tmp_path / "out"
    assert reviewed.message.startswith("better by your review (the new model's mask was better on")
    card = json.loads(reviewed.card_path.read_text())
    assert card["name"] == reviewed.name and card["lineage"]["verdict"] == "better"
    review = card["lineage"]["evidence"]["review"]
    assert review["check_verdict"] == "no evidence" and review["answers"] == answers
    assert load_model(reviewed.card_path).card.name == reviewed.name
    assert not result.saved and result.evidence.get("review") is None, "the run's own result is unchanged"


def test_fewer_than_five_corrections_can_be_decided_by_a_review(parent, tmp_path, capsys, monkeypatch):
    """Three corrections never make a check, but they can make a better model; the review can save it
    (the command and the widget then run instead of refusing)."""
    from napari_lgms.cli import main
    from napari_lgms.io import write_mask
    from napari_lgms.training import finetune
    from napari_lgms.training.review import accept_review, review_items

    store = store_of(tmp_path / "store", 3)
    result = finetune(parent, corrections=store, output=tmp_path / "out", steps=120, lr=0.02, batch_size=4,
                      device="cpu", seed=1)
    assert result.verdict == "no evidence" and not result.saved
    assert "add corrections, or review the new model on other images" in result.message
    rng = np.random.default_rng(7)
    pairs = [phantom(rng) for _ in range(10)]
    items = review_items(result, [image for image, _ in pairs])
    reviewed = accept_review(result, items, truthful(items, [mask for _, mask in pairs]))
    assert reviewed.evidence["review"]["new_better"] >= 4 and reviewed.saved and reviewed.verdict == "better"

    for index, (image, _) in enumerate(pairs[:4]):
        write_mask(image.astype(np.uint8), tmp_path / "u" / f"u{index}.png")
    monkeypatch.setattr("builtins.input", lambda question: "s")
    arguments = ["finetune", "--model", str(parent.path), "--corrections", str(store), "--steps", "20",
                 "--output", str(tmp_path / "cli"), "--device", "cpu"]
    assert main(arguments) == 2 and "save 2 more, or review the new model" in capsys.readouterr().err
    assert main(arguments + ["--unlabelled", str(tmp_path / "u"), "--review", str(tmp_path / "review")]) == 0
    out = capsys.readouterr().out
    assert "verdict: no evidence: 3 corrections cannot show" in out and "review:" in out


def test_a_review_that_prefers_the_old_masks_withdraws_a_saved_model(parent, tmp_path):
    from napari_lgms.training.review import accept_review, review_items

    result, images, _ = learned(parent, tmp_path)
    assert result.verdict == "better" and result.card_path.is_file()
    items = review_items(result, images, count=6)
    confirmed = accept_review(result, items, ["A" if item.new_is_first else "B" for item in items])
    assert confirmed.saved and confirmed.card_path == result.card_path and confirmed.name == result.name
    assert confirmed.message.startswith("kept after your review")
    lineage = json.loads(result.card_path.read_text())["lineage"]
    assert lineage["evidence"]["review"]["check_verdict"] == "better", "the card records the review"
    answers = ["B" if item.new_is_first else "A" for item in items]  # the old mask every time
    reviewed = accept_review(result, items, answers)
    assert reviewed.verdict == ("worse" if len(items) >= 4 else "no evidence") and not reviewed.saved
    assert reviewed.card_path is None and reviewed.name == "tiny-test"
    assert list((tmp_path / "out").iterdir()) == [], "card and weights deleted"
    assert reviewed.message.startswith("withdrawn by your review")


def test_cli_review_writes_the_pictures_asks_and_reports(parent, tmp_path, capsys, monkeypatch,
                                                         unsure_check):
    from napari_lgms.cli import main
    from napari_lgms.io import write_mask

    store = store_of(tmp_path / "store", 8)
    rng = np.random.default_rng(7)
    for index in range(6):
        image, _ = phantom(rng)
        write_mask(image.astype(np.uint8), tmp_path / "u" / f"u{index}.png")
    asked = []
    monkeypatch.setattr("builtins.input",
                        lambda question: asked.append(question) or ("x" if len(asked) == 1 else "s"))
    arguments = ["finetune", "--model", str(parent.path), "--corrections", str(store), "--steps", "120",
                 "--lr", "0.02", "--unlabelled", str(tmp_path / "u"), "--output", str(tmp_path / "out"),
                 "--device", "cpu", "--seed", "1", "--review", str(tmp_path / "review")]
    assert main(arguments) == 0
    out = capsys.readouterr().out
    pictures = sorted(p.name for p in (tmp_path / "review").iterdir())
    assert pictures and len(pictures) == 2 * (len(asked) - 1), "an A and a B picture per question"
    assert pictures[0].startswith("01-u") and pictures[0].endswith("-A.png")
    assert pictures[1].endswith("-B.png")
    assert "answer a, b or s" in out, "an answer that is none of them is asked again"
    assert "after review: no evidence" in out and list((tmp_path / "out").iterdir()) == []

    monkeypatch.setattr("builtins.input", lambda question: (_ for _ in ()).throw(EOFError))
    assert main(arguments) == 2
    assert "its input ended" in capsys.readouterr().err
    at = arguments.index("--unlabelled")
    assert main(arguments[:at] + arguments[at + 2:]) == 2
    assert "give --unlabelled DIR too" in capsys.readouterr().err


def test_volumes_are_reviewed_whole_at_their_spacing_and_written_as_nifti(tiny_model, tmp_path):
    import copy
    from dataclasses import replace
    from types import SimpleNamespace

    from napari_lgms.io import read_image
    from napari_lgms.io.image import ImageData
    from napari_lgms.training.review import review_items, write_pictures
    from napari_lgms.zoo import LoadedModel

    parent = tiny_model(spatial_dims=3, num_classes=3)
    network = copy.deepcopy(parent.network)
    with torch.no_grad():
        network.head.bias[1] += 3.0  # the new model calls more voxels class 1
    card = replace(parent.card, lineage={"parent": "tiny-test"})
    result = SimpleNamespace(candidate=LoadedModel(network, card, None, "user"), verdict="no evidence")
    rng = np.random.default_rng(0)
    volumes = [ImageData(array=rng.normal(50, 10, (12, 16, 20)).astype(np.float32), axes="ZYX",
                         spacing=(2.0, 1.0, 1.0), units=("mm",) * 3, affine=None, source=None, format="test")
               for _ in range(2)]
    items = review_items(result, volumes + [rng.normal(size=(32, 32))],
                         names=["v0.nii.gz", "v1.nii.gz", "flat"], parent=parent)
    assert sorted(item.name for item in items) == ["v0.nii.gz", "v1.nii.gz"], "the 2D image is skipped"
    assert all(item.first.shape == (12, 16, 20) and item.changed > 0 for item in items)
    pictures = write_pictures(items[0], tmp_path, 1)
    stem = items[0].name[:2]  # v0 or v1: scan.nii.gz -> scan
    assert [p.name for p in pictures] == [f"01-{stem}-A.nii.gz", f"01-{stem}-B.nii.gz"]
    written = read_image(pictures[0])
    assert written.array.shape == (12, 16, 20) and tuple(written.spacing) == (2.0, 1.0, 1.0)
