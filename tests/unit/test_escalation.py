"""Confidence escalation: the decision (pure), its config, and the pipeline asking the first members, then the rest
only when they do not settle it — counted calls on scripted members (the real local council: tests/jobs)."""

from __future__ import annotations

import pytest

from council.agreement import Verdict
from council.config import CouncilConfig, EscalationConfig
from council.errors import ConfigError, InvalidRequest
from council.escalation import ABSTAINED, DISAGREED, SETTLED, UNANSWERED, UNSURE, decided, first_round, settings, widen
from council.serving.schemas import AskBody
from council.types import AskRequest, CouncilAnswer, MemberAnswer
from tests.unit.test_pipeline import ScriptedSpecialist, make_config, make_council

LAW = "what penalty does the statute set for this law?"  # routed to m0 (law statutes penalties) first


def verdict(agreement: float = 1.0, abstained: bool = False) -> Verdict:
    return Verdict("paris", agreement, 0.0, abstained, ((0,),), 0)


def ok(name: str, answer: str = "paris") -> MemberAnswer:
    return MemberAnswer(name, 0.5, answer=answer)


def test_settings_follow_the_request_then_the_config() -> None:
    configured = EscalationConfig(first=2, min_agreement=0.7)
    assert settings(None, configured) is configured and settings(None, None) is None
    assert settings(False, configured) is None
    assert settings(True, configured) is configured
    assert settings(True, None) == EscalationConfig(first=1, min_agreement=1.0)


def test_first_round_is_the_top_of_the_route() -> None:
    esc = EscalationConfig(first=2)
    assert first_round(("a", "b", "c"), esc, named=False) == ("a", "b")
    assert first_round(("a", "b", "c"), None, named=False) is None
    assert first_round(("a", "b", "c"), esc, named=True) is None  # named members are all asked
    assert first_round(("a", "b"), esc, named=False) is None  # a request's k of 2: nothing to widen to


def test_widen_says_why() -> None:
    two = [ok("a"), ok("b")]
    assert widen(two, verdict(1.0), min_agreement=1.0, quorum=1) is None
    assert widen(two, verdict(0.5), min_agreement=0.8, quorum=1) == DISAGREED
    assert widen(two, verdict(0.8), min_agreement=0.8, quorum=1) is None  # at the threshold: settled
    assert widen([ok("a"), ok("b", "unknown")], verdict(0.6), min_agreement=0.5, quorum=1) == ABSTAINED
    assert widen(two, verdict(1.0, abstained=True), min_agreement=0.5, quorum=1) == ABSTAINED
    failed = [ok("a"), MemberAnswer("b", 0.5, error="member_error: the member failed", error_code="member_error")]
    assert widen(failed, verdict(1.0), min_agreement=0.5, quorum=1) == UNANSWERED
    assert widen([MemberAnswer("a", 0.5, error="x")], None, min_agreement=0.5, quorum=1) == UNANSWERED
    assert widen([ok("a")], verdict(1.0), min_agreement=0.5, quorum=2) == UNANSWERED
    # Cancelled by early exit: the first members' vote was decided without it.
    assert widen([ok("a"), MemberAnswer("b", 0.5, cancelled=True)], verdict(1.0), min_agreement=1.0, quorum=1) is None


def test_widen_on_a_member_unsure_of_its_own_answer() -> None:
    sure, unsure, silent = (
        MemberAnswer(n, 0.5, answer="paris", confidence=c) for n, c in (("a", 0.9), ("b", 0.4), ("c", None))
    )
    assert widen([sure], verdict(1.0), min_agreement=1.0, quorum=1, min_confidence=0.5) is None
    assert widen([sure, unsure], verdict(1.0), min_agreement=1.0, quorum=1, min_confidence=0.5) == UNSURE
    assert widen([sure], verdict(1.0), min_agreement=1.0, quorum=1, min_confidence=0.9) is None  # at the threshold
    assert widen([silent], verdict(1.0), min_agreement=1.0, quorum=1, min_confidence=0.1) == UNSURE  # none reported
    assert widen([unsure, silent], verdict(1.0), min_agreement=1.0, quorum=1) is None  # confidence not looked at
    # An "unknown" already widens as an abstention, whatever its confidence.
    assert widen([MemberAnswer("a", 0.5, answer="unknown", confidence=0.99)], verdict(1.0), min_agreement=1.0,
                 quorum=1, min_confidence=0.5) == ABSTAINED  # fmt: skip


