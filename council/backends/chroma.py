"""Retrieval over Chroma: tenant-isolated chunks, our own embeddings, dense + lexical fused ranking."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from council.backends.store_lock import StoreLock
from council.budget import split_sentences
from council.config import RetrievalConfig
from council.errors import BadInputFile, InvalidRequest, UnknownTenant
from council.protocols import Embedder
from council.types import Chunk, Document

log = logging.getLogger(__name__)

TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PUBLIC = "public"  # always known: a fresh store answers public questions with no passages, not an error
TEXT_SUFFIXES = (".txt", ".md")
PARQUET_SUFFIXES = (".parquet", ".pq")
_WRITE_BATCH = 256
_LEXICAL_PROBES = 6  # question words searched for verbatim (Chroma's $contains is case-sensitive)
_STOPWORDS = frozenset(
    """a an and are as at be by did do does for from had has have he her his how i in is it its of on or our
    she that the their them they this to was were what when where which who whom whose why will with you your
    about after before into over under than then there these those can could would should may might""".split()
)
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class IngestReport:
    """What an ingest did: chunks produced, of which `added` were new and `skipped` already stored."""

    added: int = 0
    skipped: int = 0
    chunks: int = 0

    def __add__(self, other: IngestReport) -> IngestReport:
        return IngestReport(self.added + other.added, self.skipped + other.skipped, self.chunks + other.chunks)


@dataclass(frozen=True)
class _Row:
    """One document to ingest, its tenant already validated."""

    tenant: str
    source: str
    text: str
    domain: str | None = None


def check_tenant(tenant: str) -> str:
    """`tenant` if it is a valid tenant name, else InvalidRequest."""
    if not isinstance(tenant, str) or not TENANT_RE.match(tenant):
        raise InvalidRequest(f"invalid tenant name {tenant!r}: must match {TENANT_RE.pattern}")
    return tenant


def chunk_id(tenant: str, text: str) -> str:
    """Content address of a chunk within a tenant: re-ingesting the same text adds nothing."""
    return hashlib.sha256(f"{tenant}\0{text}".encode()).hexdigest()


def chunk_text(text: str, max_chars: int, overlap_sentences: int = 0) -> list[str]:
    """Pack whole sentences into chunks of at most `max_chars`, repeating `overlap_sentences` between them."""
    sentences = [piece for s in split_sentences(text) for piece in _split_long(s, max_chars)]
    chunks: list[str] = []
    current: list[str] = []
    for sentence in sentences:
        if current and _joined_len(current + [sentence]) > max_chars:
            chunks.append(" ".join(current))
            current = current[-overlap_sentences:] if overlap_sentences else []
            while current and _joined_len(current + [sentence]) > max_chars:
                current.pop(0)
        current.append(sentence)
    if current:
        chunks.append(" ".join(current))
    return chunks


def _joined_len(parts: list[str]) -> int:
    return sum(len(p) for p in parts) + len(parts) - 1


def _split_long(sentence: str, max_chars: int) -> list[str]:
    """A sentence longer than `max_chars` split at spaces (a single overlong word is cut hard)."""
    pieces: list[str] = []
    for word in sentence.split():
        while len(word) > max_chars:
            pieces.append(word[:max_chars])
            word = word[max_chars:]
        if pieces and len(pieces[-1]) + 1 + len(word) <= max_chars:
            pieces[-1] += " " + word
        elif word:
            pieces.append(word)
    return pieces


def content_words(text: str) -> list[str]:
    """The distinct non-stopword words of `text`, as written, in order."""
    seen: dict[str, str] = {}
    for word in _WORD.findall(text):
        if word.lower() not in _STOPWORDS:
            seen.setdefault(word.lower(), word)
    return list(seen.values())


def lexical_score(words: Sequence[str], text: str) -> float:
    """Fraction of `words` (case-insensitive) that occur as words in `text`."""
    if not words:
        return 0.0
    present = {w.lower() for w in _WORD.findall(text)}
    return sum(w.lower() in present for w in words) / len(words)


def _input_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files to ingest: named files as they are, folders searched recursively for text and Parquet."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = (p for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith("."))
            files.extend(p for p in found if p.suffix.lower() in TEXT_SUFFIXES + PARQUET_SUFFIXES)
        elif not path.exists():
            raise BadInputFile(f"{path}: no such file or folder", details={"file": str(path)})
        elif path.suffix.lower() not in TEXT_SUFFIXES + PARQUET_SUFFIXES:
            raise BadInputFile(f"{path}: not a .txt, .md or .parquet file", details={"file": str(path)})
        else:
            files.append(path)
    return files


def _read_text_file(path: Path, tenant: str, domain: str | None) -> list[_Row]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputFile(f"{path}: unreadable text file: {e}", details={"file": str(path)}) from e
    return [_Row(tenant=tenant, source=str(path), text=text, domain=domain)]


def _read_parquet(path: Path, tenant: str, domain: str | None) -> list[_Row]:
    """Rows of a Parquet file: a `text` column; optional `source`, `domain`, `tenant` columns override defaults."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a file that is not Parquet
        raise BadInputFile(f"{path}: unreadable Parquet file: {e}", details={"file": str(path)}) from e
    if "text" not in table.column_names:
        details = {"file": str(path), "column": "text", "columns": table.column_names}
        raise BadInputFile(f"{path}: missing column 'text' (has {table.column_names})", details=details)
    columns = {
        n: table.column(n).to_pylist() for n in ("text", "source", "domain", "tenant") if n in table.column_names
    }

    def cell(name: str, i: int) -> Any:
        return columns[name][i] if name in columns else None

    rows = []
    for i, text in enumerate(columns["text"]):
        if not text:
            continue
        row_tenant = cell("tenant", i) or tenant
        if not isinstance(row_tenant, str) or not TENANT_RE.match(row_tenant):
            details = {"file": str(path), "column": "tenant", "row": i}
            raise BadInputFile(f"{path}: row {i}: invalid tenant {row_tenant!r} in column 'tenant'", details=details)
        source = cell("source", i) or f"{path}#{i}"
        rows.append(_Row(tenant=row_tenant, source=str(source), text=str(text), domain=cell("domain", i) or domain))
    return rows


