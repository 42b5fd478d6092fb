"""The batch job's files: the questions it reads (checked before anything runs) and the answer parts it writes.

Every part has one explicit schema, is named by a hash of the ids it holds, and is written whole or not at all
(see `council.jobs.batch` for how that makes a rerun resume exactly once).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from council.backends.files import PARQUET_SUFFIXES, find_files
from council.jobs._common import bad_file, write_parquet_atomic

REQUIRED_COLUMNS = ("id", "question")
OPTIONAL_COLUMNS = ("tenant", "k")
PART_GLOB = "part-*.parquet"

MEMBER_TYPE = pa.struct(
    [
        ("name", pa.string()),
        ("route_score", pa.float64()),
        ("answer", pa.string()),
        ("error", pa.string()),
        ("cancelled", pa.bool_()),
        ("latency_s", pa.float64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("consistency", pa.float64()),
    ]
)
SOURCE_TYPE = pa.struct(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("tenant", pa.string()),
        ("domain", pa.string()),
        ("score", pa.float64()),
        ("text", pa.string()),
    ]
)
# One explicit schema for every part: parts written by different runs always concatenate.
OUTPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("question", pa.string()),
        ("tenant", pa.string()),
        ("answer", pa.string()),
        ("agreement", pa.float64()),
        ("entropy", pa.float64()),
        ("abstained", pa.bool_()),
        ("degraded", pa.bool_()),
        ("members", pa.list_(MEMBER_TYPE)),
        ("sources", pa.list_(SOURCE_TYPE)),
        ("latency_ms", pa.float64()),
        ("error", pa.string()),
    ]
)

@dataclass(frozen=True)
class Questions:
    """What the input holds: its Parquet files, the columns the job reads, and every id."""

    files: list[str]
    columns: list[str]
    ids: pa.ChunkedArray


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _check_schema(path: str, schema: pa.Schema) -> None:
    names = schema.names
    for col in REQUIRED_COLUMNS:
        if col not in names:
            raise bad_file(path, f"missing required column {col!r} (columns: {', '.join(names) or 'none'})", column=col)
        if not _is_string(schema.field(col).type):
            raise bad_file(path, f"column {col!r} must be a string column, not {schema.field(col).type}", column=col)
    if "tenant" in names and not _is_string(t := schema.field("tenant").type):
        raise bad_file(path, f"column 'tenant' must be a string column, not {t}", column="tenant")
    if "k" in names and not pa.types.is_integer(t := schema.field("k").type):
        raise bad_file(path, f"column 'k' must be an integer column, not {t}", column="k")


def inspect_input(path: str | Path) -> Questions:
    """Check the input (one Parquet file or a folder of them) before anything runs or is written.

    Raises BadInputFile naming the file, and the column where one is at fault: unreadable Parquet,
    a missing or mistyped column, a null or repeated id.
    """
    root = Path(path)
    # The ingest's own discovery: regular files only, never through a link, each under the given folder.
    files = [str(f) for f in find_files([root], suffixes=PARQUET_SUFFIXES, kinds="Parquet", max_bytes=None)]
    if not files:
        raise bad_file(root, "the folder holds no .parquet files")
    id_chunks: list[pa.ChunkedArray] = []
    present: list[set[str]] = []
    for f in files:
        try:
            schema = pq.read_schema(f)
            _check_schema(f, schema)
            id_chunks.append(pq.read_table(f, columns=["id"]).column("id").cast(pa.string()))
        except (OSError, pa.ArrowException) as e:
            raise bad_file(f, f"not a readable Parquet file ({type(e).__name__}: {e})") from None
        present.append(set(schema.names))
    ids = pa.chunked_array([c for chunk in id_chunks for c in chunk.chunks], type=pa.string())
    _check_ids(str(root), ids)
    optional = [c for c in OPTIONAL_COLUMNS if all(c in p for p in present)]
    return Questions(files=files, columns=[*REQUIRED_COLUMNS, *optional], ids=ids)


def _check_ids(path: str, ids: pa.ChunkedArray) -> None:
    if ids.null_count:
        raise bad_file(path, f"column 'id' has {ids.null_count} null value(s); every question needs an id", column="id")
    counts = pc.value_counts(ids)
    repeated = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    if len(repeated):
        sample = ", ".join(repr(v["values"]) for v in repeated.to_pylist()[:5])
        raise bad_file(
            path, f"column 'id' repeats {len(repeated)} id(s), e.g. {sample}; ids must be unique", column="id"
        )


def answered_ids(out: Path) -> list[str]:
    """Every id in the finished parts under `out` (with repeats, so a caller can count them)."""
    ids: list[str] = []
    for part in sorted(out.glob(PART_GLOB)):
        try:
            ids.extend(pq.read_table(part, columns=["id"]).column("id").to_pylist())
        except (OSError, pa.ArrowException) as e:
            raise bad_file(part, f"is not a readable answers part ({e}); move it away to recompute its rows") from None
    return ids


def errored_ids(out: Path) -> set[str]:
    """The ids whose row in a finished part under `out` records an error instead of an answer."""
    errored: set[str] = set()
    for part in sorted(out.glob(PART_GLOB)):
        table = _read_part(part, ["id", "error"])
        errored.update(table.filter(pc.is_valid(table["error"]))["id"].to_pylist())
    return errored


def take_back_errors(out: Path, ids: set[str]) -> int:
    """Remove from the finished parts under `out` the rows of `ids` that record an error, so that a resumed run
    asks those questions again; returns how many rows were taken back.

    Each part is rewritten in place, atomically (`write_parquet_atomic`), or deleted when nothing is left in it:
    a crash leaves every part as it was or without its errored rows, so no id is ever in the output twice (a row
    taken back and not yet answered again is asked by the next run, like any missing id).
    """
    taken = 0
    wanted = pa.array(sorted(ids), type=pa.string())
    for part in sorted(out.glob(PART_GLOB)):
        table = _read_part(part, None)
        drop = pc.and_(pc.is_valid(table["error"]), pc.is_in(table["id"], value_set=wanted))
        n = pc.sum(drop.cast(pa.int64())).as_py() or 0
        if not n:
            continue
        keep = table.filter(pc.invert(drop))
        if keep.num_rows:
            write_parquet_atomic(keep, part)
        else:
            part.unlink()
        taken += n
    return taken


def _read_part(part: Path, columns: list[str] | None) -> pa.Table:
    try:
        return pq.read_table(part, columns=columns, schema=OUTPUT_SCHEMA)
    except (OSError, pa.ArrowException) as e:
        raise bad_file(part, f"is not a readable answers part ({e}); move it away to recompute its rows") from None


def shard_id(ids: Sequence[str]) -> str:
    """A part's name: a hash of the ids it holds, so rewriting the same batch replaces, never duplicates."""
    digest = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()
    return digest[:20]


