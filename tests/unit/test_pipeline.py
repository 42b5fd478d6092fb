"""Pipeline behaviour: fan-out, timeouts, failures, quorum, abstention, early exit and bad input."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

import pytest

from council.agreement import normalise
from council.backends.embeddings import get_embedder
from council.config import CouncilConfig
from council.errors import InvalidRequest, QuestionTooLong, QuorumNotMet, UnknownSpecialist
from council.local_aggregator import LocalAggregator
from council.pipeline import Council
from council.types import AskRequest, Chunk, Document, Generation
from tests.fakes import WordCounter, until


class ScriptedSpecialist:
    """Implements the Specialist protocol with a fixed answer, delay or failure (fault injection)."""

    def __init__(
        self,
        name: str,
        answer: str = "paris",
        delay_s: float = 0.0,
        error: str | None = None,
        gate: asyncio.Event | None = None,
        confidence: float | None = None,
    ):
        """`gate`: answer only once the test sets it (a member that hangs until then); `confidence`: the one its
        answers report (None: like an engine that gives none)."""
        self.name, self.answer, self.delay_s, self.error, self.gate = name, answer, delay_s, error, gate
        self.confidence = confidence
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.cancelled = False
        self.answered = False
        self.was_cancelled = asyncio.Event()

    async def generate(self, question: str, passages: Sequence[str]) -> Generation:
        self.calls.append((question, tuple(passages)))
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled = True
            self.was_cancelled.set()
            raise
        if self.error:
            raise RuntimeError(self.error)
        self.answered = True
        return Generation(
            self.answer, prompt_tokens=10, completion_tokens=2, latency_s=self.delay_s, confidence=self.confidence
        )


class ListRetriever:
    """A Retriever over an in-memory list, filtered by tenant like the real one."""

    def __init__(self, chunks: Sequence[Chunk]):
        self.chunks = list(chunks)

    async def retrieve(self, question, *, tenant, top_n, query_embedding=None, documents=()):
        own = [c for c in self.chunks if c.tenant == tenant]
        eph = [Chunk(f"eph{i}", d.text, d.source, tenant, score=1.0, ephemeral=True) for i, d in enumerate(documents)]
        return (eph + own)[:top_n]


def make_config(n: int = 3, **router: object) -> CouncilConfig:
    domains = ["law statutes penalties", "finance companies revenue", "medicine drugs doses"]
    return CouncilConfig.from_dict(
        {
            "specialists": [
                {"name": f"m{i}", "model": "unused", "domain": domains[i % 3], "description": domains[i % 3]}
                for i in range(n)
            ],
            "router": {"k": n, "member_timeout_s": 1.0, **router},
            "aggregator": {"agreement_threshold": 0.6, "default_budget_tokens": 64},
        }
    )


def make_council(specs: list[ScriptedSpecialist], config: CouncilConfig, window: int = 256, chunks=()) -> Council:
    embedder = get_embedder()
    counters = {s.name: WordCounter(window, 8, prompt=10, per_passage=3) for s in specs}
    agg = LocalAggregator(embedder, counters, config.aggregator)
    return Council(
        config,
        embedder=embedder,
        specialists={s.name: s for s in specs},
        aggregator=agg,
        retriever=ListRetriever(chunks),
    )


async def test_unanimous_council_answers_with_full_agreement() -> None:
    specs = [ScriptedSpecialist(f"m{i}", "Paris.") for i in range(3)]
    ans = await make_council(specs, make_config()).ask(AskRequest("capital of france?"))
    assert ans.answer.lower().startswith("paris")
    assert ans.agreement == pytest.approx(1.0)
    assert ans.entropy == pytest.approx(0.0)
    assert not ans.abstained and not ans.degraded
    assert [m.name for m in ans.members] == list(ans.route.chosen)
    assert set(ans.timings) >= {"route", "retrieve", "trim", "members", "aggregate", "total"}


async def test_disagreement_abstains() -> None:
    specs = [ScriptedSpecialist("m0", "paris"), ScriptedSpecialist("m1", "london"), ScriptedSpecialist("m2", "rome")]
    question = "which statute penalty, company revenue or drug dose applies?"
    ans = await make_council(specs, make_config()).ask(AskRequest(question))
    assert ans.abstained
    assert ans.agreement < 0.6
    assert ans.entropy > 1.0  # three singleton clusters: close to ln 3


async def test_failure_becomes_member_error_and_degraded() -> None:
    specs = [ScriptedSpecialist("m0"), ScriptedSpecialist("m1"), ScriptedSpecialist("m2", error="cuda oom")]
    ans = await make_council(specs, make_config()).ask(AskRequest("capital of france?"))
    assert ans.degraded and not ans.abstained
    failed = {m.name: m for m in ans.members}["m2"]
    # A stable code and an incident id; the engine's words stay in the log (issue 16, finding 9).
    assert failed.answer is None and failed.error_code == "member_error" and failed.incident
    assert failed.error == f"member_error: the member failed (incident {failed.incident})"


async def test_timeout_never_holds_the_request() -> None:
    specs = [ScriptedSpecialist("m0"), ScriptedSpecialist("m1"), ScriptedSpecialist("m2", gate=asyncio.Event())]
    council = make_council(specs, make_config(member_timeout_s=0.5))
    ans = await asyncio.wait_for(council.ask(AskRequest("capital of france?")), 30)  # m2 never answers
    slow = {m.name: m for m in ans.members}["m2"]
    assert "timed out" in slow.error and ans.degraded
    # The straggler's work is cancelled, not left running.
    await asyncio.wait_for(specs[2].was_cancelled.wait(), 10)


async def test_under_quorum_raises_with_member_errors() -> None:
    specs = [ScriptedSpecialist("m0", error="boom"), ScriptedSpecialist("m1", error="bang"), ScriptedSpecialist("m2")]
    with pytest.raises(QuorumNotMet) as e:
        await make_council(specs, make_config(quorum=2)).ask(AskRequest("capital of france?"))
    assert e.value.status == 503
    assert set(e.value.details["members"]) == {"m0", "m1"}


async def test_early_exit_cancels_straggler_once_quorum_agrees() -> None:
    never = asyncio.Event()
    specs = [ScriptedSpecialist("m0"), ScriptedSpecialist("m1"), ScriptedSpecialist("m2", "paris", gate=never)]
    cfg = make_config(quorum=2, member_timeout_s=600)
    # A law-and-finance question: m0 and m1 carry most of the routing weight, so they settle it.
    question = "what penalty does the statute set on company revenue?"
    # m2 never answers and its timeout is far away: only early exit can end this request.
    ans = await asyncio.wait_for(make_council(specs, cfg).ask(AskRequest(question, early_exit=True)), 60)
    assert {m.name: m for m in ans.members}["m2"].cancelled and specs[2].was_cancelled.is_set()
    assert not ans.degraded and not ans.abstained


async def test_early_exit_waits_when_stragglers_could_overturn() -> None:
    specs = [
        ScriptedSpecialist("m0", "paris"),
        ScriptedSpecialist("m1", "rome", delay_s=0.3),
        ScriptedSpecialist("m2", "paris", delay_s=0.6),
    ]
    ans = await make_council(specs, make_config(quorum=2, member_timeout_s=5)).ask(
        AskRequest("capital of france?", early_exit=True)
    )
    # After m0 alone (1/3) nothing is settled; all three must be heard.
    assert all(m.ok for m in ans.members)


async def test_orderings_vote_reports_consistency() -> None:
    chunks = [Chunk(f"c{i}", f"fact number {i} is here.", tenant="public", score=1 - i / 10) for i in range(4)]
    specs = [ScriptedSpecialist(f"m{i}") for i in range(3)]
    ans = await make_council(specs, make_config(), chunks=chunks).ask(AskRequest("which fact?", orderings=4))
    for m in ans.members:
        assert len(m.ordering_answers) == 4 and m.consistency == pytest.approx(1.0)
    # Each ordering's prompt got the passages in a distinct order.
    assert len({c[1] for c in specs[0].calls}) == 4


async def test_ephemeral_documents_reach_members_and_sources() -> None:
    specs = [ScriptedSpecialist(f"m{i}") for i in range(3)]
    ans = await make_council(specs, make_config()).ask(
        AskRequest("what does the memo say?", documents=(Document("The memo says the launch moved to May."),))
    )
    assert ans.sources[0].ephemeral
    assert any("launch moved to May" in p for p in specs[0].calls[0][1])


@pytest.mark.parametrize(
    ("req", "err", "needle", "status"),
    [
        (AskRequest(""), InvalidRequest, "question", 400),
        (AskRequest("   \n\t "), InvalidRequest, "question", 400),
        (AskRequest("q?", k=0), InvalidRequest, "k=0", 400),
        (AskRequest("q?", k=4), InvalidRequest, "k=4", 400),
        (AskRequest("q?", tenant="../etc"), InvalidRequest, "tenant", 400),
        (AskRequest("q?", ordering="sideways"), InvalidRequest, "sideways", 400),
        (AskRequest("q?", orderings=0), InvalidRequest, "orderings", 400),
        (AskRequest("q?", budget_tokens=-5), InvalidRequest, "budget_tokens", 400),
        (AskRequest("q?", specialists=("nobody",)), UnknownSpecialist, "nobody", 404),
        (AskRequest("q?", documents=(Document(""),)), InvalidRequest, "documents[0]", 400),
    ],
)
async def test_bad_input_names_the_problem(req: AskRequest, err: type, needle: str, status: int) -> None:
    specs = [ScriptedSpecialist(f"m{i}") for i in range(3)]
    with pytest.raises(err) as e:
        await make_council(specs, make_config()).ask(req)
    assert needle in str(e.value)
    assert e.value.status == status


async def test_question_too_long_for_every_member() -> None:
    specs = [ScriptedSpecialist(f"m{i}") for i in range(3)]
    council = make_council(specs, make_config(), window=40)
    with pytest.raises(QuestionTooLong) as e:
        await council.ask(AskRequest("word " * 100))
    assert e.value.status == 413 and "m0" in str(e.value)
    assert not specs[0].calls  # nobody was asked


async def test_forced_specialists_and_k() -> None:
    specs = [ScriptedSpecialist(f"m{i}") for i in range(3)]
    council = make_council(specs, make_config())
    ans = await council.ask(AskRequest("a drug dose question", specialists=("m1",)))
    assert [m.name for m in ans.members] == ["m1"]
    ans = await council.ask(AskRequest("what dose of the drug for a patient?", k=1))
    assert ans.route.chosen == ("m2",)  # the medicine specialist routes first


class RecordingEmbedder:
    """The real MiniLM embedder, logging each call: the members that had answered by then, and the texts."""

    def __init__(self, specs: Sequence[ScriptedSpecialist] = ()) -> None:
        self.base = get_embedder()
        self.dim = self.base.dim
        self.specs = specs
        self.calls: list[tuple[set[str], list[str]]] = []

    def embed(self, texts: Sequence[str]):
        self.calls.append(({s.name for s in self.specs if s.answered}, list(texts)))
        return self.base.embed(texts)


def recorded_council(specs: list[ScriptedSpecialist]) -> tuple[Council, RecordingEmbedder]:
    """A council over `specs` whose own embedder (question, answers without a vector) records its calls."""
    council = make_council(specs, make_config())
    council.embedder = recorder = RecordingEmbedder(specs)
    return council, recorder


async def test_each_answer_is_embedded_as_it_arrives_once_and_unknown_never() -> None:
    gates = {"m1": asyncio.Event(), "m2": asyncio.Event()}
    specs = [ScriptedSpecialist("m0", "Paris."), ScriptedSpecialist("m1", "unknown", gate=gates["m1"]),
             ScriptedSpecialist("m2", "Lyon", gate=gates["m2"])]  # fmt: skip
    council, recorder = recorded_council(specs)

    async def answer_in_turn() -> None:  # m1 only once Paris is embedded, m2 only once m1 has answered
        await until(lambda: any(texts == ["Paris."] for _, texts in recorder.calls), "Paris. embedded")
        gates["m1"].set()
        await until(lambda: specs[1].answered, "m1 answered")
        gates["m2"].set()

    ans, _ = await asyncio.wait_for(asyncio.gather(council.ask(AskRequest("capital of france?")), answer_in_turn()), 60)
    answer_calls = [(answered, texts) for answered, texts in recorder.calls if texts != ["capital of france?"]]
    # The fast member's answer is embedded while the others still generate, then only Lyon's after it arrives.
    assert answer_calls == [({"m0"}, ["Paris."]), ({"m0", "m1", "m2"}, ["Lyon"])]
    assert ans.abstained and {m.answer for m in ans.members} == {"Paris.", "unknown", "Lyon"}


class EmbeddingSpecialist(ScriptedSpecialist):
    """Sends its answer's vector with it, as a Serve member replica does (answers_embedded_by: members)."""

    async def generate(self, question: str, passages: Sequence[str]) -> Generation:
        g = await super().generate(question, passages)
        return dataclasses.replace(g, embedding=tuple(get_embedder().embed([g.text.strip()])[0].tolist()))


async def test_answers_that_come_with_a_vector_are_not_embedded_again() -> None:
    specs = [EmbeddingSpecialist("m0", "Paris."), EmbeddingSpecialist("m1", "paris", delay_s=0.1),
             ScriptedSpecialist("m2", "Lyon", delay_s=0.2)]  # fmt: skip
    council, recorder = recorded_council(specs)
    ans = await council.ask(AskRequest("capital of france?"))
    assert [texts for _, texts in recorder.calls] == [["capital of france?"], ["Lyon"]]
    assert normalise(ans.answer) == "paris" and ans.agreement > 0.5 and not ans.abstained  # 2 of 3, weighted
