"""One run per output folder: a job holds `<folder>/.council-run.lock` (flock, exclusive) while it writes there.

Two batch runs on one folder would each delete the other's temporary files as a crashed run's leftovers, and
both answer and write the same ids. The second run is refused instead, naming the first (its pid, host,
command and start time, which the holder writes into the lock file). The kernel drops the lock when its process
dies, so a crashed run never leaves a folder locked.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from council.errors import OutputBusy

LOCK_FILE = ".council-run.lock"


class OutputLock:
    """The lock of one output folder, held from `acquire()` (or `with`) until `release()`."""

    def __init__(self, folder: str | Path, *, role: str | None = None) -> None:
        self.folder = Path(folder)
        self.role = role or " ".join(sys.argv[:3]) or "python"
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        """Take the lock now, or OutputBusy naming the run that holds it."""
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise OutputBusy(
                f"the output folder {self.folder} is in use by {describe(holder)}: one run writes a folder at a "
                "time (wait for it to finish, stop it, or give this run another --output)",
                details={"output": str(self.folder), "holder": holder},
            ) from None
        except BaseException:
            os.close(fd)
            raise
        info = {"pid": os.getpid(), "host": socket.gethostname(), "role": self.role, "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Let go (closing the descriptor drops the flock); the file stays, naming the last holder."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def describe(holder: dict[str, Any]) -> str:
    """'process 123 on host (python -m council.jobs.batch, since 10:01:02)', or a plain 'another process'."""
    if not holder.get("pid"):
        return "another process (it left no record of itself yet)"
    since = time.strftime("%H:%M:%S", time.localtime(float(holder.get("since", 0))))
    return f"process {holder['pid']} on {holder.get('host')} ({holder.get('role')}, since {since})"
