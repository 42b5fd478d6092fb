"""One owner of an embedded Chroma folder: an advisory file lock, exclusive for writers, shared for readers.

An embedded `PersistentClient` folder is safe for one process only: a second process writing to it makes the
first one's next query fail (`InternalError: Error finding id`) until it restarts. So every process that opens
an embedded store takes `<folder>/.council.lock` with `flock`: a writer (the retrieval server, `council
ingest`) exclusively, a reader (a batch job's actors) shared. The kernel drops the lock when the process dies,
so a crashed owner never leaves the folder locked. Each holder also leaves a small record of who it is in
`<folder>/.council-owners/<pid>.json`, so the process that is refused can say who holds the store.
Within one process, retrievers of the same folder share one lock (Chroma shares one client per folder too).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from council.errors import StoreBusy

log = logging.getLogger(__name__)

SERVER_ROLE = "council server"  # the role a retrieval replica records: `council ingest` then goes through it
LOCK_FILE = ".council.lock"
OWNERS_DIR = ".council-owners"
_POLL_S = 0.5


@dataclass
class _Held:
    fd: int
    exclusive: bool
    users: int


_held: dict[str, _Held] = {}  # folder -> this process's lock on it
_guard = threading.Lock()


def owners(folder: str | Path) -> list[dict[str, Any]]:
    """Who holds the folder's lock, as recorded by the holders that are still alive (this host only)."""
    found = []
    for record in sorted((Path(folder) / OWNERS_DIR).glob("*.json")):
        try:
            info = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and _alive(info):
            found.append(info)
    return found


def describe(infos: list[dict[str, Any]]) -> str:
    """'process 123 (council serve: RetrievalServer, exclusive, since 10:01:02)' for each holder."""
    if not infos:
        return "another process (it left no record of itself)"
    parts = []
    for i in infos:
        since = time.strftime("%H:%M:%S", time.localtime(float(i.get("since", 0))))
        mode = "writing" if i.get("exclusive") else "reading"
        parts.append(f"process {i.get('pid')} on {i.get('host')} ({i.get('role')}, {mode}, since {since})")
    return ", ".join(parts)


def store_identity(retrieval: Any) -> dict[str, str]:
    """Which store a RetrievalConfig names, as /v1/status reports it: an embedded folder or a Chroma server."""
    if retrieval.host:
        return {"server": f"{retrieval.host}:{retrieval.port}", "collection": retrieval.collection}
    return {"path": str(Path(retrieval.path).resolve()), "collection": retrieval.collection}


class StoreLock:
    """The lock of one embedded store folder, held from `acquire()` until `release()`."""

    def __init__(self, folder: str | Path, *, exclusive: bool = True, role: str | None = None) -> None:
        self.folder = Path(folder).resolve()
        self.exclusive = exclusive
        self.role = role or _default_role()
        self._acquired = False

    def acquire(self, wait_s: float = 0.0) -> StoreLock:
        """Take the lock, waiting up to `wait_s` seconds for another process to let go; else StoreBusy."""
        key = str(self.folder)
        with _guard:
            held = _held.get(key)
            if held is not None:
                if self.exclusive and not held.exclusive:
                    raise StoreBusy(
                        f"{self.folder}: this process already opened the store read-only; it cannot also write it",
                        details={"store": key},
                    )
                held.users += 1
                self._acquired = True
                return self
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                self._lock(fd, wait_s)
            except BaseException:
                os.close(fd)
                raise
            _held[key] = _Held(fd, self.exclusive, 1)
            self._record()
            self._acquired = True
            return self

    def _lock(self, fd: int, wait_s: float) -> None:
        mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + max(wait_s, 0.0)
        logged = False
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                if not logged:
                    log.info("%s is in use by %s; waiting up to %.0fs", self.folder, describe(owners(self.folder)),
                             wait_s)
                    logged = True
                time.sleep(_POLL_S)
        holders = owners(self.folder)
        raise StoreBusy(
            f"the embedded store {self.folder} is in use by {describe(holders)}. An embedded Chroma folder is "
            "safe for one process only: send documents through the server that holds it (`council ingest "
            "--url URL`, or POST /v1/documents), stop that process, or run a Chroma server (retrieval.host)",
            details={"store": str(self.folder), "holders": holders},
        )

    def _record(self) -> None:
        """Leave a note of who holds the lock (best effort: the lock itself is what protects the folder)."""
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "role": self.role,
            "exclusive": self.exclusive,
            "since": time.time(),
        }
        try:
            folder = self.folder / OWNERS_DIR
            folder.mkdir(exist_ok=True)
            (folder / f"{os.getpid()}.json").write_text(json.dumps(info))
        except OSError as e:
            log.warning("could not record the owner of %s: %s", self.folder, e)

    def release(self) -> None:
        """Let go (the last user in this process drops the lock and its owner record)."""
        if not self._acquired:
            return
        self._acquired = False
        key = str(self.folder)
        with _guard:
            held = _held.get(key)
            if held is None:
                return
            held.users -= 1
            if held.users > 0:
                return
            del _held[key]
            (self.folder / OWNERS_DIR / f"{os.getpid()}.json").unlink(missing_ok=True)
            os.close(held.fd)  # closing the descriptor releases the flock

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _alive(info: dict[str, Any]) -> bool:
    """A record is current when its process still runs (records of other hosts cannot be checked: kept)."""
    if info.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(info.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def _default_role() -> str:
    argv = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv[:3]))
    return argv or "python"
