"""The batch job on a real `ray start --head`: submitted, answered exactly once, stopped half way and resumed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from council.jobs.batch_files import OUTPUT_SCHEMA, read_answers
from tests.jobs.conftest import REPO, RayHead, cluster_env

JOB_TIMEOUT_S = 300.0
# The repository is the job's working dir (as in `ray job submit --working-dir .`), without the bulky parts.
RUNTIME_ENV: dict[str, Any] = {
    "working_dir": str(REPO),
    "excludes": [".venv", ".git", "notebooks", "*.parquet", ".council", "runs", "bench"],
}


def write_questions(path: Path, n: int, *, tenants: bool = True) -> list[str]:
    """n questions with ids q0000.. (half for tenant acme, some with k=1); returns the ids."""
    ids = [f"q{i:04d}" for i in range(n)]
    columns: dict[str, Any] = {
        "id": ids,
        "question": [f"Where does the river Varn flow, question {i}?" for i in range(n)],
    }
    if tenants:
        columns["tenant"] = ["acme" if i % 2 else "public" for i in range(n)]
        columns["k"] = pa.array([1 if i % 3 == 0 else None for i in range(n)], type=pa.int64())
    pq.write_table(pa.table(columns), path)
    return ids


def batch_cmd(inp: Path, out: Path, config: Path, *extra: str) -> str:
    args = ["python", "-m", "council.jobs.batch", "--input", str(inp), "--output", str(out), "--config", str(config),
            "--num-cpus", "0.25", *extra]
    return " ".join(args)


def wait_job(client: Any, job_id: str, timeout_s: float = JOB_TIMEOUT_S) -> str:
    """The job's terminal status (as a string), failing the test with its logs on a timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return str(status.value)
        time.sleep(1.0)
    client.stop_job(job_id)
    pytest.fail(f"job {job_id} still running after {timeout_s}s:\n{client.get_job_logs(job_id)[-4000:]}")


def submit(head: RayHead, entrypoint: str) -> tuple[Any, str]:
    return head.submit(entrypoint, RUNTIME_ENV)


def assert_exactly_once(out: Path, ids: list[str]) -> pa.Table:
    table = read_answers(out)
    got = table["id"].to_pylist()
    assert len(got) == len(set(got)), "an id was answered twice"
    assert sorted(got) == sorted(ids), "an id is missing (or unexpected)"
    assert table.schema.equals(OUTPUT_SCHEMA)
    return table


def test_batch_answers_every_id_exactly_once(ray_head: RayHead, council_yaml: Path, tmp_path: Path) -> None:
    ids = write_questions(tmp_path / "q.parquet", 24)
    out = tmp_path / "answers"
    client, job = submit(ray_head, batch_cmd(tmp_path / "q.parquet", out, council_yaml, "--batch-size", "4"))
    status = wait_job(client, job)
    logs = client.get_job_logs(job)
    assert status == "SUCCEEDED", logs[-4000:]
    table = assert_exactly_once(out, ids)
    rows = table.to_pylist()
    assert all(r["error"] is None for r in rows), [r["error"] for r in rows if r["error"]][:3]
    for r in rows:
        assert isinstance(r["answer"], str)
        assert 0.0 <= r["agreement"] <= 1.0
        assert r["members"] and all(m["name"] in {"physics", "history"} for m in r["members"])
        assert all(s["tenant"] == r["tenant"] for s in r["sources"]), "a source from another tenant"
    assert any(r["sources"] for r in rows), "retrieval found nothing for any question"
    by_id = {r["id"]: r for r in rows}
    assert len(by_id["q0000"]["members"]) == 1, "k=1 from the input was not honoured"
    assert "progress:" in logs and "24/24 ids present" in logs, logs[-3000:]
    # A rerun finds everything answered and writes nothing.
    parts = sorted(p.name for p in out.glob("part-*.parquet"))
    client, job = submit(ray_head, batch_cmd(tmp_path / "q.parquet", out, council_yaml))
    assert wait_job(client, job) == "SUCCEEDED"
    assert "24 already answered" in client.get_job_logs(job)
    assert sorted(p.name for p in out.glob("part-*.parquet")) == parts


