"""LocalAggregator: the Aggregator protocol in-process, over the pure budget and agreement modules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from council import agreement, budget
from council.agreement import Verdict
from council.batching import embed_async
from council.config import AggregatorConfig
from council.errors import InvalidRequest, UnknownSpecialist
from council.protocols import Embedder, TokenCounter
from council.types import Chunk, MemberAnswer, TrimReport


class LocalAggregator:
    """Trims context per member with that member's tokenizer and turns answers into a Verdict.

    Holds no Ray or model state of its own, so the Serve deployment and tests wrap the same class.
    """

    def __init__(self, embedder: Embedder, counters: Mapping[str, TokenCounter], config: AggregatorConfig) -> None:
        self.embedder = embedder
        self.counters = dict(counters)
        self.config = config

    def _counter(self, member: str) -> TokenCounter:
        try:
            return self.counters[member]
        except KeyError:
            raise UnknownSpecialist(
                f"no token counter for specialist {member!r}; known: {sorted(self.counters)}",
                details={"specialist": member},
            ) from None

    async def trim(
        self,
        question: str,
        chunks: Sequence[Chunk],
        members: Sequence[str],
        *,
        budget_tokens: int | None,
        ordering: str,
        orderings: int,
    ) -> dict[str, list[tuple[list[str], TrimReport]]]:
        """For each member: its passages in prompt order with a TrimReport, one pair per ordering.

        Selection (what fits this member's budget) is done once per member; the `orderings`
        arrangements are distinct permutations of that selection, the first being `ordering`.
        A member gets fewer pairs when fewer distinct arrangements exist (0 or 1 passage: one pair).
        A budget <= 0 is not an error here: the member gets no passages (the pipeline decides).
        """
        if orderings < 1:
            raise InvalidRequest(f"orderings={orderings} is out of range: must be at least 1")
        budget.order([], ordering)  # an unknown ordering fails before any member is trimmed
        request_budget = budget_tokens if budget_tokens is not None else self.config.default_budget_tokens
        out: dict[str, list[tuple[list[str], TrimReport]]] = {}
        for member in members:
            counter = self._counter(member)
            room = budget.member_budget(counter, question, request_budget)
            selected, report = budget.select(chunks, room, counter, member=member)
            out[member] = [
                ([c.text for c in arranged], replace(report, ordering=label))
                for label, arranged in budget.labelled_orderings(selected, orderings, base=ordering)
            ]
        return out

    async def _embed(self, texts: Sequence[str], given: np.ndarray | None = None) -> np.ndarray:
        """The texts' embeddings: `given` when the caller computed them (checked), else one call for all
        texts, off the event loop (a BatchedEmbedder also shares it with other requests)."""
        if given is not None:
            vectors = np.asarray(given, dtype=np.float32)
            if vectors.ndim != 2 or vectors.shape[0] != len(texts):
                raise InvalidRequest(f"expected {len(texts)} embedding rows, one per answer; got shape {vectors.shape}")
            return vectors
        if not texts:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        return await embed_async(self.embedder, texts)

    async def aggregate(self, members: Sequence[MemberAnswer], embeddings: np.ndarray | None = None) -> Verdict:
        """The council's verdict over the members that answered, weighted by `route_weight(route_score)`.

        Failed or cancelled members are left out, so the Verdict's indices (clusters, winner) refer
        to the `.ok` members in their given order. No successful member: an abstaining Verdict.
        `embeddings`, when given, has one row per `.ok` member's answer (the pipeline's `AnswerVectors`).
        """
        ok = [m for m in members if m.ok]
        answers = [m.answer or "" for m in ok]
        return agreement.decide(
            answers,
            [agreement.route_weight(m.route_score) for m in ok],
            await self._embed(answers, embeddings),
            similarity_threshold=self.config.similarity_threshold,
            agreement_threshold=self.config.agreement_threshold,
        )

    async def vote(self, answers: Sequence[str], embeddings: np.ndarray | None = None) -> tuple[int, float]:
        """One member's answers across orderings -> (index of the winning answer, consistency)."""
        vectors = await self._embed(answers, embeddings)
        return agreement.vote(answers, vectors, self.config.similarity_threshold)
