"""The fine-tune's verdict: a paired signed-rank test on every held-out correction's change."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from napari_lgms.training.adaptation import judge, signed_rank_p

RULE = dict(margin=0.01, level=0.10, minimum=5)


def enumerated_p(differences, greater: bool) -> float:
    """The same p-value by listing every sign pattern of the non-zero differences' mean ranks."""
    values = [d for d in differences if d != 0]
    magnitudes = sorted(abs(v) for v in values)
    rank_of = {m: np.mean([i + 1 for i, other in enumerate(magnitudes) if other == m]) for m in magnitudes}
    ranks = [rank_of[abs(v)] for v in values]
    observed = sum(r for r, v in zip(ranks, values) if (v > 0) == greater)
    patterns = list(itertools.product([False, True], repeat=len(values)))
    reached = [sum(r for r, s in zip(ranks, signs) if s) >= observed - 1e-9 for signs in patterns]
    return sum(reached) / len(patterns)


@pytest.mark.parametrize("differences", [
    [0.05, 0.02, -0.01, 0.03, 0.04],
    [0.1, 0.1, -0.1, 0.2, 0.0, 0.3, -0.05],  # tied magnitudes and a zero
    [-0.2, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09],
    [0.03] * 4 + [-0.03] * 4 + [0.5],
])
@pytest.mark.parametrize("greater", [True, False])
def test_signed_rank_p_is_exact_with_ties_and_zeros(differences, greater):
    assert signed_rank_p(differences, greater=greater) == pytest.approx(enumerated_p(differences, greater))


def test_every_gain_of_five_is_the_smallest_p_five_can_give():
    assert signed_rank_p([0.01, 0.02, 0.03, 0.04, 0.05], greater=True) == pytest.approx(1 / 32)
    assert signed_rank_p([0.0, 0.0], greater=True) == 1.0


def test_most_corrections_gaining_is_better_though_one_large_loss_swells_the_spread():
    differences = [0.05] * 9 + [-0.30]  # mean +1.5 points, standard error 3.5 points
    verdict = judge(differences, **RULE)
    assert verdict.decision == "better" and verdict.gained == 9
    assert verdict.p_value < 0.10 and verdict.standard_error > verdict.mean_difference


def test_a_mixed_change_is_no_evidence_and_a_consistent_loss_is_worse():
    rng = np.random.default_rng(0)
    mixed = judge(0.01 + 0.1 * rng.standard_normal(10), **RULE)
    assert mixed.decision == "no evidence" and mixed.p_value > 0.10
    assert judge([-0.04, -0.02, -0.06, 0.01, -0.03, -0.05], **RULE).decision == "worse"


def test_tiny_or_too_few_changes_are_never_evidence():
    assert judge([0.005] * 10, **RULE).decision == "no evidence"  # under the one-point margin
    assert judge([0.2, 0.3, 0.25, 0.2], **RULE).decision == "no evidence"  # four corrections
    assert judge([], **RULE).count == 0
    assert judge([0.1, float("nan"), 0.2, 0.1, 0.3, 0.2], **RULE).decision == "no evidence"


def test_under_no_change_better_is_rare():
    rng = np.random.default_rng(1)
    decisions = [judge(0.1 * rng.standard_normal(10), **RULE).decision for _ in range(400)]
    assert decisions.count("better") / len(decisions) <= 0.12


def test_many_corrections_use_the_normal_approximation_and_it_matches_the_exact_test(monkeypatch):
    import napari_lgms.training.adaptation as adaptation

    rng = np.random.default_rng(2)
    differences = np.round(rng.normal(0.005, 0.1, 450), 3)  # many tied magnitudes
    approximate = signed_rank_p(differences, greater=True)
    monkeypatch.setattr(adaptation, "EXACT_RANKS_UP_TO", 10_000)
    assert approximate == pytest.approx(signed_rank_p(differences, greater=True), abs=2e-3)


def test_a_better_message_says_when_most_corrections_were_the_parents_failures():
    from napari_lgms.training.adaptation import judge
    from napari_lgms.training.finetuning import _message, failures_caution

    changes = [0.3, 0.2, 0.25, 0.4, 0.1, 0.02, 0.01, 0.03, 0.02, 0.01]
    verdict = judge(changes, margin=0.01, level=0.1, minimum=5)
    mostly_failures = {"held_out": 10, "parent_failed": 5}
    message = _message("better", verdict, "iou", 10, False, mostly_failures)
    assert message.startswith("better on your corrections (") and message.endswith(
        "saved as a new model; 5 of your 10 corrections are images the old model had failed on, so the check "
        "speaks for images like those: try the new model on a few the old one got right")
    assert failures_caution({"held_out": 10, "parent_failed": 4}) is None
    assert failures_caution({"held_out": 10, "parent_failed": 10}) is None  # nothing it had right to try
    assert failures_caution({}) is None  # a card written before the count was kept


def test_what_the_parent_had_right_is_weighed_at_three_quarters_against_its_failures():
    from napari_lgms.training.finetuning import SUCCESS_SHARE, kept_change

    rows = [{"before": 0.1, "after": 0.9}, {"before": 0.2, "after": 0.8},  # failures, +0.7 on average
            {"before": 0.7, "after": 0.1}, {"before": 0.9, "after": 0.8}]  # two it had right: -0.35 on average
    weighed, change, count = kept_change(rows)
    assert count == 2 and change == pytest.approx(-0.35)
    assert SUCCESS_SHARE == 0.75 and weighed == pytest.approx(0.75 * -0.35 + 0.25 * 0.7)
    assert kept_change(rows[2:]) == pytest.approx((-0.35, -0.35, 2))  # no failures: the successes alone
    assert kept_change(rows[:2]) is None  # none it had right: nothing to say


def test_the_checks_decision_needs_what_the_parent_had_right_kept_only_for_better():
    from napari_lgms.training.adaptation import Verdict
    from napari_lgms.training.finetuning import check_decision

    lost = [{"before": 0.1, "after": 0.9}, {"before": 0.8, "after": 0.5}]  # 0.75 * -0.3 + 0.25 * 0.8 < 0
    slipped = [{"before": 0.1, "after": 0.9}, {"before": 0.8, "after": 0.78}]  # -0.02 there, fixed the failure
    better, worse = Verdict("better", 0.2, 0.1, 2, (0.8, -0.3)), Verdict("worse", -0.2, 0.1, 2, (-0.8, 0.3))
    assert check_decision(better, lost) == ("no evidence", pytest.approx((-0.025, -0.3, 1)))
    assert check_decision(better, slipped)[0] == "better"
    assert check_decision(worse, lost)[0] == "worse"
    assert check_decision(better, lost[:1]) == ("better", None)  # it had none right: nothing to keep