def document_batches(
    paths: Iterable[str | Path], *, tenant: str, domain: str | None = None, max_bytes: int = 48_000
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The files' documents as (tenant, documents) batches for POST /v1/documents, each under `max_bytes` of
    text (the server refuses larger bodies). Every file is read and checked first, as `ingest_paths` does; a
    text longer than `max_bytes` is sent as consecutive whole-sentence pieces of the same source."""
    check_tenant(tenant)
    rows: list[_Row] = []
    for path in _input_files(paths):
        reader = _read_parquet if path.suffix.lower() in PARQUET_SUFFIXES else _read_text_file
        rows.extend(reader(path, tenant, domain))
    batch: list[dict[str, Any]] = []
    size, current = 0, rows[0].tenant if rows else tenant
    for row in rows:
        for piece in _pieces(row.text, max_bytes):
            doc = {"text": piece, "source": row.source, **({"domain": row.domain} if row.domain else {})}
            cost = len(piece.encode()) + len(row.source.encode()) + 64
            if batch and (row.tenant != current or size + cost > max_bytes or len(batch) >= 500):
                yield current, batch
                batch, size = [], 0
            batch.append(doc)
            size += cost
            current = row.tenant
    if batch:
        yield current, batch


def _pieces(text: str, max_bytes: int) -> list[str]:
    """`text` whole when small enough, else packed whole sentences (a sentence too long is cut at spaces)."""
    if len(text.encode()) <= max_bytes:
        return [text]
    return chunk_text(text, max_bytes // 4)  # up to 4 bytes a character in UTF-8


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
            config.collection, embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
        )
        self._write_lock = threading.Lock()
        self._tenants_seen: set[str] = set()

    # ---- ingest -------------------------------------------------------------------------------

    def ingest_texts(self, docs: Iterable[tuple[str, str]], *, tenant: str, domain: str | None = None) -> IngestReport:
        """Chunk, embed and store (source, text) pairs for `tenant`; already stored chunks are skipped."""
        self._require_allowed(check_tenant(tenant))
        return self._ingest_rows([_Row(tenant=tenant, source=s, text=t, domain=domain) for s, t in docs])

    def ingest_paths(self, paths: Iterable[str | Path], *, tenant: str, domain: str | None = None) -> IngestReport:
        """Ingest .txt/.md files, Parquet files and folders of them (recursive).

        Every file is read and checked before anything is written, so a bad file (BadInputFile naming the
        file and column) leaves the store as it was. A Parquet `tenant` column overrides `tenant` per row.
        """
        self._require_allowed(check_tenant(tenant))
        rows: list[_Row] = []
        for path in _input_files(paths):
            reader = _read_parquet if path.suffix.lower() in PARQUET_SUFFIXES else _read_text_file
            rows.extend(reader(path, tenant, domain))
        for t in sorted({r.tenant for r in rows}):
            self._require_allowed(t)
        return self._ingest_rows(rows)

    def _ingest_rows(self, rows: Sequence[_Row]) -> IngestReport:
        records: dict[str, tuple[str, dict[str, Any]]] = {}
        total = 0
        opts = self.config.chunking
        for row in rows:
            for index, text in enumerate(chunk_text(row.text, opts.max_chars, opts.overlap_sentences)):
                total += 1
                meta: dict[str, Any] = {"source": row.source, "tenant": row.tenant, "chunk": index}
                if row.domain:
                    meta["domain"] = row.domain
                records.setdefault(chunk_id(row.tenant, text), (text, meta))
        ids = list(records)
        added = 0
        with self._write_lock:
            for start in range(0, len(ids), _WRITE_BATCH):
                added += self._add_new(ids[start : start + _WRITE_BATCH], records)
        self._tenants_seen.update(meta["tenant"] for _, meta in records.values())
        log.info("ingested %d chunks: %d new, %d already stored", total, added, total - added)
        return IngestReport(added=added, skipped=total - added, chunks=total)

    def _add_new(self, ids: list[str], records: dict[str, tuple[str, dict[str, Any]]]) -> int:
        stored = set(self._collection.get(ids=ids, include=[])["ids"])
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
        w = self.config.lexical_weight
        fused = [replace(c, score=(1 - w) * c.score + w * lexical_score(words, c.text)) for c in candidates]
        fused.sort(key=lambda c: (-c.score, c.id))
        return self.relevant(fused[:top_n])

    def relevant(self, ranked: list[Chunk]) -> list[Chunk]:
        """The config's relevance filters (`min_score`, then `score_margin`) over a best-first ranking."""
        floor = self.config.min_score
        kept = ranked if floor is None else [c for c in ranked if c.score >= floor]
        margin = self.config.score_margin
        if margin is not None and kept:
            kept = [c for c in kept if c.score >= kept[0].score - margin]
        return kept

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
        raise UnknownTenant(f"unknown tenant {tenant!r}: it has no documents", details={"tenant": tenant})

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
    longest = sorted((w for w in words if len(w) >= 3), key=len, reverse=True)[:_LEXICAL_PROBES]
    variants = sorted({v for w in longest for v in (w, w.lower(), w.capitalize())})
    clauses = [{"$contains": v} for v in variants]
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$or": clauses}


def _connect(config: RetrievalConfig) -> Any:
    """An HttpClient when a server is configured, else an embedded PersistentClient; telemetry off."""
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if config.host:
        return chromadb.HttpClient(host=config.host, port=config.port, settings=settings)
    Path(config.path).mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=config.path, settings=settings)
