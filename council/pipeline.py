"""The one place that sequences a question: route -> retrieve -> trim -> fan out -> aggregate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from council import routing
from council.agreement import Verdict, share_weight
from council.answer_vectors import AnswerVectors
from council.batching import embed_async
from council.config import CouncilConfig
from council.errors import MEMBER_TIMEOUT, InvalidRequest, QuestionTooLong, QuorumNotMet, RetrievalTimeout, incident
from council.escalation import convene, settings
from council.protocols import Aggregator, ChatSpecialist, Embedder, Retriever, Specialist
from council.synthesis import synthesise
from council.types import (
    AskRequest,
    Chunk,
    Conversation,
    CouncilAnswer,
    DeliberationEvent,
    Generation,
    MemberAnswer,
    MemberDelta,
    TrimReport,
)
from council.validation import validate

__all__ = ["Council", "Emit", "Event", "validate"]  # validate: defined in council.validation

# What a deliberation yields as it happens (see Council.deliberate): the route chosen, pieces of a member's
# answer (when streaming tokens), each member's answer as it lands, pieces of the chairman's synthesis (when one
# is configured), and last the council's answer.
Event = DeliberationEvent
Emit = Callable[[Event], None]


def _ignore(_: Event) -> None:
    return None


_TOO_LONG = f"{QuestionTooLong.type}: question too long for this member's context window"

Plan = list[tuple[list[str], TrimReport]]


def _too_long(chosen: Sequence[str], plans: Mapping[str, Plan]) -> list[str]:
    """The chosen members whose context window the question does not fit."""
    return [n for n in chosen if plans[n][0][1].budget_tokens < 0]


def _check_room(chosen: Sequence[str], plans: Mapping[str, Plan]) -> list[str]:
    """The chosen members the question does not fit; QuestionTooLong when it fits none of them."""
    too_long = _too_long(chosen, plans)
    if len(too_long) == len(chosen):
        raise QuestionTooLong(
            "the question leaves no room in the context window of any chosen specialist: " + ", ".join(too_long)
        )
    return too_long


def _answers(members: Sequence[MemberAnswer]) -> list[str]:
    return [m.answer or "" for m in members]


@dataclass
class _Stopwatch:
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round((time.perf_counter() - t0) * 1000, 2)


class Council:
    """Runs the council over any Specialist/Retriever/Aggregator implementations (local or Serve handles)."""

    def __init__(
        self,
        config: CouncilConfig,
        *,
        embedder: Embedder,
        specialists: Mapping[str, Specialist],
        aggregator: Aggregator,
        retriever: Retriever | None = None,
    ) -> None:
        missing = [s.name for s in config.specialists if s.name not in specialists]
        if missing:
            raise InvalidRequest(f"no specialist given for configured names {missing}")
        self.config = config
        self.embedder = embedder
        self.specialists = dict(specialists)
        self.aggregator = aggregator
        self.retriever = retriever
        self.profiles = self._profiles()

    def _profiles(self) -> dict[str, np.ndarray]:
        # One embed call for every specialist's description and examples, then one profile per member.
        texts: list[str] = []
        spans: dict[str, tuple[int, int]] = {}
        for s in self.config.specialists:
            own = [t for t in [s.description, *s.examples] if t.strip()] or [f"{s.name} {s.domain}"]
            spans[s.name] = (len(texts), len(texts) + len(own))
            texts.extend(own)
        vectors = self.embedder.embed(texts)
        return {name: routing.profile_vector(vectors[a:b]) for name, (a, b) in spans.items()}

    async def ask(self, request: AskRequest) -> CouncilAnswer:
        """Answer one question; raises InvalidRequest/QuestionTooLong/QuorumNotMet with clear messages."""
        return await self._ask(request, _ignore, tokens=False, chairman_streams=False)

    async def deliberate(self, request: AskRequest, *, tokens: bool = False) -> AsyncGenerator[Event, None]:
        """`ask`, as it happens: the RouteDecision once the members' contexts are ready (errors in the request
        are raised before it), each MemberAnswer as it lands (failed, timed-out and cancelled ones too), and the
        CouncilAnswer last. `tokens`: members that can stream (a single ordering) also yield MemberDelta pieces
        of their answer as their engine produces them. A chairman (aggregator.chairman) streams its synthesis as
        SynthesisDelta pieces, whatever `tokens` says. Closing the iterator early cancels the deliberation."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        task = asyncio.create_task(self._ask(request, queue.put_nowait, tokens=tokens, chairman_streams=True))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (event := await queue.get()) is not None:
                yield event
            yield task.result()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=1.0)

    async def _ask(self, request: AskRequest, emit: Emit, *, tokens: bool, chairman_streams: bool) -> CouncilAnswer:
        req = validate(request, self.config)
        cfg, watch = self.config, _Stopwatch()
        t0 = time.perf_counter()
        with watch.stage("route"):
            # The question is embedded once and shared by routing and retrieval.
            q_vec = await embed_async(self.embedder, [req.question])
            scores = routing.cosine_scores(q_vec[0], self.profiles)
            decision = routing.choose(
                scores,
                req.k or min(cfg.router.k, len(scores)),
                min_score=cfg.router.min_score,
                forced=req.specialists,
            )
        with watch.stage("retrieve"):
            chunks = await self._retrieve(req, q_vec[0])
        with watch.stage("trim"):
            plans = await self.aggregator.trim(
                req.question,
                chunks,
                decision.chosen,
                budget_tokens=req.budget_tokens,  # None: the aggregator's default_budget_tokens
                ordering=req.ordering or cfg.aggregator.ordering,
                orderings=req.orderings or cfg.aggregator.orderings,
            )
        _check_room(decision.chosen, plans)
        emit(decision)  # the request is sound: its members are being asked
        vectors = AnswerVectors(self.embedder)
        try:
            with watch.stage("members"):
                # With escalation, the top members first and the rest of the top-k only if they do not settle it.
                members, escalation = await convene(
                    decision.chosen, settings(req.escalation, cfg.router.escalation),
                    named=req.specialists is not None, quorum=self._quorum(decision.chosen), scores=decision.scores,
                    agreement_threshold=cfg.aggregator.agreement_threshold,
                    fan_out=lambda names, earlier: self._fan_out(
                        req, names, decision.scores, plans, vectors, emit=emit, tokens=tokens, earlier=earlier
                    ),
                    vote=lambda answered: self._vote(answered, vectors),
                )  # fmt: skip
            with watch.stage("aggregate"):
                answered = [m for m in members if m.ok]
                quorum = self._quorum(decision.chosen)
                if len(answered) < quorum:
                    raise QuorumNotMet(
                        f"{len(answered)} of {len(members)} members answered; the quorum is {quorum}",
                        details={"members": {m.name: m.error or "cancelled" for m in members if not m.ok}},
                    )
                verdict = await self._vote(answered, vectors)
        finally:
            vectors.cancel()
        synthesis, synthesis_failed = None, None
        chair = cfg.aggregator.chairman
        # Agreement and abstention are the members': a chairman never turns an abstention into an answer.
        if chair is not None and req.synthesis and not (verdict.abstained and chair.when == "agreed"):
            with watch.stage("synthesis"):
                synthesis, synthesis_failed = await synthesise(
                    chair, self.specialists, self.aggregator, question=req.question, chunks=chunks,
                    members=answered, voted_answer=verdict.answer, agreed=not verdict.abstained,
                    timeout_s=chair.timeout_s or cfg.router.member_timeout_s, budget_tokens=req.budget_tokens,
                    ordering=req.ordering or cfg.aggregator.ordering, conversation=self._conversation(req),
                    # An abstaining council's synthesis is reported beside its answer, not streamed as it.
                    emit=emit if chairman_streams and not verdict.abstained else None,
                )  # fmt: skip
        watch.timings["total"] = round((time.perf_counter() - t0) * 1000, 2)
        return CouncilAnswer(
            question=req.question,
            answer=synthesis.text if synthesis is not None and not verdict.abstained else verdict.answer,
            agreement=verdict.agreement,
            entropy=verdict.entropy,
            abstained=verdict.abstained,
            degraded=any(m.error is not None for m in members) or synthesis_failed is not None,
            members=tuple(members),
            sources=tuple(chunks),
            trims=tuple(plans[m.name][0][1] for m in members if plans.get(m.name)),
            timings=watch.timings,
            route=decision,
            synthesis=synthesis,
            synthesis_failed=synthesis_failed,
            clusters=tuple(
                tuple(answered[i].name for i in c)
                for c in sorted(verdict.clusters, key=lambda c: verdict.winner not in c)
            ),
            escalation=escalation,
        )

    def _conversation(self, req: AskRequest) -> Callable[[str], Conversation | None]:
        """A chat's history and decoding for one member, its max_tokens capped to the member's own limit."""

        def of(name: str) -> Conversation | None:
            conv = req.conversation
            if conv is None or (not conv.history and not conv.sampling):
                return None  # a chat of one plain question: any member takes it
            return conv.for_member(self.config.specialist(name).generation.max_new_tokens)

        return of

    async def _retrieve(self, req: AskRequest, q_vec: np.ndarray) -> list[Chunk]:
        if not req.use_retrieval or self.retriever is None:
            return []
        limit = self.config.retrieval.timeout_s
        try:
            async with asyncio.timeout(limit) as deadline:
                return await self.retriever.retrieve(
                    req.question,
                    tenant=req.tenant,
                    top_n=self.config.retrieval.top_n,
                    query_embedding=[float(x) for x in q_vec],
                    documents=req.documents,
                )
        except TimeoutError:
            if not deadline.expired():
                raise
            raise RetrievalTimeout(f"retrieval did not answer within {limit:g}s (retrieval.timeout_s)") from None

    async def _fan_out(
        self,
        req: AskRequest,
        chosen: Sequence[str],
        scores: Mapping[str, float],
        plans: Mapping[str, Plan],
        vectors: AnswerVectors,
        *,
        emit: Emit,
        tokens: bool,
        earlier: Sequence[MemberAnswer] = (),
    ) -> list[MemberAnswer]:
        """Ask every chosen member in parallel; no member holds the request past the member timeout. Each
        member's answer is emitted as it lands. `earlier`: answers already in hand (escalation's first round);
        those members are not asked again, and their answers count towards early exit."""
        cfg = self.config.router
        results: dict[str, MemberAnswer] = {m.name: m for m in earlier}
        for n in _too_long([n for n in chosen if n not in results], plans):
            results[n] = answer = MemberAnswer(n, scores[n], error=_TOO_LONG, error_code=QuestionTooLong.type)
            emit(answer)
        tasks = {
            asyncio.create_task(self._ask_member(n, req, plans[n], scores[n], vectors, emit if tokens else None)): n
            for n in chosen
            if n not in results
        }
        early_exit = cfg.early_exit if req.early_exit is None else req.early_exit
        deadline = time.monotonic() + cfg.member_timeout_s
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(
                pending, timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                break
            for task in done:
                results[tasks[task]] = answer = task.result()
                if answer.ok:
                    vectors.start([answer.answer or ""])
                emit(answer)
            if early_exit and pending and await self._settled(results, chosen, scores, vectors):
                break
        for task in pending:
            task.cancel()
            name = tasks[task]
            timed_out = time.monotonic() >= deadline
            results[name] = MemberAnswer(
                name,
                scores[name],
                cancelled=not timed_out,
                error=f"{MEMBER_TIMEOUT}: timed out after {cfg.member_timeout_s:g}s" if timed_out else None,
                error_code=MEMBER_TIMEOUT if timed_out else None,
            )
            emit(results[name])
        if pending:
            # Give cancellation a moment to reach remote calls; never wait on a stuck member.
            await asyncio.wait(pending, timeout=0.05)
        return [results[n] for n in chosen]

    async def _ask_member(
        self,
        name: str,
        req: AskRequest,
        plan: Plan,
        score: float,
        vectors: AnswerVectors,
        emit: Emit | None = None,
    ) -> MemberAnswer:
        """One member's answer (voted across orderings); any failure becomes data, not an exception. With
        `emit`, a member that streams and reads one ordering emits its answer's pieces as they come."""
        spec = self.specialists[name]
        conv = self._conversation(req)(name)
        try:
            if conv is not None and not isinstance(spec, ChatSpecialist):
                raise InvalidRequest(f"member {name} takes plain questions only (no chat history or sampling)")
            if emit is not None and len(plan) == 1 and isinstance(spec, ChatSpecialist):
                gens = [await self._stream_member(spec, req.question, plan[0][0], conv, emit)]
            elif conv is not None and isinstance(spec, ChatSpecialist):
                gens = await asyncio.gather(*(spec.generate(req.question, passages, conv) for passages, _ in plan))
            else:
                gens = await asyncio.gather(*(spec.generate(req.question, passages) for passages, _ in plan))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a member's failure must never sink the council; its detail stays in the log
            failed = incident(e, f"member {name}")
            return MemberAnswer(name, score, error=str(failed), error_code=failed.code, incident=failed.id)
        texts = [g.text.strip() for g in gens]
        for text, g in zip(texts, gens, strict=True):
            vectors.put(text, g.embedding)
        if len(texts) == 1:
            winner, consistency = 0, 1.0
        else:
            winner, consistency = await self.aggregator.vote(texts, await vectors.matrix(texts))
        return MemberAnswer(
            name,
            score,
            answer=texts[winner],
            prompt_tokens=sum(g.prompt_tokens for g in gens),
            completion_tokens=sum(g.completion_tokens for g in gens),
            latency_s=max(g.latency_s for g in gens),
            ordering_answers=tuple(texts) if len(texts) > 1 else (),
            consistency=consistency if len(texts) > 1 else None,
            finish_reason=gens[winner].finish_reason,
            confidence=gens[winner].confidence,
        )

    @staticmethod
    async def _stream_member(
        spec: ChatSpecialist, question: str, passages: Sequence[str], conv: Conversation | None, emit: Emit
    ) -> Generation:
        pieces = spec.stream(question, passages, conv)
        try:
            async for piece, done in pieces:
                if done is not None:
                    return done
                emit(MemberDelta(spec.name, piece))
        finally:
            await pieces.aclose()  # type: ignore[attr-defined]
        raise RuntimeError(f"member {spec.name}: its stream ended without an answer")

    async def _settled(
        self,
        results: Mapping[str, MemberAnswer],
        chosen: Sequence[str],
        scores: Mapping[str, float],
        vectors: AnswerVectors,
    ) -> bool:
        """True when the answers so far already decide the vote, whatever the stragglers say."""
        answered = [m for m in results.values() if m.ok]
        quorum = self._quorum(chosen)
        if len(answered) < quorum:
            return False
        verdict = await self._vote(answered, vectors)
        if verdict.abstained or verdict.winner is None:
            return False
        weights = {n: share_weight(scores[n]) for n in chosen}
        winners = next(c for c in verdict.clusters if verdict.winner in c)
        share = sum(weights[answered[i].name] for i in winners) / sum(weights.values())
        # Share of ALL chosen members' weight: stragglers cannot overturn it.
        return len(winners) >= quorum and share >= self.config.aggregator.agreement_threshold

    async def _vote(self, answered: list[MemberAnswer], vectors: AnswerVectors) -> Verdict:
        return await self.aggregator.aggregate(answered, await vectors.matrix(_answers(answered)))

    def _quorum(self, chosen: Sequence[str]) -> int:
        """The fewest answers the council needs: the configured quorum, capped by how many members were asked."""
        return min(self.config.router.quorum, len(chosen))