def test_decided_when_the_unasked_cannot_change_the_vote() -> None:
    # Route score 0.5 weighs 0.75, 0.0 weighs 0.5 (route_weight).
    two_unknown = [ok("a", "unknown"), ok("b", "unknown")]
    both = Verdict("unknown", 1.0, 0.0, True, ((0, 1),), 0)
    assert decided(two_unknown, both, [0.0], agreement_threshold=0.5, quorum=1)  # 1.5 against at most 0.5
    assert not decided(two_unknown, both, [0.5, 0.5], agreement_threshold=0.5, quorum=1)  # a tie is not decided
    split = Verdict("unknown", 0.5, 0.69, True, ((0,), (1,)), 0)
    assert not decided([ok("a", "unknown"), ok("b")], split, [0.0], agreement_threshold=0.5, quorum=1)
    agree = Verdict("paris", 1.0, 0.0, False, ((0, 1),), 0)
    assert decided([ok("a"), ok("b")], agree, [0.0], agreement_threshold=0.5, quorum=1)  # 1.5 of 2.0 whatever c says
    assert not decided([ok("a"), ok("b")], agree, [0.0], agreement_threshold=0.8, quorum=1)  # 0.75 < 0.8 so far
    assert not decided([ok("a"), ok("b")], agree, [0.0], agreement_threshold=0.5, quorum=3)


def test_config_refuses_first_not_below_k() -> None:
    with pytest.raises(ConfigError, match=r"router\.escalation\.first: 3 must be below router\.k=3"):
        make_config(escalation={"first": 3})
    with pytest.raises(ConfigError, match=r"router\.escalation\.min_agreement"):
        make_config(escalation={"min_agreement": 1.5})
    with pytest.raises(ConfigError, match=r"router\.escalation\.min_confidence"):
        make_config(escalation={"min_confidence": -0.1})
    assert CouncilConfig.model_validate(make_config().model_dump()).router.escalation is None  # off by default


def test_http_body_carries_the_override() -> None:
    assert AskBody(question="q?", escalation=True).to_request("q?").escalation is True
    assert AskBody(question="q?").to_request("q?").escalation is None


def unsure_first() -> list[ScriptedSpecialist]:
    """m0 (routed first for LAW) does not know; the other two agree."""
    return [ScriptedSpecialist("m0", "unknown"), ScriptedSpecialist("m1", "Paris."), ScriptedSpecialist("m2", "Paris.")]


def calls(specs: list[ScriptedSpecialist]) -> dict[str, int]:
    return {s.name: len(s.calls) for s in specs if s.calls}


async def test_agreeing_first_member_answers_alone() -> None:
    specs = [ScriptedSpecialist(f"m{i}", "Paris.") for i in range(3)]
    ans = await make_council(specs, make_config(escalation={"first": 1})).ask(AskRequest(LAW))
    assert ans.route is not None and ans.route.chosen[0] == "m0"
    assert calls(specs) == {"m0": 1}
    assert [m.name for m in ans.members] == ["m0"] and ans.escalation == SETTLED and not ans.escalated
    assert ans.answer == "Paris." and not ans.abstained
    assert [t.member for t in ans.trims] == ["m0"]
    assert CouncilAnswer.from_dict(ans.to_dict()).escalation == SETTLED


async def test_an_unknown_widens_to_the_whole_top_k() -> None:
    specs = unsure_first()
    ans = await make_council(specs, make_config(escalation={"first": 1})).ask(AskRequest(LAW))
    assert calls(specs) == {"m0": 1, "m1": 1, "m2": 1}  # m0 asked once, not again in the second round
    assert [m.name for m in ans.members] == list(ans.route.chosen) and ans.escalation == ABSTAINED
    # Aggregated as one 3-member council: m1 and m2 fall together, m0's "unknown" apart.
    assert ans.escalated and sorted(map(sorted, ans.clusters)) == [["m0"], ["m1", "m2"]]


async def test_an_unsure_first_member_widens_a_sure_one_answers_alone() -> None:
    config = make_config(escalation={"first": 1, "min_confidence": 0.6})
    sure = [ScriptedSpecialist(f"m{i}", "Paris.", confidence=0.8) for i in range(3)]
    ans = await make_council(sure, config).ask(AskRequest(LAW))
    assert calls(sure) == {"m0": 1} and ans.escalation == SETTLED and ans.members[0].confidence == 0.8
    unsure = [ScriptedSpecialist(f"m{i}", "Paris.", confidence=0.8 if i else 0.3) for i in range(3)]
    ans = await make_council(unsure, config).ask(AskRequest(LAW))
    assert calls(unsure) == {"m0": 1, "m1": 1, "m2": 1} and ans.escalation == UNSURE and ans.answer == "Paris."


