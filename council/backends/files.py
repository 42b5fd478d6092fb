"""The files to ingest: finding them (text and Parquet, folders recursively) and reading them as texts.

Only what the caller gave is read: regular files, named or found under a named folder, never through a
symbolic link, each under a size limit. A folder holding `env.txt -> /proc/self/environ` is refused with that
name; nothing of it is read. `find_files` is the one discovery every reader of input files uses (the store's
ingest, the ingest job, the CLI, the batch job's questions); files are read one at a time and Parquet files a
batch of rows at a time, so no reader holds a corpus in memory.
"""

from __future__ import annotations

import io
import os
import stat
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from council.errors import BadInputFile
from council.retrieval import PUBLIC, check_tenant, chunk_text, is_tenant_name

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
PARQUET_SUFFIXES = (".parquet", ".pq")
KINDS = "text (.txt, .md, .markdown) or Parquet (.parquet, .pq)"  # what the messages name
DEFAULT_MAX_FILE_BYTES = 20 * 1024 * 1024  # retrieval.max_file_bytes
_PARQUET_BATCH_ROWS = 1024


@dataclass(frozen=True)
class SourceText:
    """One document to ingest, its tenant already validated."""

    tenant: str
    source: str
    text: str
    domain: str | None = None


def find_files(
    paths: Iterable[str | Path],
    *,
    suffixes: Sequence[str] = TEXT_SUFFIXES + PARQUET_SUFFIXES,
    kinds: str = KINDS,
    max_bytes: int | None = DEFAULT_MAX_FILE_BYTES,
) -> list[Path]:
    """Files to read: named files as they are, folders searched recursively (sorted, hidden files left out) for
    names ending in `suffixes`. BadInputFile names a path that is missing or of another kind, and refuses:
    a symbolic link (named, or found where it would be read or walked), anything but a regular file (a FIFO, a
    device), a file over `max_bytes`, and a file that resolves outside the folder it was found in."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise BadInputFile(f"{path}: no such file or folder", details={"file": str(path)}) from None
        except OSError as e:
            raise BadInputFile(f"{path}: unreadable: {e}", details={"file": str(path)}) from None
        if stat.S_ISDIR(st.st_mode):
            files.extend(_walk(path, tuple(suffixes), max_bytes))
        elif not stat.S_ISLNK(st.st_mode) and path.suffix.lower() not in suffixes:
            raise BadInputFile(f"{path}: not a {kinds} file", details={"file": str(path)})
        else:
            _check_entry(path, st, max_bytes)
            files.append(path)
    return files


def _walk(root: Path, suffixes: tuple[str, ...], max_bytes: int | None) -> list[Path]:
    """The files under `root` to read, depth first in name order (the order of sorted paths); links are never
    followed, and each file found must resolve under `root`."""
    real_root = root.resolve()
    found: list[Path] = []
    stack = [_entries(root)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        path = Path(entry.path)
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            stack.append(_entries(path))
            continue
        if entry.name.startswith("."):
            continue
        taken = path.suffix.lower() in suffixes
        if stat.S_ISLNK(st.st_mode) and (taken or path.is_dir()):
            _check_entry(path, st, max_bytes)  # refused: it names the link and its target
        if not taken or stat.S_ISLNK(st.st_mode):
            continue
        _check_entry(path, st, max_bytes)
        if not path.resolve().is_relative_to(real_root):
            raise _refused(path, f"resolves to {path.resolve()}, outside {root}", "outside_root")
        found.append(path)
    return found


def _entries(folder: Path) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise BadInputFile(f"{folder}: unreadable folder: {e}", details={"file": str(folder)}) from None
    return iter(entries)


def _refused(path: Path, why: str, reason: str, **details: object) -> BadInputFile:
    info: dict[str, object] = {"file": str(path), "reason": reason, **details}
    return BadInputFile(f"{path}: refused: {why}", details=info)


def _check_entry(path: Path, st: os.stat_result, max_bytes: int | None) -> None:
    """Refuse a link, a non-regular file, or a file over `max_bytes` (by its lstat)."""
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        why = f"a symbolic link (to {target}); only regular files are read: name the file itself"
        raise _refused(path, why, "symlink", target=target)
    if not stat.S_ISREG(st.st_mode):
        raise _refused(path, "not a regular file (a FIFO, socket or device); only regular files are read", "special")
    if max_bytes is not None and st.st_size > max_bytes:
        raise _too_large(path, st.st_size, max_bytes)


def _too_large(path: Path, size: int | str, max_bytes: int) -> BadInputFile:
    why = f"{size} bytes, over the limit of {max_bytes} bytes (retrieval.max_file_bytes)"
    return _refused(path, why, "too_large", limit=max_bytes)


def _open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading only if it is a regular file, the final name not followed if it became a link
    since it was found (and a FIFO never blocks the open)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if os.path.islink(path):
            raise _refused(path, "a symbolic link; only regular files are read", "symlink") from None
        raise BadInputFile(f"{path}: unreadable: {e}", details={"file": str(path)}) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _refused(path, "not a regular file; only regular files are read", "special")
    return os.fdopen(fd, "rb")


def is_parquet(path: Path) -> bool:
    """True for a Parquet file (by its suffix)."""
    return path.suffix.lower() in PARQUET_SUFFIXES


def read_file(
    path: Path,
    tenant: str,
    domain: str | None,
    *,
    max_bytes: int | None = DEFAULT_MAX_FILE_BYTES,
    tenant_column: bool = False,
) -> Iterator[SourceText]:
    """The documents of one file: a text file is one; a Parquet file's `text` column gives one per row."""
    if is_parquet(path):
        return read_parquet(path, tenant, domain, max_bytes=max_bytes, tenant_column=tenant_column)
    return iter(read_text_file(path, tenant, domain, max_bytes=max_bytes))


