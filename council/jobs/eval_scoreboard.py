"""The fair scoreboard of `council eval` (issue 19): the council, every specialist asked alone, the best single
specialist chosen on a separate selection split, and the generalist, each scored by `council.jobs.scoreboard` on
the same questions with its own confidence (the council: agreement; one member: its answer's sequence
probability), with bootstrap intervals on the headline figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from council.agreement import normalise
from council.jobs.eval_report import Record, auroc
from council.jobs.scoreboard import Outcome, best_single, bootstrap, risk_coverage, score
from council.types import AskRequest, CouncilAnswer, MemberAnswer
from council.world.generator import Question
from council.world.judge import abstains

if TYPE_CHECKING:
    from council.pipeline import Council

# The figures that get a bootstrap interval, over all kinds.
HEADLINE = ("accuracy", "hallucination_rate", "coverage", "selective_accuracy", "aurc")
BOOTSTRAP_SAMPLES = 1000


def outcome(kind: str, gold: str, abstained: bool, answer: str, confidence: float) -> Outcome:
    """One system's outcome on a question of `kind`: an abstention (or "unknown") is an answer not given."""
    return Outcome(
        kind=kind, answerable=kind != "unanswerable", gold=gold, answered=not abstained,
        right=not abstained and normalise(answer) == normalise(gold), confidence=confidence,
    )  # fmt: skip


def from_record(r: Record) -> Outcome:
    """The council's outcome on one asked question; its confidence is its agreement."""
    return outcome(r.split, r.gold, r.abstained, r.answer, r.agreement)


def member_confidence(member: MemberAnswer) -> float:
    """A member's confidence in its answer, as its engine reported it (0.0 when it gives none: it then ranks
    last)."""
    return member.confidence if member.confidence is not None else 0.0


async def ask_alone(council: Council, name: str, questions: Sequence[Question], tenant: str) -> list[Outcome]:
    """Every question asked of member `name` alone (same retrieval and prompt), scored with its own confidence."""
    out = []
    for q in questions:
        ans: CouncilAnswer = await council.ask(AskRequest(question=q.question, tenant=tenant, specialists=(name,)))
        [member] = [m for m in ans.members if m.name == name]
        out.append(outcome(q.split, q.answer, abstains(ans), ans.answer or "", member_confidence(member)))
    return out


def intervals(outcomes: Sequence[Outcome], seed: int = 0) -> dict[str, list[float] | None]:
    """Bootstrap 95% intervals (resampling questions) of the headline figures over all kinds."""

    def interval(key: str) -> list[float] | None:
        ci = bootstrap(outcomes, lambda xs: score(xs)["all"][key], samples=BOOTSTRAP_SAMPLES, seed=seed)
        return list(ci) if ci else None

    return {key: interval(key) for key in HEADLINE}


def disagreement_auroc(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """AUROC of (1 - confidence) for wrong answers over every answered question, unanswerable ones included."""
    answered = [o for o in outcomes if o.answered]
    return {
        "answered": len(answered),
        "wrong": sum(o.hallucinated for o in answered),
        "auroc": auroc([1 - o.confidence for o in answered], [o.hallucinated for o in answered]),
    }


def at_coverage(outcomes: Sequence[Outcome], coverage: float) -> dict[str, float | None]:
    """A system answering only its surest answers, as few as reach `coverage` of the questions (all it answered
    when it never reaches it): the coverage it then has and its hallucination rate over every question."""
    curve = risk_coverage(outcomes)
    if not curve:
        return {"coverage": 0.0, "hallucination_rate": 0.0}
    cov, risk = next(((c, r) for c, r in curve if c >= coverage - 1e-9), curve[-1])
    return {"coverage": cov, "hallucination_rate": cov * risk}


def system_row(outcomes: Sequence[Outcome], seed: int = 0) -> dict[str, Any]:
    """One system's scoreboard entry: `score` (all and by kind), intervals and its risk–coverage curve."""
    return {
        **score(outcomes),
        "ci95": intervals(outcomes, seed),
        "risk_coverage": [[round(c, 4), round(r, 4)] for c, r in risk_coverage(outcomes)],
    }


def assemble(
    scored: Mapping[str, Sequence[Outcome]],
    selection: Mapping[str, Sequence[Outcome]],
    specialists: Sequence[str],
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """The scoreboard from every system's outcomes on the scored questions (`scored`: "council", each specialist,
    optionally "generalist") and each specialist's on the selection questions. The best single specialist is
    chosen on `selection` only; its row is then its outcomes on the scored questions."""
    chosen = best_single({name: selection[name] for name in specialists})
    systems = {name: system_row(outs, seed) for name, outs in scored.items()}
    systems["best_single"] = {"name": chosen, **systems[chosen]}
    return {
        "best_single": {
            "name": chosen,
            "chosen_on": "selection",
            "selection_accuracy": {n: score(selection[n])["all"]["accuracy"] for n in specialists},
        },
        "systems": systems,
        "council_disagreement_for_wrong": disagreement_auroc(scored["council"]),
        # The goal's comparison at equal coverage: the best single answering only its surest, as many as the council.
        "best_single_at_council_coverage": at_coverage(scored[chosen], systems["council"]["all"]["coverage"] or 0.0),
    }


async def scoreboard(
    council: Council,
    generalist: Council | None,
    council_records: Sequence[Record],
    scored: Sequence[Question],
    selection: Sequence[Question],
    *,
    tenant: str,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, list[Outcome]]]:
    """Ask every specialist alone (the scored and the selection questions) and the generalist (scored ones) and
    assemble the scoreboard with the council's own records; returns it and every system's scored outcomes."""
    names = [s.name for s in council.config.specialists]
    outcomes: dict[str, list[Outcome]] = {"council": [from_record(r) for r in council_records]}
    picks: dict[str, list[Outcome]] = {}
    for name in names:
        outcomes[name] = await ask_alone(council, name, scored, tenant)
        picks[name] = await ask_alone(council, name, selection, tenant)
    if generalist is not None:
        [gen_name] = generalist.specialists
        outcomes["generalist"] = await ask_alone(generalist, gen_name, scored, tenant)
    board = assemble(outcomes, picks, names, seed=seed)
    board["questions"] = {
        "scored": _count(scored), "selection": _count(selection), "selection_ids": [q.id for q in selection],
    }  # fmt: skip
    return board, outcomes


def _count(questions: Sequence[Question]) -> dict[str, int]:
    kinds = sorted({q.split for q in questions})
    return {k: sum(q.split == k for q in questions) for k in kinds}