async def test_disagreeing_first_two_widen_and_a_failure_widens() -> None:
    specs = [ScriptedSpecialist("m0", "paris"), ScriptedSpecialist("m1", "london"), ScriptedSpecialist("m2", "rome")]
    ans = await make_council(specs, make_config(escalation={"first": 2})).ask(AskRequest(LAW))
    assert sum(calls(specs).values()) == 3 and ans.escalation == DISAGREED and len(ans.members) == 3
    specs = [ScriptedSpecialist("m0", error="cuda oom"), ScriptedSpecialist("m1"), ScriptedSpecialist("m2")]
    ans = await make_council(specs, make_config(escalation={"first": 1})).ask(AskRequest(LAW))
    assert calls(specs) == {"m0": 1, "m1": 1, "m2": 1} and ans.escalation == UNANSWERED and ans.degraded


async def test_the_request_turns_escalation_on_or_off() -> None:
    specs = [ScriptedSpecialist(f"m{i}") for i in range(3)]
    council = make_council(specs, make_config(escalation={"first": 1}))
    ans = await council.ask(AskRequest(LAW, escalation=False))
    assert sum(calls(specs).values()) == 3 and ans.escalation is None
    specs = [ScriptedSpecialist(f"m{i}") for i in range(3)]
    ans = await make_council(specs, make_config()).ask(AskRequest(LAW, escalation=True))
    assert calls(specs) == {"m0": 1} and ans.escalation == SETTLED
    with pytest.raises(InvalidRequest, match="names its specialists"):
        await council.ask(AskRequest(LAW, escalation=True, specialists=("m0", "m1")))
    # Named members without an explicit escalation: all of them are asked, escalation does not apply.
    specs = [ScriptedSpecialist(f"m{i}") for i in range(3)]
    ans = await make_council(specs, make_config(escalation={"first": 1})).ask(AskRequest(LAW, specialists=("m1", "m2")))
    assert calls(specs) == {"m1": 1, "m2": 1} and ans.escalation is None


async def test_a_streamed_deliberation_emits_the_second_rounds_members() -> None:
    specs = unsure_first()
    council = make_council(specs, make_config(escalation={"first": 1}))
    events = [e async for e in council.deliberate(AskRequest(LAW))]
    landed = [e.name for e in events if isinstance(e, MemberAnswer)]
    assert landed[0] == "m0" and sorted(landed) == ["m0", "m1", "m2"]  # each once, the first round's first
    final = events[-1]
    assert isinstance(final, CouncilAnswer) and final.escalation == ABSTAINED and len(final.members) == 3



async def test_step_widening_stops_once_the_vote_is_decided() -> None:
    # Three "unknown"s: after the top two, the third cannot overturn the abstention, so it is never asked.
    specs = [ScriptedSpecialist(f"m{i}", "unknown") for i in range(3)]
    ans = await make_council(specs, make_config(escalation={"first": 1, "step": 1})).ask(AskRequest(LAW))
    assert ans.route is not None and calls(specs) == dict.fromkeys(ans.route.chosen[:2], 1)
    assert ans.escalation == ABSTAINED and ans.abstained and len(ans.members) == 2
    # The top says "unknown", the next "paris": undecided, so the third is asked as well.
    ans = await make_council(unsure := unsure_first(), make_config(escalation={"first": 1, "step": 1})).ask(
        AskRequest(LAW)
    )
    assert calls(unsure) == {"m0": 1, "m1": 1, "m2": 1} and len(ans.members) == 3


async def test_first_members_whose_unknowns_decide_the_vote_settle_it() -> None:
    # The top two say "unknown": the third cannot outvote them, so it is not asked even without `step`.
    specs = [ScriptedSpecialist(f"m{i}", "unknown") for i in range(3)]
    ans = await make_council(specs, make_config(escalation={"first": 2})).ask(AskRequest(LAW))
    assert ans.route is not None and calls(specs) == dict.fromkeys(ans.route.chosen[:2], 1)
    assert ans.escalation == SETTLED and ans.abstained and len(ans.members) == 2
