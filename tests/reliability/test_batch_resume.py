"""A batch job never silently loses answers (issue 16, finding 8), tested on the driver without a cluster.

Before: a row whose answer was an error was written like an answer and counted as done, so a rerun never asked
it again and the job exited 0; and two runs on one output folder deleted each other's temporary files. Now a
rerun asks errored rows again, the job exits 1 above --max-error-rate, and an output folder is locked by the run
writing it. The Ray parts (connecting, the actor pool) are replaced by a scripted answerer; everything the
driver decides and writes is the job's own code.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from council.errors import OutputBusy
from council.jobs import batch
from council.jobs.batch_files import answer_row, read_answers
from council.jobs.output_lock import LOCK_FILE, OutputLock

N = 10


class Scripted:
    """Stands in for the council behind `answered_blocks`: answers every question it is given, except those
    `failing` says fail (as `Answerer` records a failure: the row with its error)."""

    def __init__(self) -> None:
        self.failing: set[str] = set()
        self.asked: list[list[str]] = []

    def blocks(self, args: Any, questions: Any, done: set[str], app: Any, config: Any) -> Iterator[pa.Table]:
        table = pa.concat_tables([pq.read_table(f, columns=questions.columns) for f in questions.files])
        rows = [r for r in table.to_pylist() if r["id"] not in done]
        for start in range(0, len(rows), args.batch_size):
            block = rows[start : start + args.batch_size]
            self.asked.append([r["id"] for r in block])
            yield pa.Table.from_pylist([self.answer(r) for r in block], schema=batch.OUTPUT_SCHEMA)

    def answer(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["id"] in self.failing:
            return answer_row(row, None, "quorum_not_met: 0 of 2 members answered")
        return answer_row(row, {"answer": f"answer to {row['id']}", "agreement": 1.0, "members": [], "sources": []})


@pytest.fixture
def council(monkeypatch: pytest.MonkeyPatch) -> Scripted:
    scripted = Scripted()
    monkeypatch.setattr(batch, "connect_ray", lambda address: None)
    monkeypatch.setattr(batch, "_choose_backend", lambda args, config: ("scripted", None))
    monkeypatch.setattr(batch, "answered_blocks", scripted.blocks)
    return scripted


@pytest.fixture
def questions(tmp_path: Path) -> Path:
    path = tmp_path / "q.parquet"
    ids = [f"q{i}" for i in range(N)]
    pq.write_table(pa.table({"id": ids, "question": [f"question {i}?" for i in ids]}), path)
    return path


def run(questions: Path, out: Path, *extra: str) -> int:
    return batch.main(["--input", str(questions), "--output", str(out), "--batch-size", "3", *extra])


def errors(out: Path) -> dict[str, str | None]:
    rows = read_answers(out).to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an id is in the output twice"
    return {r["id"]: r["error"] for r in rows}


def test_a_resumed_batch_retries_its_errored_rows(council: Scripted, questions: Path, tmp_path: Path) -> None:
    out = tmp_path / "answers"
    council.failing = {"q1", "q4", "q5", "q8"}
    assert run(questions, out) == batch.EXIT_FAILED  # 4 of 10 errors: over the default 5%
    assert {i for i, e in errors(out).items() if e} == council.failing

    council.failing, council.asked = {"q5"}, []
    assert run(questions, out) == batch.EXIT_FAILED  # still 1 of 10: over 5%
    assert sorted(i for b in council.asked for i in b) == ["q1", "q4", "q5", "q8"], "only the errored rows"
    assert {i for i, e in errors(out).items() if e} == {"q5"}

    council.failing, council.asked = set(), []
    assert run(questions, out) == batch.EXIT_OK
    assert council.asked == [["q5"]]
    final = errors(out)
    assert sorted(final) == [f"q{i}" for i in range(N)] and not any(final.values())

    council.asked = []
    assert run(questions, out) == batch.EXIT_OK and council.asked == []  # all answered: nothing asked again


def test_errors_are_kept_when_asked_and_the_rate_decides_the_exit(
    council: Scripted, questions: Path, tmp_path: Path
) -> None:
    out = tmp_path / "answers"
    council.failing = {"q3"}
    assert run(questions, out, "--max-error-rate", "0.1") == batch.EXIT_OK  # 1 of 10 is not over 10%
    council.asked = []
    assert run(questions, out, "--no-retry-errors", "--max-error-rate", "0.1") == batch.EXIT_OK
    assert council.asked == [] and errors(out)["q3"]
    assert run(questions, out, "--no-retry-errors", "--max-error-rate", "0") == batch.EXIT_FAILED
    assert council.asked == []


def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(
    council: Scripted, questions: Path, tmp_path: Path
) -> None:
    out = tmp_path / "answers"
    out.mkdir()
    temp = out / ".part-0123.parquet.abcd1234.tmp"  # the first run is writing a part
    holder = textwrap.dedent(
        f"""
        import sys, time
        from council.jobs.output_lock import OutputLock
        lock = OutputLock({str(out)!r}, role="the first run").acquire()
        open({str(temp)!r}, "wb").write(b"half a part")
        print("held", flush=True)
        sys.stdin.read()
        """
    )
    first = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusy, match=rf"{out} is in use by process {first.pid} on .* \(the first run, since"):
            run(questions, out)
        assert temp.exists(), "the second run deleted the first run's temporary file"
        assert council.asked == [] and not list(out.glob("part-*.parquet"))
    finally:
        assert first.stdin is not None
        first.stdin.close()
        first.wait(timeout=30)
    # The first run is gone (the kernel dropped its lock): the folder is free, and its leftover is cleaned up.
    assert run(questions, out) == batch.EXIT_OK
    assert not temp.exists() and len(errors(out)) == N


def test_the_lock_is_one_holder_at_a_time_and_dropped_on_release(tmp_path: Path) -> None:
    with OutputLock(tmp_path, role="one"):
        with pytest.raises(OutputBusy) as e:
            OutputLock(tmp_path, role="two").acquire()
        assert e.value.status == 409 and e.value.details["holder"]["role"] == "one"
    with OutputLock(tmp_path, role="three"):
        assert (tmp_path / LOCK_FILE).exists()
