"""The scoreboard's assembly (issue 19): the best single specialist is chosen on the selection outcomes only, the
council's disagreement AUROC counts answered unanswerable questions, and the intervals hold their estimates."""

from __future__ import annotations

import pytest

from council.jobs.eval_scoreboard import assemble, at_coverage, disagreement_auroc, outcome
from council.jobs.scoreboard import Outcome


def right(kind: str = "trained", confidence: float = 0.9) -> Outcome:
    return outcome(kind, "suspension", False, "Suspension", confidence)


def wrong(kind: str = "trained", confidence: float = 0.5) -> Outcome:
    return outcome(kind, "suspension", False, "a fine", confidence)


def unknown(kind: str = "unanswerable") -> Outcome:
    gold = "unknown" if kind == "unanswerable" else "suspension"
    return outcome(kind, gold, True, "unknown", 0.0)


def test_outcome_reads_answers_and_abstentions_by_kind() -> None:
    assert right().correct and not right().hallucinated
    assert wrong().hallucinated
    assert unknown().correct and not unknown().hallucinated  # "unknown" to an unanswerable question
    assert not unknown("fresh").correct and not unknown("fresh").hallucinated  # abstained on an answerable one
    answered_unanswerable = outcome("unanswerable", "unknown", False, "a fine", 0.7)
    assert answered_unanswerable.hallucinated and not answered_unanswerable.correct


def boards(selection_a: list[Outcome], selection_b: list[Outcome], scored_a: list[Outcome]) -> dict:
    scored = {"council": [right(), unknown()], "a": scored_a, "b": [wrong(), wrong()]}
    return assemble(scored, {"a": selection_a, "b": selection_b}, ["a", "b"])


def test_best_single_is_chosen_on_the_selection_outcomes_only() -> None:
    # On the scored questions "a" is far better than "b"; on the selection split "b" is.
    board = boards([wrong(), wrong()], [right(), right()], [right(), unknown()])
    assert board["best_single"]["name"] == "b"
    assert board["best_single"]["selection_accuracy"] == {"a": 0.0, "b": 1.0}
    # Its row is then its outcomes on the *scored* questions, not the selection ones.
    assert board["systems"]["best_single"]["all"]["accuracy"] == 0.0
    assert board["systems"]["best_single"]["name"] == "b"
    # Only the selection outcomes changed: the choice follows them.
    assert boards([right(), right()], [wrong(), right()], [right(), unknown()])["best_single"]["name"] == "a"
    # Only the scored outcomes changed (a now worse there too): the choice does not move.
    assert boards([wrong(), wrong()], [right(), right()], [wrong(), wrong()])["best_single"]["name"] == "b"


def test_every_system_gets_its_row_intervals_and_curve() -> None:
    board = boards([right()] * 3, [wrong()] * 3, [right(), wrong(), unknown(), right(confidence=0.2)])
    row = board["systems"]["a"]
    assert row["all"]["questions"] == 4 and set(row["by_kind"]) == {"trained", "unanswerable"}
    assert row["all"]["hallucination_rate"] == 0.25 and row["all"]["coverage"] == 0.75
    for key, ci in row["ci95"].items():
        assert ci is not None and ci[0] <= row["all"][key] <= ci[1], key
    assert row["ci95"]["accuracy"][0] < row["ci95"]["accuracy"][1]  # four questions leave a wide interval
    assert [c for c, _ in row["risk_coverage"]] == [0.25, 0.5, 0.75]


def test_disagreement_auroc_counts_answered_unanswerable_questions() -> None:
    # No wrong answer to an answerable question: the only wrong ones are answers to unanswerable questions.
    council = [right(confidence=1.0), right(confidence=0.8), unknown(),
               outcome("unanswerable", "unknown", False, "a fine", 0.4),
               outcome("unanswerable", "unknown", False, "ten years", 0.6)]
    got = disagreement_auroc(council)
    assert got == {"answered": 4, "wrong": 2, "auroc": 1.0}
    council[0] = right(confidence=0.5)  # a right answer less sure than a wrong one
    assert disagreement_auroc(council)["auroc"] == 0.75


def test_at_coverage_answers_only_the_surest() -> None:
    outs = [right(confidence=0.9), wrong(confidence=0.8), right(confidence=0.7), wrong(confidence=0.1), unknown()]
    assert at_coverage(outs, 0.2) == {"coverage": 0.2, "hallucination_rate": 0.0}
    assert at_coverage(outs, 0.3)["hallucination_rate"] == pytest.approx(0.2)  # the two surest: one wrong
    assert at_coverage(outs, 0.9) == {"coverage": 0.8, "hallucination_rate": pytest.approx(0.4)}  # never reaches
    board = boards([wrong()], [right()], [right(), unknown()])
    assert board["best_single_at_council_coverage"] == {"coverage": 0.5, "hallucination_rate": 0.5}