def iter_documents(
    files: Iterable[Path],
    tenant: str,
    domain: str | None,
    *,
    max_bytes: int | None = DEFAULT_MAX_FILE_BYTES,
    tenant_column: bool = False,
) -> Iterator[SourceText]:
    """Every document of `files` (found by `find_files`), one file at a time."""
    for path in files:
        yield from read_file(path, tenant, domain, max_bytes=max_bytes, tenant_column=tenant_column)


def read_text_file(
    path: Path, tenant: str, domain: str | None, *, max_bytes: int | None = DEFAULT_MAX_FILE_BYTES
) -> list[SourceText]:
    """A UTF-8 text file as one document (newlines read as `Path.read_text` reads them)."""
    try:
        with _open_regular(path) as f:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        if max_bytes is not None and len(data) > max_bytes:
            raise _too_large(path, f"more than {max_bytes}", max_bytes)
        text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputFile(f"{path}: unreadable text file: {e}", details={"file": str(path)}) from e
    return [SourceText(tenant=tenant, source=str(path), text=text, domain=domain)]


def read_parquet(
    path: Path,
    tenant: str,
    domain: str | None,
    *,
    max_bytes: int | None = DEFAULT_MAX_FILE_BYTES,
    tenant_column: bool = False,
) -> Iterator[SourceText]:
    """Rows of a Parquet file, a batch at a time: a `text` column; optional `source` and `domain` columns override
    the defaults. A `tenant` column naming another tenant than `tenant` is refused (BadInputFile naming the row)
    unless `tenant_column`: then each row is stored for its column's tenant (an empty cell: for `tenant`).
    A cell of text over `max_bytes` characters is refused like a file that size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with _open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if max_bytes is not None and size > max_bytes:
            raise _too_large(path, size, max_bytes)
        try:
            parquet = pq.ParquetFile(f)
        except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a file that is not Parquet
            raise BadInputFile(f"{path}: unreadable Parquet file: {e}", details={"file": str(path)}) from e
        names = parquet.schema_arrow.names
        if "text" not in names:
            details = {"file": str(path), "column": "text", "columns": names}
            listed = ", ".join(names) or "none"
            raise BadInputFile(f"{path}: missing required column 'text' (columns: {listed})", details=details)
        wanted = [n for n in ("text", "source", "domain", "tenant") if n in names]
        batches = parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=wanted)
        i = 0
        while True:
            try:
                batch = next(batches, None)
            except (OSError, pa.ArrowException) as e:
                raise BadInputFile(f"{path}: unreadable Parquet file: {e}", details={"file": str(path)}) from e
            if batch is None:
                return
            columns = {n: batch.column(n).to_pylist() for n in wanted}
            for j in range(batch.num_rows):
                cells = {n: columns[n][j] for n in wanted}
                row = _parquet_row(path, i, cells, tenant, domain, max_bytes, tenant_column)
                if row is not None:
                    yield row
                i += 1


def _parquet_row(
    path: Path,
    i: int,
    cells: dict[str, Any],
    tenant: str,
    domain: str | None,
    max_bytes: int | None,
    tenant_column: bool,
) -> SourceText | None:
    if not cells["text"]:
        return None
    text = str(cells["text"])
    if max_bytes is not None and len(text) > max_bytes:
        raise _refused(path, f"row {i}: a text of {len(text)} characters, over the limit of {max_bytes} "
                       "(retrieval.max_file_bytes)", "too_large", limit=max_bytes, row=i)  # fmt: skip
    row_tenant = cells.get("tenant") or tenant
    if not is_tenant_name(row_tenant):
        details = {"file": str(path), "column": "tenant", "row": i}
        raise BadInputFile(f"{path}: row {i}: invalid tenant {row_tenant!r} in column 'tenant'", details=details)
    if row_tenant != tenant and not tenant_column:
        details = {"file": str(path), "column": "tenant", "row": i, "tenant": row_tenant}
        why = (f"row {i}: column 'tenant' says {row_tenant!r}, not {tenant!r}, the tenant this ingest is for; to "
               "store each row for the tenant its column names, ask for it (--tenant-column)")  # fmt: skip
        raise BadInputFile(f"{path}: {why}", details=details)
    source = cells.get("source") or f"{path}#{i}"
    return SourceText(row_tenant, str(source), text, cells.get("domain") or domain)


def check_readable(
    files: Sequence[Path],
    tenant: str = PUBLIC,
    *,
    max_bytes: int | None = DEFAULT_MAX_FILE_BYTES,
    tenant_column: bool = False,
) -> Counter[str]:
    """Fail before any work starts: every file is read through as it will be for ingesting (an unreadable or
    refused file, a Parquet file without a `text` column, or whose `tenant` column holds an invalid name or,
    without `tenant_column`, another tenant), one at a time and nothing kept. Returns the documents per tenant
    they would be stored for."""
    tenants: Counter[str] = Counter()
    for doc in iter_documents(files, tenant, None, max_bytes=max_bytes, tenant_column=tenant_column):
        tenants[doc.tenant] += 1
    return tenants


def document_batches(
    paths: Iterable[str | Path],
    *,
    tenant: str,
    domain: str | None = None,
    max_bytes: int = 48_000,
    max_file_bytes: int | None = DEFAULT_MAX_FILE_BYTES,
    tenant_column: bool = False,
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The files' documents as (tenant, documents) batches for POST /v1/documents, each under `max_bytes` of
    text (the server refuses larger bodies). Every file is read and checked first, as an ingest does; a text
    longer than `max_bytes` is sent as consecutive whole-sentence pieces of the same source."""
    check_tenant(tenant)
    files = find_files(paths, max_bytes=max_file_bytes)
    check_readable(files, tenant, max_bytes=max_file_bytes, tenant_column=tenant_column)
    batch: list[dict[str, Any]] = []
    size, current = 0, tenant
    for row in iter_documents(files, tenant, domain, max_bytes=max_file_bytes, tenant_column=tenant_column):
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
