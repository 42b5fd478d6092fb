"""The files to ingest: finding them (text and Parquet, folders recursively) and reading them as texts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from council.errors import BadInputFile
from council.retrieval import check_tenant, chunk_text, is_tenant_name

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
PARQUET_SUFFIXES = (".parquet", ".pq")
KINDS = "text (.txt, .md, .markdown) or Parquet (.parquet, .pq)"  # what the messages name


@dataclass(frozen=True)
class SourceText:
    """One document to ingest, its tenant already validated."""

    tenant: str
    source: str
    text: str
    domain: str | None = None


def find_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files to ingest: named files as they are, folders searched recursively (sorted, hidden files left out)
    for text and Parquet files. BadInputFile names a path that is missing or of another kind."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = (p for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith("."))
            files.extend(p for p in found if p.suffix.lower() in TEXT_SUFFIXES + PARQUET_SUFFIXES)
        elif not path.exists():
            raise BadInputFile(f"{path}: no such file or folder", details={"file": str(path)})
        elif path.suffix.lower() not in TEXT_SUFFIXES + PARQUET_SUFFIXES:
            raise BadInputFile(f"{path}: not a {KINDS} file", details={"file": str(path)})
        else:
            files.append(path)
    return files


def is_parquet(path: Path) -> bool:
    """True for a Parquet file (by its suffix)."""
    return path.suffix.lower() in PARQUET_SUFFIXES


def read_file(path: Path, tenant: str, domain: str | None) -> list[SourceText]:
    """The documents of one file: a text file is one; a Parquet file's `text` column gives one per row."""
    return read_parquet(path, tenant, domain) if is_parquet(path) else read_text_file(path, tenant, domain)


def read_files(paths: Iterable[str | Path], tenant: str, domain: str | None) -> list[SourceText]:
    """Every document of every file found under `paths`, all read (and checked) before the caller stores any."""
    return [doc for path in find_files(paths) for doc in read_file(path, tenant, domain)]


def read_text_file(path: Path, tenant: str, domain: str | None) -> list[SourceText]:
    """A UTF-8 text file as one document."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputFile(f"{path}: unreadable text file: {e}", details={"file": str(path)}) from e
    return [SourceText(tenant=tenant, source=str(path), text=text, domain=domain)]


def read_parquet(path: Path, tenant: str, domain: str | None) -> list[SourceText]:
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
        if not is_tenant_name(row_tenant):
            details = {"file": str(path), "column": "tenant", "row": i}
            raise BadInputFile(f"{path}: row {i}: invalid tenant {row_tenant!r} in column 'tenant'", details=details)
        source = cell("source", i) or f"{path}#{i}"
        row_domain = cell("domain", i) or domain
        rows.append(SourceText(tenant=row_tenant, source=str(source), text=str(text), domain=row_domain))
    return rows


def check_readable(files: Sequence[Path]) -> None:
    """Fail before any work starts: an unreadable file, a Parquet file without a `text` column or with an
    invalid name in its `tenant` column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for f in files:
        details: dict[str, object] = {"file": str(f)}
        if is_parquet(f):
            try:
                names = pq.read_schema(f).names
            except (OSError, pa.ArrowException) as e:
                message = f"{f}: not a readable Parquet file ({type(e).__name__}: {e})"
                raise BadInputFile(message, details=details) from None
            if "text" not in names:
                details["column"] = "text"
                message = f"{f}: missing required column 'text' (columns: {', '.join(names)})"
                raise BadInputFile(message, details=details)
            if "tenant" in names:
                tenants = pq.read_table(f, columns=["tenant"]).column("tenant").to_pylist()
                bad = next((i for i, t in enumerate(tenants) if t and not is_tenant_name(t)), None)
                if bad is not None:
                    details.update(column="tenant", row=bad)
                    message = f"{f}: row {bad}: invalid tenant {tenants[bad]!r} in column 'tenant'"
                    raise BadInputFile(message, details=details)
        else:
            read_text_file(f, "public", None)


def document_batches(
    paths: Iterable[str | Path], *, tenant: str, domain: str | None = None, max_bytes: int = 48_000
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The files' documents as (tenant, documents) batches for POST /v1/documents, each under `max_bytes` of
    text (the server refuses larger bodies). Every file is read and checked first, as an ingest does; a text
    longer than `max_bytes` is sent as consecutive whole-sentence pieces of the same source."""
    check_tenant(tenant)
    batch: list[dict[str, Any]] = []
    rows = read_files(paths, tenant, domain)
    size, current = 0, rows[0].tenant if rows else tenant
    for row in rows:
        pieces = [row.text] if len(row.text.encode()) <= max_bytes else chunk_text(row.text, max_bytes // 4)
        for piece in pieces:  # a piece of max_bytes // 4 characters is at most max_bytes in UTF-8
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
