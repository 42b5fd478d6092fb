"""Ingest job: files or Parquet -> chunks -> embeddings in parallel (Ray Data actor pool) -> Chroma, idempotent.

    python -m council.jobs.ingest docs/ more.parquet --tenant acme --config council.yaml

Three stages. (1) Ray Data tasks read and chunk the files in parallel, with the store's own reader
(`backends/files.py`) and chunker (`council.retrieval`). (2) The chunks not yet in the store go through an
actor pool, each actor holding one embedder, in batches. (3) The driver hands the files to
`ChromaRetriever.ingest_paths` with an embedder that answers from the vectors of stage 2: the retriever stays
the one place that decides chunks, ids, metadata and what is already stored, so a second run adds nothing,
and whatever stage 2 did not cover is embedded on the spot rather than missed. The driver is the only writer,
as an embedded Chroma folder requires; with `retrieval.host` set, the store is a Chroma server that any
number of jobs and replicas share.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from council.config import CouncilConfig, RetrievalConfig
from council.jobs._common import EXIT_OK, add_common_args, bad_file, connect_ray, run_main, setup_logging

log = logging.getLogger("council.jobs.ingest")

def file_chunks(
    item: dict[str, Any], *, tenant: str, max_chars: int, overlap: int, max_bytes: int, tenant_column: bool
) -> Iterator[dict[str, Any]]:
    """Ray Data flat_map: one file -> its chunks as rows {id, text}, cut by the retriever's own chunker."""
    from council.backends.files import read_file
    from council.retrieval import chunk_id, chunk_text

    for doc in read_file(Path(item["path"]), tenant, None, max_bytes=max_bytes, tenant_column=tenant_column):
        for chunk in chunk_text(doc.text, max_chars, overlap):
            yield {"id": chunk_id(doc.tenant, chunk), "text": chunk}


class EmbedActor:
    """Ray Data actor: holds one MiniLM embedder and embeds batches of chunk texts."""

    def __init__(self, embedder_path: str | None) -> None:
        from council.backends.embeddings import get_embedder

        self.embedder = get_embedder(embedder_path)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        return {"text": np.asarray(texts, dtype=object), "vector": self.embedder.embed(texts)}


