"""AggregatorServer: trimming per member and agreement on their own deployment (tokenizers only, no weights)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from council.config import CouncilConfig
from council.types import Chunk, MemberAnswer, TrimReport

if TYPE_CHECKING:
    import numpy as np

    from council.agreement import Verdict
    from council.local_aggregator import LocalAggregator
    from council.protocols import Embedder


def local_aggregator(config: CouncilConfig, embedder: Embedder) -> LocalAggregator:
    """Trimming (each member's own tokenizer, no weights) and agreement over `embedder`, in the calling process:
    the AggregatorServer's, or the ingress's (`aggregator.placement: ingress`)."""
    from council.backends.tokens import load_tokenizer_counter
    from council.local_aggregator import LocalAggregator

    counters = {s.name: load_tokenizer_counter(s) for s in config.specialists}
    return LocalAggregator(embedder, counters, config.aggregator)


class AggregatorServer:
    """Trimming per member (each member's own tokenizer, no weights) and agreement, vote and abstention."""

    def __init__(self, config: dict[str, Any]) -> None:
        from council.backends.embeddings import get_batched_embedder

        cfg = CouncilConfig.model_validate(config)
        # Batched: under load the answers of many questions share one MiniLM pass, off the event loop.
        self.embedder = get_batched_embedder(cfg.retrieval.embedder)
        self.aggregator = local_aggregator(cfg, self.embedder)

    async def trim(
        self, question: str, chunks: Sequence[Chunk], members: Sequence[str], **options: Any
    ) -> dict[str, list[tuple[list[str], TrimReport]]]:
        """Each member's passages in prompt order with its TrimReport, per ordering (`LocalAggregator.trim`'s
        options: budget_tokens, ordering, orderings)."""
        return await self.aggregator.trim(question, chunks, members, **options)

    async def aggregate(self, members: Sequence[MemberAnswer], embeddings: np.ndarray | None = None) -> Verdict:
        """The council's verdict over the members that answered (their answers' embeddings, if the caller has them)."""
        return await self.aggregator.aggregate(members, embeddings)

    async def vote(self, answers: Sequence[str], embeddings: np.ndarray | None = None) -> tuple[int, float]:
        """One member's answers across orderings -> (winner index, consistency)."""
        return await self.aggregator.vote(answers, embeddings)

    def stats(self) -> dict[str, int]:
        """Embedding counters of this replica (it embeds only what callers did not embed): texts asked, cache
        hits, passes run, the largest pass."""
        return dict(self.embedder.stats)
