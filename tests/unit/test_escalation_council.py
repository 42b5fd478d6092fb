"""Escalation on the real local council (the committed demo checkpoints, world 0's corpus in a temp Chroma): the
first member alone when it answers, all k when it says "unknown" or the first two disagree — counted calls — and
the fixed-k vs escalation table over a few questions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from council.agreement import is_unknown, normalise
from council.config import CouncilConfig, EscalationConfig
from council.jobs.eval_escalation import escalating, escalation_table
from council.jobs.eval_sample import DEMO_DIR, TENANT, open_store, sample_questions
from council.local import build_local_council
from council.pipeline import Council
from council.types import AskRequest, CouncilAnswer, MemberAnswer
from council.world import build_world
from council.world.generator import Question

pytestmark = pytest.mark.timeout(600)


class Counted:
    """Counts each member's generate calls (the real member's own method, wrapped on the instance)."""

    def __init__(self, council: Council) -> None:
        self.calls: Counter[str] = Counter()
        for name, member in council.specialists.items():
            member.generate = self._wrap(name, member.generate)  # type: ignore[method-assign]

    def _wrap(self, name: str, generate: Any) -> Any:
        async def counted(question: str, passages: Sequence[str]) -> Any:
            self.calls[name] += 1
            return await generate(question, passages)

        return counted

    def take(self) -> dict[str, int]:
        out = dict(self.calls)
        self.calls.clear()
        return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Council, Counted, list[Question]]]:
    world = build_world(0)
    demo_config = CouncilConfig.from_yaml(DEMO_DIR / "council.yaml")
    config, retriever = open_store(demo_config, world, tmp_path_factory.mktemp("store"))
    council = build_local_council(config, retriever=retriever)
    kinds = sample_questions(world.all_questions, world.seed, 0, 8, 0)
    yield council, Counted(council), [q for qs in kinds.values() for q in qs]
    retriever.close()


async def ask(council: Council, question: str, **options: Any) -> CouncilAnswer:
    return await council.ask(AskRequest(question=question, tenant=TENANT, **options))


async def fixed_k(council: Council, counted: Counted, questions: Sequence[Question]) -> list[CouncilAnswer]:
    answers = [await ask(council, q.question, escalation=False) for q in questions]
    assert counted.take() and all(len(a.members) == council.config.router.k for a in answers)
    return answers


def unknown(m: MemberAnswer) -> bool:
    return is_unknown(m.answer or "")


async def test_first_member_alone_when_it_answers_all_k_when_it_does_not_know(demo: Any) -> None:
    council, counted, questions = demo
    fixed = await fixed_k(council, counted, questions)
    sure = [(q, a) for q, a in zip(questions, fixed, strict=True) if not unknown(a.members[0])]
    unsure = [(q, a) for q, a in zip(questions, fixed, strict=True) if unknown(a.members[0])]
    assert sure and unsure, "the sample should hold questions the top member answers and ones it does not know"
    with escalating(council, EscalationConfig(first=1)):
        for q, full in sure[:3]:
            ans = await ask(council, q.question)
            assert counted.take() == {full.members[0].name: 1}
            assert ans.escalation == "settled" and [m.name for m in ans.members] == [full.members[0].name]
            assert normalise(ans.answer) == normalise(full.members[0].answer or "")
        for q, full in unsure[:3]:
            ans = await ask(council, q.question)
            assert counted.take() == {m.name: 1 for m in full.members}
            assert ans.escalation == "abstained" and [m.name for m in ans.members] == list(full.route.chosen)
            # The same members, the same answers: the same verdict as fixed k.
            assert (ans.answer, ans.agreement, ans.abstained) == (full.answer, full.agreement, full.abstained)


async def test_a_top_member_below_min_confidence_widens(demo: Any) -> None:
    council, counted, questions = demo
    fixed = await fixed_k(council, counted, questions)
    sure = [(q, a) for q, a in zip(questions, fixed, strict=True) if not unknown(a.members[0])]
    assert all(a.members[0].confidence is not None for _, a in sure), "transformers members report a confidence"
    q, full = min(sure, key=lambda qa: qa[1].members[0].confidence or 0.0)  # the top member's least sure answer
    c = full.members[0].confidence or 0.0
    assert 0 < c < 1
    with escalating(council, EscalationConfig(first=1, min_confidence=max(0.0, c - 1e-3))):
        ans = await ask(council, q.question)
        assert counted.take() == {full.members[0].name: 1} and ans.escalation == "settled"
    with escalating(council, EscalationConfig(first=1, min_confidence=min(1.0, c + 1e-3))):
        ans = await ask(council, q.question)
        assert counted.take() == {m.name: 1 for m in full.members} and ans.escalation == "unsure"
        assert (ans.answer, ans.agreement, ans.abstained) == (full.answer, full.agreement, full.abstained)


# A world-0 question the demo council's top two members (legal-1, legal-2) answer differently.
DIFFER = next(q for q in build_world(0).all_questions if q.question == "under the pida act , what penalty is imposed ?")


def top_two(a: CouncilAnswer) -> str | None:
    """"agree" or "differ" when the top two members both answered (not "unknown"): whether their answers fell in
    one cluster; else None."""
    if any(unknown(m) for m in a.members[:2]):
        return None
    top = {m.name for m in a.members[:2]}
    return "agree" if any(top <= set(c) for c in a.clusters) else "differ"


async def test_first_two_disagreeing_widen_to_k(demo: Any) -> None:
    council, counted, questions = demo
    asked = [*questions, DIFFER]
    fixed = await fixed_k(council, counted, asked)
    split = [(q, a) for q, a in zip(asked, fixed, strict=True) if top_two(a) == "differ"]
    agreed = [(q, a) for q, a in zip(asked, fixed, strict=True) if top_two(a) == "agree"]
    # The demo's same-domain pairs rarely answer differently (1 of 150 sampled questions): DIFFER is that one.
    assert split, f"{DIFFER.question!r}: its top two members now agree; pick another question they split on"
    assert agreed, "the sample should hold questions the top two answer alike"
    with escalating(council, EscalationConfig(first=2, min_agreement=1.0)):
        q, full = split[0]
        ans = await ask(council, q.question)
        assert counted.take() == {m.name: 1 for m in full.members} and ans.escalation == "disagreed"
        q, full = agreed[0]
        ans = await ask(council, q.question)
        assert counted.take() == {m.name: 1 for m in full.members[:2]} and ans.escalation == "settled"


async def test_streamed_deliberation_lands_every_member_once(demo: Any) -> None:
    council, counted, questions = demo
    unanswerable = next(q for q in questions if q.split == "unanswerable")

    with escalating(council, EscalationConfig(first=1)):
        got = [e async for e in council.deliberate(AskRequest(question=unanswerable.question, tenant=TENANT))]
    final = got[-1]
    assert isinstance(final, CouncilAnswer)
    landed = [e.name for e in got if isinstance(e, MemberAnswer)]
    assert counted.take() == dict.fromkeys(landed, 1)
    assert final.escalation == "abstained" and landed == [m.name for m in final.members][:1] + landed[1:]
    assert sorted(landed) == sorted(m.name for m in final.members) and len(landed) == council.config.router.k


async def test_escalation_table_counts_what_it_asked(demo: Any, tmp_path: Path) -> None:
    council, counted, questions = demo
    few = questions[::4]  # 6 questions, two of each kind
    counted.take()
    table = await escalation_table(council, few, escalation=EscalationConfig(first=1))
    k, n = council.config.router.k, len(few)
    asked = sum(counted.take().values())
    fixed, esc = table["fixed_k"], table["escalation"]
    assert fixed["member_calls_mean"] == k and fixed["escalation"] == {"off": n}
    settled = esc["escalation"].get("settled", 0)
    assert sum(esc["escalation"].values()) == n
    assert esc["member_calls_mean"] == pytest.approx((settled + (n - settled) * k) / n)
    assert asked == k * n + round(esc["member_calls_mean"] * n)  # both runs' calls, as counted on the members
    assert table["call_reduction"] == pytest.approx(1 - esc["member_calls_mean"] / k)
    for run in (fixed, esc):
        assert run["scoreboard"]["all"]["questions"] == n and set(run["scoreboard"]["by_kind"]) == {
            "trained", "fresh", "unanswerable"}  # fmt: skip
        assert run["p50_latency_ms"] > 0
    f, e = fixed["scoreboard"]["all"], esc["scoreboard"]["all"]
    assert table["goal"] == {
        "calls_at_least_40pct_fewer": table["call_reduction"] >= 0.4,
        "hallucination_no_worse": e["hallucination_rate"] <= f["hallucination_rate"],
        "accuracy_within_2_points": e["accuracy"] >= f["accuracy"] - 0.02,
    }
    assert council.config.router.escalation is None  # the table put the council's config back