class PrecomputedEmbedder:
    """`Embedder` that answers from vectors computed by the actor pool; anything else is embedded here, lazily."""

    def __init__(self, vectors: dict[str, np.ndarray], embedder_path: str | None) -> None:
        self.vectors = vectors
        self.embedder_path = embedder_path
        self.hits = 0
        self.misses = 0
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        """Vector size: from the precomputed vectors, else from the real embedder."""
        if self._dim is None:
            self._dim = int(next(iter(self.vectors.values())).shape[0]) if self.vectors else self._fallback().dim
        return self._dim

    @dim.setter
    def dim(self, value: int) -> None:
        self._dim = value

    def _fallback(self) -> Any:
        from council.backends.embeddings import get_embedder

        return get_embedder(self.embedder_path)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Rows for `texts` (L2-normalised float32, as the real embedder gives them)."""
        missing = [t for t in texts if t not in self.vectors]
        if missing:
            # Not covered by the pool (the store's reader saw text the chunking stage did not): embed here.
            self.vectors.update(zip(missing, self._fallback().embed(missing), strict=True))
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32, copy=False)


def retrieval_config(args: argparse.Namespace) -> RetrievalConfig:
    """The store to write to: the config file's retrieval section (or the defaults), host/port overridden."""
    retrieval = CouncilConfig.from_yaml(args.config).retrieval if args.config else RetrievalConfig()
    updates = {k: v for k, v in (("host", args.chroma_host), ("port", args.chroma_port)) if v is not None}
    return retrieval.model_copy(update=updates) if updates else retrieval


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The job's command line."""
    p = argparse.ArgumentParser(
        prog="python -m council.jobs.ingest",
        description="Chunk, embed (in parallel, with Ray Data) and store documents for one tenant. Idempotent: "
        "chunks are addressed by their content, so ingesting the same files again adds nothing.",
    )
    p.add_argument("paths", nargs="+", help="Files or folders: .txt/.md, or .parquet with a `text` column "
                   "(and an optional `tenant` column: see --tenant-column).")
    p.add_argument("--tenant", required=True, help="The tenant that owns these documents.")
    p.add_argument("--tenant-column", action="store_true", help="Store each Parquet row for the tenant its "
                   "`tenant` column names (an empty cell: --tenant). Without it, a column naming another tenant "
                   "is refused before anything is stored.")
    p.add_argument("--domain", default=None, help="Domain tag stored with each chunk.")
    p.add_argument("--config", default=None, help="Council YAML whose `retrieval` section names the store.")
    p.add_argument("--chroma-host", default=None, help="Chroma server host (overrides the config).")
    p.add_argument("--chroma-port", type=int, default=None, help="Chroma server port (overrides the config).")
    p.add_argument("--concurrency", type=int, default=2, help="Embedding actors.")
    p.add_argument("--batch-size", type=int, default=64, help="Chunks per embedding batch.")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per embedding actor.")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per embedding actor.")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.concurrency < 1 or args.batch_size < 1:
        p.error("--concurrency and --batch-size must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ingest job; returns the process exit code."""
    from council.backends.chroma import ChromaRetriever
    from council.backends.files import KINDS, check_readable, find_files
    from council.retrieval import check_tenant

    args = parse_args(argv)
    setup_logging(args.verbose)
    check_tenant(args.tenant)
    retrieval = retrieval_config(args)
    files = find_files(args.paths, max_bytes=retrieval.max_file_bytes)
    if not files:
        raise bad_file(", ".join(map(str, args.paths)), f"no {KINDS} files there")
    tenants = check_readable(files, args.tenant, max_bytes=retrieval.max_file_bytes, tenant_column=args.tenant_column)
    where = f"Chroma server {retrieval.host}:{retrieval.port}" if retrieval.host else f"Chroma folder {retrieval.path}"
    log.info("ingesting %d file(s) for %s into %s", len(files), _for_tenants(args.tenant, tenants), where)
    connect_ray(args.address)
    t0 = time.perf_counter()
    chunks = _chunk(files, args, retrieval)
    # Only the chunks the store lacks are embedded.
    embedder = PrecomputedEmbedder({}, retrieval.embedder)
    retriever = ChromaRetriever(retrieval, embedder)
    stored = retriever.stored_ids(list(chunks))
    todo = sorted({text for cid, text in chunks.items() if cid not in stored})
    log.info("%d chunk(s) from %d file(s): %d already stored, %d to embed",
             len(chunks), len(files), len(stored), len(todo))
    embedder.vectors = _embed(todo, args, retrieval)
    pooled = len(embedder.vectors)
    report = retriever.ingest_paths(files, tenant=args.tenant, domain=args.domain, tenant_column=args.tenant_column)
    elapsed = time.perf_counter() - t0
    log.info(
        "done in %.1fs: %d chunk(s) for %s, %d added, %d already stored; %d embedded by the pool, %d here; "
        "%d in the store",
        elapsed, report.chunks, _for_tenants(args.tenant, report.tenants), report.added, report.skipped, pooled,
        embedder.misses, retriever.count(),
    )
    retriever.close()
    return EXIT_OK


def _for_tenants(tenant: str, counts: Mapping[str, int]) -> str:
    """"tenant 'acme'" when everything is for --tenant, else every tenant with its count."""
    if set(counts) <= {tenant}:
        return f"tenant {tenant!r}"
    return "tenants " + ", ".join(f"{t!r} ({n})" for t, n in sorted(counts.items()))


def _chunk(files: Sequence[Path], args: argparse.Namespace, retrieval: RetrievalConfig) -> dict[str, str]:
    """Stage 1: chunk id -> text for every chunk of every file (read and chunked in parallel tasks)."""
    import ray

    chunker = partial(
        file_chunks,
        tenant=args.tenant,
        max_chars=retrieval.chunking.max_chars,
        overlap=retrieval.chunking.overlap_sentences,
        max_bytes=retrieval.max_file_bytes,
        tenant_column=args.tenant_column,
    )
    ds = ray.data.from_items([{"path": str(f.resolve())} for f in files]).flat_map(chunker, num_cpus=0.25)
    return {row["id"]: row["text"] for row in ds.iter_rows()}


def _embed(texts: list[str], args: argparse.Namespace, retrieval: RetrievalConfig) -> dict[str, np.ndarray]:
    """Stage 2: text -> vector for `texts`, through an actor pool of embedders (progress logged per batch)."""
    import ray

    if not texts:
        return {}
    ds = ray.data.from_items([{"text": t} for t in texts]).map_batches(
        EmbedActor,
        fn_constructor_kwargs={"embedder_path": retrieval.embedder},
        batch_size=args.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=args.concurrency),
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
    )
    vectors: dict[str, np.ndarray] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for text, vector in zip(batch["text"], batch["vector"], strict=True):
            vectors[str(text)] = np.asarray(vector, dtype=np.float32)
        log.info("progress: embedded %d/%d chunk(s)", len(vectors), len(texts))
    return vectors


if __name__ == "__main__":
    run_main(main)