def test_stopped_job_resumes_without_loss_or_duplicates(ray_head: RayHead, council_yaml: Path, tmp_path: Path) -> None:
    n = 40
    ids = write_questions(tmp_path / "q.parquet", n)
    out = tmp_path / "answers"
    cmd = batch_cmd(tmp_path / "q.parquet", out, council_yaml, "--batch-size", "2")
    client, job = submit(ray_head, cmd)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while len(list(out.glob("part-*.parquet"))) < 3:
        assert not client.get_job_status(job).is_terminal(), client.get_job_logs(job)[-4000:]
        assert time.monotonic() < deadline, "no parts written in time"
        time.sleep(0.2)
    client.stop_job(job)
    assert wait_job(client, job) == "STOPPED"
    first = {p.name for p in out.glob("part-*.parquet")}
    done_first = read_answers(out)["id"].to_pylist()
    assert 0 < len(done_first) < n, f"stopped too late to test resuming ({len(done_first)} of {n} done)"
    assert len(done_first) == len(set(done_first))

    client, job = submit(ray_head, cmd)
    status = wait_job(client, job)
    logs = client.get_job_logs(job)
    assert status == "SUCCEEDED", logs[-4000:]
    assert f"{len(done_first)} already answered" in logs
    assert_exactly_once(out, ids)
    assert first <= {p.name for p in out.glob("part-*.parquet")}, "finished parts were rewritten"
    assert not list(out.glob(".*.tmp")), "a temporary file was left behind"


def run_local(*args: str) -> subprocess.CompletedProcess[str]:
    """The job's command run directly (no cluster needed: input checks happen before Ray starts)."""
    return subprocess.run(
        [sys.executable, "-m", "council.jobs.batch", *args], capture_output=True, text=True, timeout=120,
        env=cluster_env(), cwd=REPO,
    )


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing_question", "missing required column 'question'"),
        ("missing_id", "missing required column 'id'"),
        ("unreadable", "not a readable Parquet file"),
        ("duplicate_ids", "column 'id' repeats 1 id(s), e.g. 'q1'"),
        ("int_ids", "column 'id' must be a string column"),
    ],
)
def test_bad_input_is_named_and_nothing_is_written(case: str, needle: str, tmp_path: Path, council_yaml: Path) -> None:
    bad = tmp_path / f"{case}.parquet"
    if case == "missing_question":
        pq.write_table(pa.table({"id": ["q1"], "text": ["what?"]}), bad)
    elif case == "missing_id":
        pq.write_table(pa.table({"question": ["what?"]}), bad)
    elif case == "unreadable":
        bad.write_bytes(b"PAR1 this is not parquet at all")
    elif case == "duplicate_ids":
        pq.write_table(pa.table({"id": ["q1", "q2", "q1"], "question": ["a?", "b?", "c?"]}), bad)
    else:
        pq.write_table(pa.table({"id": [1, 2], "question": ["a?", "b?"]}), bad)
    out = tmp_path / "answers"
    result = run_local("--input", str(bad), "--output", str(out), "--config", str(council_yaml))
    assert result.returncode == 2, result.stderr[-2000:]
    assert needle in result.stderr and str(bad) in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not out.exists(), "the output folder was created for a bad input"


def test_bad_input_fails_the_submitted_job_with_the_message(
    ray_head: RayHead, council_yaml: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "questions.parquet"
    pq.write_table(pa.table({"id": ["q1"], "prompt": ["what?"]}), bad)
    out = tmp_path / "answers"
    client, job = submit(ray_head, batch_cmd(bad, out, council_yaml))
    assert wait_job(client, job) == "FAILED"
    logs = client.get_job_logs(job)
    assert f"{bad}: missing required column 'question'" in logs, logs[-2000:]
    assert not out.exists()


@pytest.mark.parametrize("job", ["batch", "ingest"])
def test_help(job: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", f"council.jobs.{job}", "--help"], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert f"python -m council.jobs.{job}" in result.stdout
