"""RetrievalServer: the document store's deployment (one per app: an embedded Chroma folder is one process's)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

from council.backends.store_lock import SERVER_ROLE
from council.config import RetrievalConfig
from council.types import Chunk

# How long a new retrieval replica waits for the one it replaces to release an embedded store.
STORE_LOCK_WAIT_S = 90.0


class RetrievalServer:
    """The document store: embedded Chroma on one node, a Chroma server (HttpClient) when `host` is set."""

    def __init__(self, retrieval: dict[str, Any]) -> None:
        from council.backends.chroma import ChromaRetriever
        from council.backends.embeddings import get_embedder

        self.config = RetrievalConfig.model_validate(retrieval)
        # An embedded folder is this replica's alone: a replacement replica waits for the old one to let go.
        self.retriever = ChromaRetriever(
            self.config,
            get_embedder(self.config.embedder),
            lock_wait_s=STORE_LOCK_WAIT_S,
            role=f"{SERVER_ROLE} (Ray Serve RetrievalServer)",
        )

    async def retrieve(self, question: str, **options: Any) -> list[Chunk]:
        """The tenant's most relevant chunks (`ChromaRetriever.retrieve`'s options: tenant, top_n, query_embedding,
        documents); the tenant filter is applied here, never by the caller."""
        return await self.retriever.retrieve(question, **options)

    async def ingest_texts(
        self, docs: Sequence[tuple[str, str]], *, tenant: str, domain: str | None = None
    ) -> dict[str, int]:
        """Chunk, embed and store (source, text) pairs for a tenant: {"added", "skipped", "chunks"}."""
        report = await asyncio.to_thread(self.retriever.ingest_texts, list(docs), tenant=tenant, domain=domain)
        return dataclasses.asdict(report)

    async def count(self, tenant: str | None = None) -> int:
        """Chunks in the store, of one tenant or all."""
        return int(await asyncio.to_thread(self.retriever.count, tenant))

    async def known_tenants(self) -> list[str]:
        """The tenants a query may name (configured, or those that have ingested; always public)."""
        return sorted(await asyncio.to_thread(self.retriever.known_tenants))
