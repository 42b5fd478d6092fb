"""Ingest reads only what it was given (issue 16, finding 5): no symbolic link, no FIFO or device, nothing over the
size limit, nothing outside the folder named; files are read and written one at a time.

The attack: a folder with `env.txt -> /proc/self/environ` stored the process environment (on KubeRay,
`RAY_AUTH_TOKEN`) in the tenant's store, where a question then retrieved it.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from council.backends import chroma
from council.backends.chroma import ChromaRetriever, IngestReport
from council.backends.files import document_batches, find_files, read_file
from council.config import RetrievalConfig
from council.errors import BadInputFile
from council.jobs.batch_files import inspect_input

MARKER = "COUNCIL_TEST_SECRET_7741"


class TinyEmbedder:
    """Four dimensions, from the text's length: enough to store and count chunks without a model."""

    dim = 4

    def embed(self, texts: list[str]) -> np.ndarray:
        rows = np.array([[len(t) % 7 + 1, len(t) % 5 + 1, 1.0, 2.0] for t in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True) if len(texts) else np.zeros((0, 4), np.float32)


@pytest.fixture
def store(tmp_path: Path) -> ChromaRetriever:
    retriever = ChromaRetriever(RetrievalConfig(path=str(tmp_path / "chroma")), embedder=TinyEmbedder())
    yield retriever
    retriever.close()


def stored_texts(store: ChromaRetriever) -> list[str]:
    return list(store._collection.get(include=["documents"])["documents"] or [])


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("The river Varn flows north. The mill stands by the bridge.")
    (folder / "sub" / "b.md").write_text("# Guild\nThe guild of glassmakers was founded in 812.")
    return folder


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_a_link_to_the_process_environment_stores_nothing(store: ChromaRetriever, docs: Path) -> None:
    (docs / "env.txt").symlink_to("/proc/self/environ")
    with pytest.raises(BadInputFile, match=r"env\.txt: refused: a symbolic link \(to /proc/self/environ\)") as e:
        store.ingest_paths([docs], tenant="acme")
    assert e.value.details == {
        "file": str(docs / "env.txt"), "reason": "symlink", "target": "/proc/self/environ"
    }  # fmt: skip
    # Before, the environment was stored as a document: every variable of the ingesting process, NULs and all.
    assert store.count() == 0 and not any("PATH=" in t for t in stored_texts(store))


def test_a_link_to_a_file_outside_the_root_is_refused_by_name(store: ChromaRetriever, docs: Path, tmp_path: Path):
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text(f"The vault code is {MARKER}.")
    (docs / "sub" / "leak.txt").symlink_to(secret)
    for attempt in ([docs], [docs / "sub" / "leak.txt"]):  # found in a folder, or named (a shell glob)
        with pytest.raises(BadInputFile, match=r"sub/leak\.txt: refused: a symbolic link") as e:
            find_files(attempt)
        assert e.value.details["target"] == str(secret)
        with pytest.raises(BadInputFile, match="leak.txt"):
            store.ingest_paths(attempt, tenant="acme")
    assert store.count() == 0  # a.txt and b.md were not written either: the ingest is refused whole
    with pytest.raises(BadInputFile, match="leak.txt"):
        list(document_batches([docs], tenant="acme"))  # what `council ingest --url` sends


def test_a_linked_folder_is_refused_and_never_walked(docs: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "c.txt").write_text(MARKER)
    (docs / "more").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(BadInputFile, match=r"more: refused: a symbolic link"):
        find_files([docs])
    (docs / "more").unlink()
    (docs / "README").symlink_to(elsewhere / "c.txt")  # a link that would not be read anyway is let be
    assert [p.name for p in find_files([docs])] == ["a.txt", "b.md"]


def test_the_cli_refuses_the_link_by_name(docs: Path, tmp_path: Path) -> None:
    from council.cli import app

    (docs / "env.txt").symlink_to(tmp_path)
    config = tmp_path / "council.yaml"
    config.write_text(f"specialists: [{{name: m, model: m}}]\nretrieval: {{path: {tmp_path / 'store'}}}\n")
    result = CliRunner().invoke(app, ["ingest", str(docs), "--tenant", "acme", "--config", str(config)])
    assert result.exit_code == 1 and "env.txt: refused: a symbolic link" in result.output, result.output
    assert not (tmp_path / "store").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_and_never_blocks(docs: Path) -> None:
    """A FIFO named like a text file would block the reader forever; found or named, it is refused."""
    os.mkfifo(docs / "pipe.txt")
    outcome: list[BaseException] = []

    def attempt(paths: list[Path]) -> None:
        try:
            for f in find_files(paths):
                list(read_file(f, "acme", None))
        except BaseException as e:
            outcome.append(e)

    for paths in ([docs], [docs / "pipe.txt"]):
        worker = threading.Thread(target=attempt, args=(paths,), daemon=True)
        worker.start()
        worker.join(10)
        assert not worker.is_alive(), "reading the FIFO blocked"
        assert outcome, f"{paths}: the FIFO was skipped in silence"
        assert isinstance(outcome[-1], BadInputFile) and "pipe.txt: refused: not a regular file" in str(outcome[-1])
        outcome.clear()


def test_a_file_over_the_limit_is_refused_naming_file_and_limit(tmp_path: Path) -> None:
    store = ChromaRetriever(RetrievalConfig(path=str(tmp_path / "chroma"), max_file_bytes=100), embedder=TinyEmbedder())
    try:
        big = tmp_path / "big.txt"
        big.write_text("word " * 21)  # 105 bytes
        with pytest.raises(BadInputFile, match=r"big\.txt: refused: 105 bytes, over the limit of 100 bytes") as e:
            store.ingest_paths([big], tenant="acme")
        assert e.value.details["limit"] == 100
        cells = tmp_path / "cells.parquet"  # a small file may still hold a long text: the cell is measured too
        pq.write_table(pa.table({"text": ["short.", "x" * 50_000]}), cells, compression="zstd")
        assert cells.stat().st_size < 10_000
        store.config = store.config.model_copy(update={"max_file_bytes": 10_000})
        with pytest.raises(BadInputFile, match=r"cells\.parquet: refused: row 1: a text of 50000 characters, over the"):
            store.ingest_paths([cells], tenant="acme")
        assert store.count() == 0
    finally:
        store.close()


def test_files_are_written_as_they_are_read(
    store: ChromaRetriever, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small write batches: the store is written many times in one ingest, and the report is what one write of
    the whole corpus gave (a text repeated across files is stored once)."""
    (docs / "sub" / "copy.txt").write_text((docs / "a.txt").read_text())
    rows = {"text": [f"Record {i} of the ledger. It is sentence {i}." for i in range(40)]}
    pq.write_table(pa.table(rows), docs / "ledger.parquet")
    writes: list[int] = []
    add_new = store._add_new

    def counting(ids: list[str], records: dict) -> int:
        writes.append(len(ids))
        return add_new(ids, records)

    monkeypatch.setattr(chroma, "_WRITE_BATCH", 4)
    monkeypatch.setattr(store, "_add_new", counting)
    report = store.ingest_paths([docs], tenant="acme")
    assert report == IngestReport(added=42, skipped=1, chunks=43)  # a, b, copy of a, 40 rows
    assert len(writes) >= 10 and max(writes) <= 4
    assert store.ingest_paths([docs], tenant="acme") == IngestReport(added=0, skipped=43, chunks=43)


def test_the_batch_job_reads_its_questions_the_same_way(tmp_path: Path) -> None:
    questions = tmp_path / "questions"
    questions.mkdir()
    pq.write_table(pa.table({"id": ["1"], "question": ["q?"]}), questions / "a.parquet")
    outside = tmp_path / "other.parquet"
    pq.write_table(pa.table({"id": ["2"], "question": [MARKER]}), outside)
    (questions / "b.parquet").symlink_to(outside)
    with pytest.raises(BadInputFile, match=r"b\.parquet: refused: a symbolic link"):
        inspect_input(questions)
    (questions / "b.parquet").unlink()
    assert inspect_input(questions).files == [str(questions / "a.parquet")]


def test_text_is_read_as_before(tmp_path: Path) -> None:
    """Content addresses must not move: newlines are read as `Path.read_text` reads them."""
    f = tmp_path / "crlf.txt"
    f.write_bytes("one.\r\ntwo.\rthree — ok.\n".encode())
    [doc] = list(read_file(f, "acme", None))
    assert doc.text == f.read_text(encoding="utf-8") and sys.getdefaultencoding() == "utf-8"
