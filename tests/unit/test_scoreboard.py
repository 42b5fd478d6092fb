"""The scoreboard's formulas on hand-made outcomes (issue 19): hallucination, abstentions, coverage, AURC of a
perfect and of a random confidence, bootstrap intervals, the best single chosen on its own split."""

from __future__ import annotations

import random

import pytest

from council.jobs.scoreboard import Outcome, aurc, best_single, bootstrap, risk_coverage, score


def o(kind: str, answerable: bool, answered: bool, right: bool = False, confidence: float = 1.0) -> Outcome:
    return Outcome(kind, answerable, "gold" if answerable else "", answered, right, confidence)


def test_each_outcome_is_scored_by_its_kind() -> None:
    right = o("trained", True, True, right=True)
    wrong = o("trained", True, True, right=False)  # a hallucination on an answerable question
    made_up = o("missing", False, True)  # an answer to an unanswerable question: a hallucination
    abstained_ok = o("missing", False, False)  # abstaining on an unanswerable question is correct
    abstained_bad = o("fresh", True, False)  # abstaining on an answerable one is wrong, but not a hallucination
    cases = (right, wrong, made_up, abstained_ok, abstained_bad)
    assert [x.correct for x in cases] == [True, False, False, True, False]
    assert [x.hallucinated for x in cases] == [False, True, True, False, False]

    board = score([right, wrong, made_up, abstained_ok, abstained_bad])["all"]
    assert board["questions"] == 5
    assert board["accuracy"] == pytest.approx(2 / 5)
    assert board["hallucination_rate"] == pytest.approx(2 / 5)  # over all questions, not over the answered
    assert board["coverage"] == pytest.approx(3 / 5)
    assert board["selective_accuracy"] == pytest.approx(1 / 3)
    assert board["answerable_abstained"] == pytest.approx(1 / 3)  # 1 of the 3 answerable


def test_per_kind_rows() -> None:
    board = score([o("trained", True, True, True), o("missing", False, True), o("missing", False, False)])
    assert set(board["by_kind"]) == {"missing", "trained"}
    missing = board["by_kind"]["missing"]
    assert (missing["questions"], missing["accuracy"], missing["hallucination_rate"]) == (2, 0.5, 0.5)
    assert missing["answerable_abstained"] is None  # no answerable question of that kind
    assert board["by_kind"]["trained"]["aurc"] == 0.0


def test_aurc_of_a_perfect_and_of_a_random_confidence() -> None:
    rng = random.Random(0)
    wrong_share = 0.3
    truth = [rng.random() >= wrong_share for _ in range(2000)]
    perfect = [o("trained", True, True, right=t, confidence=1.0 if t else 0.0) for t in truth]
    noise = [o("trained", True, True, right=t, confidence=rng.random()) for t in truth]
    inverse = [o("trained", True, True, right=t, confidence=0.0 if t else 1.0) for t in truth]
    n, w = len(truth), truth.count(False)
    # A perfect ranking: zero risk until the right answers run out, then rising.
    best = sum(max(0, i - (n - w)) / i for i in range(1, n + 1)) / n
    assert aurc(perfect) == pytest.approx(best)
    assert aurc(noise) == pytest.approx(w / n, abs=0.03)  # random: about the overall error rate
    assert aurc(perfect) < aurc(noise) < aurc(inverse)


def test_equal_confidences_earn_no_credit_and_nothing_answered_has_no_curve() -> None:
    flat = [o("trained", True, True, right=i % 2 == 0, confidence=0.5) for i in range(10)]
    first = risk_coverage(flat)[0]
    assert first == (0.1, 1.0)  # ties are taken wrong first
    assert aurc([o("missing", False, False)]) is None and risk_coverage([]) == []


def test_bootstrap_interval_holds_the_estimate_and_narrows_with_questions() -> None:
    def rate(xs: list[Outcome]) -> float:
        return sum(x.hallucinated for x in xs) / len(xs)

    rng = random.Random(1)
    small = [o("trained", True, True, right=rng.random() > 0.2) for _ in range(40)]
    large = [o("trained", True, True, right=rng.random() > 0.2) for _ in range(1000)]
    lo_s, hi_s = bootstrap(small, rate, samples=500)
    lo_l, hi_l = bootstrap(large, rate, samples=500)
    assert lo_s <= rate(small) <= hi_s and lo_l <= rate(large) <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 2
    assert bootstrap([], rate) is None
    assert bootstrap(small, lambda xs: None) is None


def test_best_single_is_chosen_on_the_selection_split_only() -> None:
    good = [o("trained", True, True, right=True)] * 4
    bad = [o("trained", True, True, right=False)] * 4
    selection = {"legal-1": good, "legal-2": bad}
    scored = {"legal-1": bad, "legal-2": good}  # on the scored split the other one would win
    assert best_single(selection) == "legal-1"
    assert best_single(scored) == "legal-2"
    assert best_single({"b": good, "a": good}) == "a"  # ties: the first name
    with pytest.raises(ValueError, match="no specialists"):
        best_single({})
