"""Retrieval over Chroma: tenant-isolated chunks, our own embeddings, dense + lexical candidates.

What a chunk is and how candidates are ranked and filtered is `council.retrieval`'s (pure); this is the store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from council import retrieval
from council.backends.files import SourceText, check_readable, find_files, iter_documents
from council.backends.store_lock import StoreLock
from council.config import RetrievalConfig
from council.errors import InvalidRequest, StoreAuthError, UnknownTenant
from council.protocols import Embedder
from council.retrieval import PUBLIC, check_tenant, chunk_id, chunk_text, content_words
from council.types import Chunk, Document

log = logging.getLogger(__name__)

_WRITE_BATCH = 256
_TOKEN_PROVIDER = "chromadb.auth.token_authn.TokenAuthClientProvider"  # Chroma's own: `Authorization: Bearer`
_LEXICAL_PROBES = 6  # question words searched for verbatim (Chroma's $contains is case-sensitive)


@dataclass(frozen=True)
class IngestReport:
    """What an ingest did: chunks produced, of which `added` were new and `skipped` already stored; `tenants`:
    the chunks produced for each tenant (informative: reports compare by the three counts)."""

    added: int = 0
    skipped: int = 0
    chunks: int = 0
    tenants: dict[str, int] = field(default_factory=dict, compare=False)

    def __add__(self, other: IngestReport) -> IngestReport:
        tenants = dict(Counter(self.tenants) + Counter(other.tenants))
        return IngestReport(self.added + other.added, self.skipped + other.skipped, self.chunks + other.chunks, tenants)


class ChromaRetriever:
    """`Retriever` over one Chroma collection; the tenant filter is always added here, never taken from callers."""

    def __init__(
        self,
        config: RetrievalConfig,
        embedder: Embedder | None = None,
        *,
        read_only: bool = False,
        lock_wait_s: float = 0.0,
        role: str | None = None,
    ) -> None:
        """Open the collection. An embedded store is locked first (`StoreLock`): exclusively, or shared with
        other readers when `read_only`; another process holding it raises StoreBusy naming that process,
        after waiting up to `lock_wait_s` for it to let go. A Chroma server (`config.host`) takes no lock."""
        self.config = config
        self._lock: StoreLock | None = None
        if not config.host:
            self._lock = StoreLock(config.path, exclusive=not read_only, role=role).acquire(lock_wait_s)
        try:
            if embedder is None:
                from council.backends.embeddings import get_embedder

                embedder = get_embedder(config.embedder)
            self.embedder = embedder
            self._client = _connect(config)
        except BaseException:
            self._release_lock()
            raise
        # embedding_function=None: we always pass vectors, so Chroma never loads its default ONNX model.
        self._collection = self._client.get_or_create_collection(
            config.collection,
            embedding_function=None,
            configuration={"hnsw": {"space": "cosine", "ef_search": config.search_ef}},
        )
        if not read_only:
            self._tune_search()
        self._write_lock = threading.Lock()
        self._tenants_seen: set[str] = set()

    def _tune_search(self) -> None:
        """A collection made before (or with another `search_ef`) keeps its own ef_search: set it to the config's.
        Chroma's embedded store applies a change when the collection is next loaded (a new process)."""
        ef = self.config.search_ef
        current = ((self._collection.configuration or {}).get("hnsw") or {}).get("ef_search")
        if current not in (None, ef):
            log.info("collection %s: ef_search %s -> %s", self.config.collection, current, ef)
            self._collection.modify(configuration={"hnsw": {"ef_search": ef}})

    # ---- ingest -------------------------------------------------------------------------------

    def ingest_texts(self, docs: Iterable[tuple[str, str]], *, tenant: str, domain: str | None = None) -> IngestReport:
        """Chunk, embed and store (source, text) pairs for `tenant`; already stored chunks are skipped."""
        self._require_allowed(check_tenant(tenant))
        return self._ingest_rows([SourceText(tenant=tenant, source=s, text=t, domain=domain) for s, t in docs])

    def ingest_paths(
        self, paths: Iterable[str | Path], *, tenant: str, domain: str | None = None, tenant_column: bool = False
    ) -> IngestReport:
        """Ingest .txt/.md files, Parquet files and folders of them (recursive; `find_files` says what is read).

        Every file is read and checked before anything is written, so a bad file (BadInputFile naming the
        file and column) leaves the store as it was; then the files are read again, one at a time, and written
        as they are read. A Parquet `tenant` column that names another tenant is refused, unless
        `tenant_column`: then it says each row's tenant. The report counts the chunks of each tenant.
        """
        self._require_allowed(check_tenant(tenant))
        limit = self.config.max_file_bytes
        files = find_files(paths, max_bytes=limit)
        for t in sorted(check_readable(files, tenant, max_bytes=limit, tenant_column=tenant_column)):
            self._require_allowed(t)
        return self._ingest_rows(iter_documents(files, tenant, domain, max_bytes=limit, tenant_column=tenant_column))

    def _ingest_rows(self, rows: Iterable[SourceText]) -> IngestReport:
        """Chunk and store `rows` as they come, a write batch at a time (never the whole corpus in memory)."""
        records: dict[str, tuple[str, dict[str, Any]]] = {}
        total = added = 0
        tenants: Counter[str] = Counter()
        opts = self.config.chunking
        for row in rows:
            for index, text in enumerate(chunk_text(row.text, opts.max_chars, opts.overlap_sentences)):
                total += 1
                tenants[row.tenant] += 1
                meta: dict[str, Any] = {"source": row.source, "tenant": row.tenant, "chunk": index}
                if row.domain:
                    meta["domain"] = row.domain
                records.setdefault(chunk_id(row.tenant, text), (text, meta))
                if len(records) >= _WRITE_BATCH:
                    added += self._write(records)
                    records = {}
        added += self._write(records)
        log.info("ingested %d chunks: %d new, %d already stored", total, added, total - added)
        return IngestReport(added=added, skipped=total - added, chunks=total, tenants=dict(tenants))

    def _write(self, records: dict[str, tuple[str, dict[str, Any]]]) -> int:
        """Store the records the store lacks; how many that was."""
        if not records:
            return 0
        with self._write_lock:
            added = self._add_new(list(records), records)
        self._tenants_seen.update(meta["tenant"] for _, meta in records.values())
        return added

    def stored_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of `ids` (chunk ids, see `council.retrieval.chunk_id`) the store already holds."""
        found: set[str] = set()
        for start in range(0, len(ids), _WRITE_BATCH):
            found.update(self._collection.get(ids=list(ids[start : start + _WRITE_BATCH]), include=[])["ids"])
        return found

    def _add_new(self, ids: list[str], records: dict[str, tuple[str, dict[str, Any]]]) -> int:
        stored = self.stored_ids(ids)
        new = [i for i in ids if i not in stored]
        if new:
            texts = [records[i][0] for i in new]
            self._collection.add(
                ids=new, embeddings=self.embedder.embed(texts), documents=texts, metadatas=[records[i][1] for i in new]
            )
        return len(new)

    # ---- query --------------------------------------------------------------------------------

    async def retrieve(
        self,
        question: str,
        *,
        tenant: str,
        top_n: int,
        query_embedding: Sequence[float] | None = None,
        documents: Sequence[Document] = (),
    ) -> list[Chunk]:
        """The `top_n` best chunks of `tenant` (stored and ephemeral) for `question`, best first."""
        return await asyncio.to_thread(
            self.query, question, tenant=tenant, top_n=top_n, query_embedding=query_embedding, documents=documents
        )

    def query(
        self,
        question: str,
        *,
        tenant: str,
        top_n: int,
        query_embedding: Sequence[float] | None = None,
        documents: Sequence[Document] = (),
    ) -> list[Chunk]:
        """Sync `retrieve`: dense candidates re-ranked by (1-w)*cosine + w*lexical overlap, `score` = fused.

        Then the relevance filters of the config: chunks under `min_score` go, and with `score_margin` only
        chunks within that margin of the best one stay. So fewer than `top_n` (even none) may come back.
        """
        check_tenant(tenant)
        if top_n < 1:
            raise InvalidRequest(f"top_n must be >= 1, got {top_n}")
        self._require_known(tenant, has_documents=bool(documents))
        vector = self._question_vector(question, query_embedding)
        words = content_words(question)
        candidates = self._stored_candidates(vector, tenant, 4 * top_n, words)
        candidates += self._ephemeral_candidates(vector, tenant, documents)
        return self.relevant(retrieval.fuse(candidates, words, self.config.lexical_weight, top_n))

    def relevant(self, ranked: list[Chunk]) -> list[Chunk]:
        """The config's relevance filters (`min_score`, then `score_margin`) over a best-first ranking."""
        return retrieval.relevant(ranked, min_score=self.config.min_score, score_margin=self.config.score_margin)

    def _question_vector(self, question: str, query_embedding: Sequence[float] | None) -> np.ndarray:
        if query_embedding is None:
            return self.embedder.embed([question])[0]
        vector = np.asarray(query_embedding, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.embedder.dim:
            dims = f"{vector.shape[0]} dimensions, the store uses {self.embedder.dim}"
            raise InvalidRequest(f"query_embedding has {dims}")
        return vector / max(float(np.linalg.norm(vector)), 1e-12)

    def _stored_candidates(self, vector: np.ndarray, tenant: str, n: int, words: Sequence[str]) -> list[Chunk]:
        """Nearest chunks of this tenant, plus the nearest that contain a question word verbatim.

        The second query rescues made-up entity names that dense embeddings place far away.
        """
        where = {"tenant": tenant}  # the isolation boundary: always set here, never from caller input
        found = {c.id: c for c in self._nearest(vector, where, n, None)}
        probes = _contains_filter(words)
        if probes is not None:
            found.update((c.id, c) for c in self._nearest(vector, where, n, probes))
        return list(found.values())

    def _nearest(
        self, vector: np.ndarray, where: dict[str, Any], n: int, where_document: dict[str, Any] | None
    ) -> list[Chunk]:
        include = ["documents", "metadatas", "distances"]
        result = self._collection.query(
            query_embeddings=[vector], n_results=n, where=where, where_document=where_document, include=include
        )
        tenant = where["tenant"]
        chunks = []
        for id_, text, meta, dist in zip(
            *(result[k][0] for k in ("ids", "documents", "metadatas", "distances")), strict=True
        ):
            if meta.get("tenant") != tenant:  # defence in depth: never hand out another tenant's text
                log.error("chroma returned chunk %s of tenant %r for %r; dropped", id_, meta.get("tenant"), tenant)
                continue
            source, domain = str(meta.get("source", "")), meta.get("domain")
            chunks.append(Chunk(id=id_, text=text, source=source, tenant=tenant, domain=domain, score=1.0 - dist))
        return chunks

    def _ephemeral_candidates(self, vector: np.ndarray, tenant: str, documents: Sequence[Document]) -> list[Chunk]:
        """Request-only documents: chunked and embedded in memory, never stored."""
        opts = self.config.chunking
        owner: dict[str, Document] = {}  # chunk text -> the first document it came from
        for doc in documents:
            for text in chunk_text(doc.text, opts.max_chars, opts.overlap_sentences):
                owner.setdefault(text, doc)
        if not owner:
            return []
        scores = self.embedder.embed(list(owner)) @ vector
        return [
            Chunk(
                id=f"ephemeral-{chunk_id(tenant, text)[:16]}",
                text=text,
                source=doc.source,
                tenant=tenant,
                domain=doc.domain,
                score=float(score),
                ephemeral=True,
            )
            for (text, doc), score in zip(owner.items(), scores, strict=True)
        ]

    # ---- tenants and housekeeping -------------------------------------------------------------

    def known_tenants(self) -> set[str]:
        """Tenants a query may name: the configured list, or those that have ingested; always 'public'."""
        if self.config.tenants is not None:
            return {*self.config.tenants, PUBLIC}
        tenants = {PUBLIC}
        offset, page = 0, 5000
        while True:
            metas = self._collection.get(include=["metadatas"], limit=page, offset=offset)["metadatas"] or []
            tenants.update(str(m["tenant"]) for m in metas if m and "tenant" in m)
            if len(metas) < page:
                return tenants
            offset += page

    def _require_allowed(self, tenant: str) -> None:
        if self.config.tenants is not None and tenant != PUBLIC and tenant not in self.config.tenants:
            raise UnknownTenant(f"unknown tenant {tenant!r}", details={"tenant": tenant})

    def _require_known(self, tenant: str, *, has_documents: bool) -> None:
        self._require_allowed(tenant)
        if self.config.tenants is not None or tenant == PUBLIC or has_documents or tenant in self._tenants_seen:
            return
        # Another process (an ingest job through the Chroma server) may have added it since we last looked.
        if self._collection.get(where={"tenant": tenant}, limit=1, include=[])["ids"]:
            self._tenants_seen.add(tenant)
            return
        # The same 404 as for a tenant the caller's key does not cover (council.credentials.unknown_tenant).
        raise UnknownTenant(f"unknown tenant {tenant!r}", details={"tenant": tenant})

    def count(self, tenant: str | None = None) -> int:
        """Stored chunks, of one tenant or of all."""
        if tenant is None:
            return int(self._collection.count())
        return len(self._collection.get(where={"tenant": check_tenant(tenant)}, include=[])["ids"])

    def close(self) -> None:
        """Release the client and the store's lock (another process may then open the embedded folder)."""
        try:
            self._client.close()
        finally:
            self._release_lock()

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _contains_filter(words: Sequence[str]) -> dict[str, Any] | None:
    """A Chroma `where_document` matching any of the longest question words in its usual spellings."""
    clauses = [{"$contains": v} for v in retrieval.probe_words(words, _LEXICAL_PROBES)]
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$or": clauses}


def _connect(config: RetrievalConfig) -> Any:
    """An HttpClient when a server is configured (with the token in `config.token_env`, when set), else an
    embedded PersistentClient; telemetry off. A server that refuses the token raises StoreAuthError naming it."""
    import chromadb
    from chromadb.config import Settings
    from chromadb.errors import ChromaAuthError

    if config.host:
        token = os.environ.get(config.token_env)
        settings = Settings(anonymized_telemetry=False)
        if token:
            settings = Settings(
                anonymized_telemetry=False, chroma_client_auth_provider=_TOKEN_PROVIDER,
                chroma_client_auth_credentials=token,
            )
        try:
            return chromadb.HttpClient(host=config.host, port=config.port, settings=settings)
        except ChromaAuthError as e:
            where = f"the Chroma server at {config.host}:{config.port}"
            if token:
                why = f"refused the token in ${config.token_env} (retrieval.token_env): it is not the server's token"
            else:
                why = f"requires a token and ${config.token_env} (retrieval.token_env) is not set"
            raise StoreAuthError(
                f"{where} {why}; set {config.token_env} to the token the server was started with "
                "(CHROMA_SERVER_AUTHN_CREDENTIALS, clusters/chroma-server.sh)"
            ) from e
    settings = Settings(anonymized_telemetry=False)
    Path(config.path).mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=config.path, settings=settings)
