"""`council ingest`'s two ways of storing: into a store opened here, or through a running council's HTTP API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from council.errors import CouncilError

__all__ = ["IngestJob", "ingest_here", "ingest_served"]

console = Console()


@dataclass(frozen=True)
class IngestJob:
    """What `council ingest` stores: the files found, for whom, and how they are read."""

    files: list[Path]
    tenant: str
    domain: str | None
    tenant_column: bool
    max_file_bytes: int


def _for_tenants(job: IngestJob, counts: dict[str, int], unit: str) -> str:
    """"tenant 'acme'" when every document went to --tenant, else each tenant with its count."""
    if set(counts) <= {job.tenant}:
        return f"tenant {job.tenant!r}"
    return "tenants " + ", ".join(f"{t!r} ({n} {unit})" for t, n in sorted(counts.items()))


def ingest_here(retrieval: Any, job: IngestJob) -> None:
    """Open the store in this process (locking an embedded folder) and ingest file by file."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from council.backends.chroma import ChromaRetriever, IngestReport

    done, by_column = IngestReport(), job.tenant_column
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with console.status("opening the store and loading the embedder"):
        retriever = ChromaRetriever(retrieval, role="council ingest")  # an embedded folder: locked, or StoreBusy
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("ingesting", total=len(job.files))
            for f in job.files:
                bar.update(task, description=f"ingesting {f.name}")
                done += retriever.ingest_paths([f], tenant=job.tenant, domain=job.domain, tenant_column=by_column)
                bar.advance(task)
        total = retriever.count()
    finally:
        retriever.close()
    where = f"{retrieval.host}:{retrieval.port}" if retrieval.host else retrieval.path
    console.print(
        f"[green]ingested[/] {len(job.files)} files for {_for_tenants(job, done.tenants, 'chunks')}: "
        f"{done.added} chunks added, {done.skipped} already there → {where} ({total} chunks in all)",
        highlight=False,
    )


def ingest_served(url: str, job: IngestJob, *, store: str | None) -> None:
    """Send the files' documents to a running council (POST /v1/documents), in requests under its body limit.

    With `store`, the server must say it serves that embedded folder (GET /v1/status) before anything is sent.
    """
    from council.backends.files import document_batches
    from council.client import Client

    with Client(url, timeout_s=300) as client:
        if store is not None:
            served = (client.status().get("store") or {}).get("path")
            if served != store:
                raise CouncilError(
                    f"the store {store} is held by a council server, but the council at {url} serves "
                    f"{served or 'another store'}: give that server's address with --url"
                )
        totals = {"added": 0, "skipped": 0, "chunks": 0}
        per_tenant: dict[str, int] = {}
        batches = document_batches(
            job.files, tenant=job.tenant, domain=job.domain, max_file_bytes=job.max_file_bytes,
            tenant_column=job.tenant_column,
        )  # fmt: skip
        for row_tenant, batch in batches:
            report = client.ingest(batch, tenant=row_tenant)
            per_tenant[row_tenant] = per_tenant.get(row_tenant, 0) + len(batch)
            totals = {k: totals[k] + int(report.get(k, 0)) for k in totals}
        total = client.status().get("chunks")
    console.print(
        f"[green]ingested[/] {len(job.files)} files through {url} for {_for_tenants(job, per_tenant, 'documents')}: "
        f"{totals['added']} chunks added, {totals['skipped']} already there ({total} chunks in all)",
        highlight=False,
    )
