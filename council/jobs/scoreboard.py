"""The scoreboard's formulas (issue 19): every system scored the same way on every kind of question.

A system's *outcome* on one question is what it said and how sure it was: an answer (or an abstention / "unknown")
and a confidence (the council: its agreement; a single member: its sequence probability or self-consistency).
Scored against the question's kind:

- **correct**: the gold answer on an answerable question, or an abstention on an unanswerable one;
- **hallucination**: an answer given that is wrong (on any kind) — over all questions asked;
- **coverage**: the share of questions answered (not abstained);
- **selective accuracy**: accuracy over the answered ones;
- **risk–coverage**: answered questions sorted by confidence, surest first; at each coverage the risk is the share
  of wrong answers among those covered; **AURC** is its mean over every prefix (lower is better; a perfect ranking
  of `w` wrong among `n` answers reaches the minimum, a random one about the overall error rate).

Headline figures come with bootstrap confidence intervals (resampling questions), since a few dozen questions per
kind leave wide ones. The best single specialist is chosen on a *separate* split from the one it is scored on.
Pure: no models, no Ray.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Outcome",
    "aurc",
    "best_single",
    "bootstrap",
    "risk_coverage",
    "score",
]


@dataclass(frozen=True)
class Outcome:
    """One system's outcome on one question."""

    kind: str  # the question's kind: trained, fresh, missing, ... (what the eval groups by)
    answerable: bool
    gold: str
    answered: bool  # False: the system abstained or said "unknown"
    right: bool  # the answer given is the gold one (meaningless when not answered)
    confidence: float

    @property
    def correct(self) -> bool:
        return (self.answered and self.right) if self.answerable else not self.answered

    @property
    def hallucinated(self) -> bool:
        return self.answered and not (self.answerable and self.right)


def _share(xs: Sequence[bool]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def risk_coverage(outcomes: Sequence[Outcome]) -> list[tuple[float, float]]:
    """(coverage, risk) for each prefix of the answered outcomes, surest first; coverage is over all questions.
    Ties in confidence are taken in their worst order (wrong first), so a constant confidence earns no credit."""
    answered = sorted((o for o in outcomes if o.answered), key=lambda o: (-o.confidence, not o.hallucinated))
    curve, wrong = [], 0
    for i, o in enumerate(answered, 1):
        wrong += o.hallucinated
        curve.append((i / len(outcomes), wrong / i))
    return curve


def aurc(outcomes: Sequence[Outcome]) -> float | None:
    """Area under the risk–coverage curve: the mean risk over every prefix of the answered outcomes (None when
    nothing was answered)."""
    curve = risk_coverage(outcomes)
    return sum(r for _, r in curve) / len(curve) if curve else None


def score(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """The scoreboard row of one system: over all questions, and per kind."""

    def row(xs: Sequence[Outcome]) -> dict[str, Any]:
        answered = [o for o in xs if o.answered]
        answerable = [o for o in xs if o.answerable]
        return {
            "questions": len(xs),
            "accuracy": _share([o.correct for o in xs]),
            "hallucination_rate": _share([o.hallucinated for o in xs]),
            "coverage": _share([o.answered for o in xs]),
            "selective_accuracy": _share([not o.hallucinated for o in answered]),
            "answerable_abstained": _share([not o.answered for o in answerable]),
            "aurc": aurc(xs),
        }

    kinds = sorted({o.kind for o in outcomes})
    return {"all": row(outcomes), "by_kind": {k: row([o for o in outcomes if o.kind == k]) for k in kinds}}


def bootstrap(
    outcomes: Sequence[Outcome],
    statistic: Callable[[Sequence[Outcome]], float | None],
    *,
    samples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """The `level` percentile interval of `statistic` over `samples` resamplings of the questions (with
    replacement); None when there are no outcomes or the statistic is never defined."""
    if not outcomes:
        return None
    rng = random.Random(seed)
    values = []
    for _ in range(samples):
        value = statistic([outcomes[rng.randrange(len(outcomes))] for _ in outcomes])
        if value is not None:
            values.append(value)
    if not values:
        return None
    values.sort()
    lo = values[int((1 - level) / 2 * (len(values) - 1))]
    hi = values[int((1 + level) / 2 * (len(values) - 1))]
    return lo, hi


def best_single(
    selection: Mapping[str, Sequence[Outcome]], key: str = "accuracy"
) -> str:
    """The single specialist with the highest `key` (over all kinds) on the *selection* split — never the split it
    is then scored on; ties go to the first name in sorted order."""
    if not selection:
        raise ValueError("no specialists to choose the best single one from")
    ranked = sorted(selection, key=lambda name: (-(score(selection[name])["all"][key] or 0.0), name))
    return ranked[0]
