"""Builds an in-process council from a config: real models, real Chroma, no Ray (demo, eval, tests)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from council.config import CouncilConfig
from council.engine_options import NO_LOCAL_MODEL
from council.errors import ConfigError
from council.pipeline import Council
from council.protocols import Retriever, Specialist

log = logging.getLogger(__name__)


def build_local_council(
    config: CouncilConfig,
    *,
    retriever: Retriever | None = None,
    specialists: Mapping[str, Specialist] | None = None,
    with_retrieval: bool = True,
) -> Council:
    """A Council whose members run in this process. Pass `retriever`/`specialists` to reuse loaded ones."""
    from council.backends.embeddings import get_batched_embedder
    from council.backends.transformers import TransformersSpecialist
    from council.local_aggregator import LocalAggregator

    # Concurrent questions (batch jobs, eval) share MiniLM passes and the cache of recent answers.
    embedder = get_batched_embedder(config.retrieval.embedder)
    members = dict(specialists or {})
    for spec in config.specialists:
        if spec.name not in members and spec.engine in NO_LOCAL_MODEL:
            raise ConfigError(
                f"specialist {spec.name}: engine: {spec.engine} members run in the Serve app (`serve run`, "
                "`council serve`); the in-process council loads local models only"
            )
        if spec.name not in members:
            log.info("loading specialist %s from %s", spec.name, spec.model)
            members[spec.name] = TransformersSpecialist(spec)
    if retriever is None and with_retrieval:
        from council.backends.chroma import ChromaRetriever

        # The council only reads its store: other readers (a batch job's other actors) may open it too.
        retriever = ChromaRetriever(config.retrieval, embedder.base, read_only=True, role="council (in-process)")
    # Each specialist counts its own tokens: it is its own TokenCounter.
    counters = {name: m for name, m in members.items()}
    aggregator = LocalAggregator(embedder, counters, config.aggregator)  # type: ignore[arg-type]
    return Council(config, embedder=embedder, specialists=members, aggregator=aggregator, retriever=retriever)
