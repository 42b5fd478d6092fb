"""Helpers every Ray job shares: logging, exit codes, joining Ray, loading configs, atomic Parquet writes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from council.config import CouncilConfig
from council.errors import BadInputFile, ConfigError, CouncilError

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

# The packaged demo council: what a job builds when it is given no app and no config.
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "demo" / "council.yaml"

# Exit codes: 2 is what argparse uses for a bad command line; a bad input file or config is the same kind
# of mistake (the caller's to fix, retrying will not help), so it gets the same code.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

# Read by huggingface_hub / chromadb at import time in every worker: forwarded so that workers load
# models offline and send no telemetry exactly as the driver does.
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ANONYMIZED_TELEMETRY", "HF_HOME", "TOKENIZERS_PARALLELISM")


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr with timestamps (job logs keep them); quieter third-party loggers."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("httpx", "chromadb", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """`--address` and `-v`, the same in every job."""
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: 'auto' for the running one. Default: $RAY_ADDRESS (set for submitted jobs), "
        "else a fresh local Ray just for this run.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")


def worker_env() -> dict[str, str]:
    """Environment variables the workers must share with this driver (offline models, no telemetry)."""
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def connect_ray(address: str | None) -> None:
    """Join Ray: `address`, else $RAY_ADDRESS (a submitted job), else a fresh local instance.

    A plain `ray.init()` would follow a stale `ray_current_cluster` file left by a stopped head and hang;
    saying "local" explicitly avoids that.
    """
    import ray

    target = address or os.environ.get("RAY_ADDRESS") or "local"
    env = worker_env()
    log.info("joining Ray at %s", target)
    ray.init(
        address=target,
        runtime_env={"env_vars": env} if env else None,
        log_to_driver=True,
        configure_logging=False,
    )


def load_config(path: str | Path | None) -> CouncilConfig | None:
    """The council config at `path` (relative model paths resolved beside it), or None when no path."""
    if path is None:
        return None
    return CouncilConfig.from_yaml(path)


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write `table` to `path` so that readers see the whole file or nothing.

    The file is written under a hidden temporary name in the same folder, flushed to disk, then renamed:
    a rename within one filesystem is atomic, so a crash leaves at worst a `.tmp` file, never half a part.
    """
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temps(folder: Path) -> int:
    """Delete temporary files a crashed run left in `folder`; returns how many."""
    stale = list(folder.glob(".*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        log.info("removed %d unfinished temporary file(s) left by an earlier run in %s", len(stale), folder)
    return len(stale)


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> None:
    """Run a job's `main` and exit with its code; the caller's mistakes exit 2 with one clear line."""
    try:
        code = main(argv)
    except (BadInputFile, ConfigError) as e:
        log.error("%s", e.message)
        code = EXIT_BAD_INPUT
    except CouncilError as e:
        log.error("%s: %s", e.type, e.message)
        code = EXIT_FAILED
    finally:
        _shutdown_ray()
    sys.exit(code)


def _shutdown_ray() -> None:
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def bad_file(path: str | Path, message: str, *, column: str | None = None, **details: Any) -> BadInputFile:
    """A BadInputFile whose message starts with the file (and names the column when there is one)."""
    info: dict[str, object] = {"file": str(path), **details}
    if column is not None:
        info["column"] = column
    return BadInputFile(f"{path}: {message}", details=info)
