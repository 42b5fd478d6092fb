"""Confidence escalation (`router.escalation`): convene the whole council only when it pays.

The top `first` routed members are asked first; the rest of the top-k are asked only when those do not settle the
question: one of them failed, one said "unknown" (or their vote abstained), their weighted agreement is below
`min_agreement`, or (with `min_confidence`) one is unsure of its own answer. Then every answer is aggregated as one
k-member council's. No more members are asked once the answers in hand decide the k-member vote whatever the rest
would say (`decided`: two "unknown"s of three cannot be outvoted), and `step` widens a few members at a time
instead of all at once. Early exit stops *waiting* for stragglers; escalation saves the calls themselves. The
decision is pure; `convene` sequences the two rounds over the pipeline's own fan-out and vote, so retrieval and
trimming happen once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from council.agreement import Verdict, is_unknown, share_weight
from council.config import EscalationConfig
from council.types import MemberAnswer

__all__ = [
    "ABSTAINED", "DISAGREED", "SETTLED", "UNANSWERED", "UNSURE",
    "convene", "decided", "first_round", "settings", "widen",
]  # fmt: skip

SETTLED = "settled"  # the first members answered alone
UNANSWERED = "unanswered"  # one of them failed, timed out or had no room, or too few answered for the quorum
ABSTAINED = "abstained"  # one of them said "unknown", or their vote abstained
DISAGREED = "disagreed"  # their agreement is below min_agreement
UNSURE = "unsure"  # one's own confidence in its answer is below min_confidence (or its engine reports none)
_TOL = 1e-9  # agreement is a share of summed floats: float noise must not decide the threshold

# (names to ask, answers already in hand) -> the answers of every name, in the names' order.
FanOut = Callable[[Sequence[str], Sequence[MemberAnswer]], Awaitable[list[MemberAnswer]]]
Vote = Callable[[list[MemberAnswer]], Awaitable[Verdict]]


def settings(requested: bool | None, configured: EscalationConfig | None) -> EscalationConfig | None:
    """The escalation one request runs with: the config's, unless the request turns it off (False) or on (True:
    the config's settings, else the defaults)."""
    if requested is None:
        return configured
    if not requested:
        return None
    return configured or EscalationConfig()


def first_round(chosen: Sequence[str], escalation: EscalationConfig | None, *, named: bool) -> tuple[str, ...] | None:
    """The members asked first (the top of the route), or None when escalation does not apply: it is off, the
    request named its members (they are all asked), or no more than `first` members were chosen."""
    if escalation is None or named or len(chosen) <= escalation.first:
        return None
    return tuple(chosen[: escalation.first])


def widen(
    first: Sequence[MemberAnswer], verdict: Verdict | None, *, min_agreement: float, quorum: int,
    min_confidence: float | None = None,
) -> str | None:
    """Why the first members' answers do not settle the question (UNANSWERED, ABSTAINED, DISAGREED, UNSURE), or None
    when they do. `verdict` is their vote (None: none answered). A member cancelled by early exit does not count
    against them: the vote was decided without it."""
    answered = [m for m in first if m.ok]
    if verdict is None or len(answered) < quorum or any(m.error is not None for m in first):
        return UNANSWERED
    if verdict.abstained or any(is_unknown(m.answer or "") for m in answered):
        return ABSTAINED
    if verdict.agreement < min_agreement - _TOL:
        return DISAGREED
    if min_confidence is not None and any(
        m.confidence is None or m.confidence < min_confidence - _TOL for m in answered
    ):
        return UNSURE
    return None


def decided(
    asked: Sequence[MemberAnswer], verdict: Verdict, unasked: Sequence[float], *, agreement_threshold: float,
    quorum: int,
) -> bool:
    """Whether the answers so far decide the vote of every chosen member, whatever the unasked ones (their route
    scores) would say: the winning cluster outweighs every other one even if all of the unasked joined it, and it is
    "unknown" (the council abstains either way) or already holds `agreement_threshold` of all the weight."""
    answered = [m for m in asked if m.ok]
    if len(answered) < quorum or verdict.winner is None:
        return False
    weight = [share_weight(m.route_score) for m in answered]
    masses = [sum(weight[i] for i in c) for c in verdict.clusters]
    win = next(j for j, c in enumerate(verdict.clusters) if verdict.winner in c)
    runner_up = max((mass for j, mass in enumerate(masses) if j != win), default=0.0)
    rest = sum(share_weight(s) for s in unasked)
    if masses[win] <= runner_up + rest + _TOL:  # the unasked could tie or overturn it
        return False
    share = masses[win] / (sum(weight) + rest)
    return is_unknown(answered[verdict.winner].answer or "") or share >= agreement_threshold - _TOL


async def convene(
    chosen: Sequence[str],
    escalation: EscalationConfig | None,
    *,
    named: bool,
    quorum: int,
    scores: Mapping[str, float],
    agreement_threshold: float,
    fan_out: FanOut,
    vote: Vote,
) -> tuple[list[MemberAnswer], str | None]:
    """The members' answers and how escalation went (None: it did not apply, every chosen member was asked at
    once; SETTLED: only the first members were asked; else why more were asked). Whenever the answers in hand
    decide the k-member vote (`decided`), no more are asked. With `escalation.step`, members are added `step` at a
    time, else all the rest at once."""
    first = first_round(chosen, escalation, named=named)
    if first is None or escalation is None:
        return await fan_out(chosen, ()), None

    async def settled(asked: list[MemberAnswer]) -> bool:
        """The answers so far decide the k-member vote (always false once all k are asked: nothing to save)."""
        answered = [m for m in asked if m.ok]
        unasked = [scores[n] for n in chosen[len(asked) :]]
        if not answered or not unasked:
            return False
        v = await vote(answered)
        return decided(asked, v, unasked, agreement_threshold=agreement_threshold, quorum=quorum)

    asked = await fan_out(first, ())
    answered = [m for m in asked if m.ok]
    reason = widen(asked, await vote(answered) if answered else None, min_agreement=escalation.min_agreement,
                   quorum=quorum, min_confidence=escalation.min_confidence)  # fmt: skip
    # Unsure first members whose answers already decide the k-member vote (two "unknown"s of three) settle it too.
    if reason is None or await settled(asked):
        return asked, SETTLED
    step = escalation.step or len(chosen)
    while len(asked) < len(chosen):
        asked = await fan_out(chosen[: len(asked) + step], asked)
        if await settled(asked):
            break
    return asked, reason
