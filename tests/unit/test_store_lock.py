"""The embedded store's one-owner lock, across real processes: refused with the holder's name, shared readers,
released on exit or death, waited for."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from council.backends.store_lock import SERVER_ROLE, StoreLock, owners, store_identity
from council.config import CouncilConfig, RetrievalConfig
from council.errors import StoreBusy

HOLDER = textwrap.dedent(
    """
    import sys, time
    from council.backends.store_lock import StoreLock
    lock = StoreLock(sys.argv[1], exclusive=sys.argv[2] == "x", role=sys.argv[3]).acquire()
    print("held", flush=True)
    time.sleep(float(sys.argv[4]))
    lock.release()
    print("released", flush=True)
    time.sleep(30)
    """
)


def hold(folder: Path, *, exclusive: bool = True, role: str = "test holder", for_s: float = 60.0) -> subprocess.Popen:
    """Another process that takes the lock, keeps it `for_s` seconds, releases it and lingers."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), "x" if exclusive else "s", role, str(for_s)],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        p.kill()
        p.wait()


def test_a_second_writer_is_refused_with_the_holders_pid_and_role(tmp_path: Path, procs: list) -> None:
    procs.append(holder := hold(tmp_path, role=f"{SERVER_ROLE} (test)"))
    with pytest.raises(StoreBusy) as e:
        StoreLock(tmp_path).acquire()
    assert f"process {holder.pid}" in e.value.message and f"{SERVER_ROLE} (test)" in e.value.message
    assert str(tmp_path.resolve()) in e.value.message
    assert e.value.status == 409
    assert [h["pid"] for h in e.value.details["holders"]] == [holder.pid]  # type: ignore[index]


def test_readers_share_but_exclude_a_writer(tmp_path: Path, procs: list) -> None:
    procs.append(reader := hold(tmp_path, exclusive=False, role="reader one"))
    second = StoreLock(tmp_path, exclusive=False).acquire()  # another reader is welcome
    try:
        assert sorted(o["pid"] for o in owners(tmp_path)) == sorted([reader.pid, os.getpid()])
    finally:
        second.release()
    with pytest.raises(StoreBusy, match="reader one, reading"):
        StoreLock(tmp_path).acquire()


def test_a_killed_holder_leaves_the_store_free(tmp_path: Path, procs: list) -> None:
    procs.append(holder := hold(tmp_path))
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = StoreLock(tmp_path).acquire()  # the kernel dropped the dead process's flock; its record is ignored
    try:
        assert [o["pid"] for o in owners(tmp_path)] == [os.getpid()]
    finally:
        lock.release()
    assert owners(tmp_path) == []


def test_a_waiting_writer_gets_the_lock_once_the_holder_lets_go(tmp_path: Path, procs: list) -> None:
    procs.append(hold(tmp_path, for_s=2.0))
    t0 = time.monotonic()
    lock = StoreLock(tmp_path).acquire(wait_s=60)
    waited = time.monotonic() - t0
    lock.release()
    assert 0.5 < waited < 60


def test_one_process_shares_its_own_lock_and_drops_it_with_the_last_user(tmp_path: Path) -> None:
    first, second = StoreLock(tmp_path).acquire(), StoreLock(tmp_path).acquire()
    first.release()
    with pytest.raises(StoreBusy):  # still held by `second`: another process is refused
        _acquire_elsewhere(tmp_path)
    second.release()
    _acquire_elsewhere(tmp_path)  # free now


def _acquire_elsewhere(folder: Path) -> None:
    """Acquire the lock in a new process; StoreBusy here if that process was refused."""
    code = f"from council.backends.store_lock import StoreLock; StoreLock({str(folder)!r}).acquire()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        assert "StoreBusy" in done.stderr, done.stderr
        raise StoreBusy(done.stderr.strip().splitlines()[-1])


def test_store_paths_are_absolute_wherever_the_config_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert RetrievalConfig(path="rel/store").path == str(tmp_path / "rel" / "store")
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "council.yaml").write_text(
        "specialists: [{name: a, model: m, description: d}]\nretrieval: {path: data/chroma}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a YAML's relative store is beside the YAML, not in the reader's cwd
    config = CouncilConfig.from_yaml(folder / "council.yaml")
    assert config.retrieval.path == str(folder / "data" / "chroma")
    assert store_identity(config.retrieval) == {"path": str(folder / "data" / "chroma"), "collection": "council"}


def test_cli_ingest_into_a_store_held_by_another_process_names_it(tmp_path: Path, procs: list) -> None:
    """A holder that is not a council server: `council ingest` refuses, naming it, and writes nothing."""
    store = tmp_path / "store"
    procs.append(holder := hold(store, role="someone else"))
    (tmp_path / "council.yaml").write_text(yaml.safe_dump({
        "specialists": [{"name": "a", "model": "unused", "description": "d"}], "retrieval": {"path": "store"},
    }))
    (tmp_path / "n.txt").write_text("A note for acme.")
    cli = Path(sys.executable).parent / "council"
    done = subprocess.run(
        [str(cli), "ingest", str(tmp_path / "n.txt"), "--tenant", "acme", "--config", str(tmp_path / "council.yaml")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    message = " ".join(done.stderr.split())
    assert done.returncode == 1, done.stdout + done.stderr
    assert "(store_busy)" in message and f"process {holder.pid}" in message and "someone else" in message, message
    assert not any(store.glob("*.sqlite3"))  # nothing was written