def read_answers(out: str | Path) -> pa.Table:
    """All finished parts under `out` as one table (empty with the output schema when there are none)."""
    parts = sorted(Path(out).glob(PART_GLOB))
    if not parts:
        return OUTPUT_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(p, schema=OUTPUT_SCHEMA) for p in parts])


def answer_row(row: dict[str, Any], answer: dict[str, Any] | None, error: str | None = None) -> dict[str, Any]:
    """One output row from an input row and the council's answer dict (or the error that replaced it)."""
    out: dict[str, Any] = {
        "id": row["id"],
        "question": row["question"],
        "tenant": row.get("tenant") or "public",
        "error": error,
    }
    if answer is None:
        return {**out, "members": [], "sources": []}
    members = [{f.name: m.get(f.name) for f in MEMBER_TYPE} for m in answer.get("members", ())]
    sources = [{f.name: s.get(f.name) for f in SOURCE_TYPE} for s in answer.get("sources", ())]
    return {
        **out,
        "answer": answer.get("answer"),
        "agreement": answer.get("agreement"),
        "entropy": answer.get("entropy"),
        "abstained": answer.get("abstained"),
        "degraded": answer.get("degraded"),
        "members": members,
        "sources": sources,
        "latency_ms": (answer.get("timings") or {}).get("total"),
    }
