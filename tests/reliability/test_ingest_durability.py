"""`council ingest` killed with SIGKILL half way, then rerun, ends with every chunk exactly once and the
same query results as an uninterrupted ingest; a store reopened in a new process serves the same chunks."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
COUNCIL = Path(sys.executable).with_name("council")
TENANT = "acme"
FILES, SENTENCES = 24, 60  # about 170 chunks in 24 files, one ingest call each: seconds on two idle cores
QUESTIONS = ["Which guild keeps the ledger of Varn?", "How many lanterns were sold in 1207?", "who repaired the mill"]
_WORDS = "amber basalt cedar delta ember fjord garnet harbour indigo juniper kestrel lantern meadow".split()
_PLACES = "Varn Ostry Quell Mirecourt Hallow Brisk Tannery Lowmarsh Pellin Odrin".split()

# Reads a store in a fresh process: every chunk (id, text, metadata) and the top ids of each question.
_SNAPSHOT = """
import json, sys
from council.backends.chroma import ChromaRetriever
from council.backends.embeddings import get_embedder
from council.config import RetrievalConfig
r = ChromaRetriever(RetrievalConfig(path=sys.argv[1]), get_embedder(None))
got = r._collection.get(include=["documents", "metadatas"])
chunks = sorted([i, d, m] for i, d, m in zip(got["ids"], got["documents"], got["metadatas"]))
queries = {q: [[c.id, c.score] for c in r.query(q, tenant=sys.argv[2], top_n=5)] for q in json.loads(sys.argv[3])}
print(json.dumps({"count": r.count(), "chunks": chunks, "queries": queries}))
"""


def _corpus(folder: Path) -> Path:
    """FILES text files of distinct, sentence-shaped records (deterministic)."""
    rng = random.Random(7)
    folder.mkdir(parents=True)
    for f in range(FILES):
        lines = []
        for s in range(SENTENCES):
            a, b = rng.sample(_WORDS, 2)
            place = rng.choice(_PLACES)
            lines.append(f"Record {f}-{s}: the {a} guild of {place} sold {rng.randint(1, 9999)} {b} lanterns.")
        (folder / f"part-{f:03d}.txt").write_text(" ".join(lines) + "\n")
    return folder


def _env(cwd: Path | None = None) -> dict[str, str]:
    # One torch thread: the cores are shared with the rest of the suite. The default store: cwd/.council/chroma.
    env = {"HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if cwd is not None:
        env["COUNCIL_HOME"] = str(cwd / ".council")
    return {**os.environ, **env}


def _ingest(cwd: Path, corpus: Path, *, kill_at_bytes: int | None = None) -> tuple[int, float]:
    """Run `council ingest` in `cwd` (its default store: cwd/.council/chroma); SIGKILL it once the store holds
    `kill_at_bytes`. Returns (exit code, seconds)."""
    store = cwd / ".council" / "chroma"
    cmd = [str(COUNCIL), "ingest", str(corpus), "--tenant", TENANT]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(cwd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        if kill_at_bytes is not None:
            while proc.poll() is None and _bytes(store) < kill_at_bytes:
                time.sleep(0.05)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    if kill_at_bytes is None and proc.returncode != 0:
        pytest.fail(f"council ingest failed ({proc.returncode}):\n{out[-3000:]}")
    return proc.returncode, time.monotonic() - t0


def _bytes(folder: Path) -> int:
    total = 0
    for p in folder.rglob("*"):
        with contextlib.suppress(FileNotFoundError):  # Chroma renames files as it writes
            total += p.stat().st_size if p.is_file() else 0
    return total


def _snapshot(store: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-c", _SNAPSHOT, str(store), TENANT, json.dumps(QUESTIONS)]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def assert_same_ranking(got: list[list[Any]], want: list[list[Any]], question: str, tol: float = 1e-4) -> None:
    """The same top chunks with the same scores. Chunks tied (within `tol`) with the last place may trade
    places across it: an index built in another insertion order breaks such ties its own way."""
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=tol), question
    cutoff = min(got[-1][1], want[-1][1]) + tol
    assert {i for i, s in got if s > cutoff} == {i for i, s in want if s > cutoff}, question


@pytest.mark.load
@pytest.mark.timeout(1200)
def test_ingest_killed_half_way_then_rerun(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path / "corpus")
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    reference_dir.mkdir()
    resumed_dir.mkdir()

    _, reference_s = _ingest(reference_dir, corpus)
    reference = _snapshot(reference_dir / ".council" / "chroma")
    total_bytes = _bytes(reference_dir / ".council" / "chroma")

    code, killed_s = _ingest(resumed_dir, corpus, kill_at_bytes=total_bytes // 2)
    assert code == -signal.SIGKILL, "the ingest finished before it could be killed half way"
    partial = _snapshot(resumed_dir / ".council" / "chroma")
    assert 0 < partial["count"] < reference["count"], (partial["count"], reference["count"])

    _, rerun_s = _ingest(resumed_dir, corpus)
    resumed = _snapshot(resumed_dir / ".council" / "chroma")  # a new process: the store reopened after a restart

    ids = [c[0] for c in resumed["chunks"]]
    texts = [c[1] for c in resumed["chunks"]]
    assert len(ids) == len(set(ids)) == len(set(texts)) == resumed["count"], "a chunk is stored twice"
    assert resumed["chunks"] == reference["chunks"], "the resumed store differs from an uninterrupted ingest"
    assert all(len(v) == 5 for v in resumed["queries"].values())
    for question, ranked in resumed["queries"].items():
        assert_same_ranking(ranked, reference["queries"][question], question)
    figures = {
        "chunks": reference["count"],
        "reference_ingest_s": round(reference_s, 1),
        "killed_after_s": round(killed_s, 1),
        "chunks_when_killed": partial["count"],
        "rerun_s": round(rerun_s, 1),
    }
    log.warning("ingest durability: %s", figures)
    (tmp_path / "figures.json").write_text(json.dumps(figures))
