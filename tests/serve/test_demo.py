"""`council demo --once`: the main job runs end to end and exits 0 (in-process, and on its own local Ray Serve)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve.conftest import free_port

COUNCIL = Path(sys.executable).parent / "council"
KINDS = ("trained", "fresh", "unanswerable")


def _demo(cwd: Path, *args: str, timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "COLUMNS": "160", "NO_COLOR": "1", "COUNCIL_HOME": str(cwd / ".council"), **env}
    environ.pop("COUNCIL_API_KEY", None)
    return subprocess.run(
        [str(COUNCIL), "demo", "--once", "--per-kind", "1", *args],
        cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _check(out: subprocess.CompletedProcess[str]) -> None:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for kind in KINDS:
        assert kind in out.stdout
    for piece in ("agreement", "trim", "answered as the world says"):
        assert piece in out.stdout
    assert "Traceback" not in out.stderr


def test_demo_once_in_process(tmp_path: Path) -> None:
    """The no-Ray path: ingest into the default store ($COUNCIL_HOME/chroma), the council in-process, each kind."""
    out = _demo(tmp_path, "--in-process", timeout=600)
    _check(out)
    assert (tmp_path / ".council" / "chroma").is_dir()
    again = _demo(tmp_path, "--in-process", timeout=600)  # idempotent: the store is reused, not duplicated
    _check(again)


@pytest.mark.skipif(
    os.environ.get("COUNCIL_TEST_DEMO_SERVE", "1") == "0", reason="COUNCIL_TEST_DEMO_SERVE=0 skips the second Ray"
)
def test_demo_once_on_its_own_ray_serve(tmp_path: Path) -> None:
    """What `make demo` runs, with `--once`: a fresh local Ray (RAY_ADDRESS=local), never the tests' one."""
    out = _demo(tmp_path, "--port", str(free_port()), timeout=900, RAY_ADDRESS="local")
    _check(out)
    assert "deployed in" in out.stdout
    assert "the page: http://127.0.0.1:" in out.stdout  # `make demo` prints where the web page is


def test_demo_adapters_in_process(tmp_path: Path) -> None:
    """`council demo --adapters`: the demo council as one base + six LoRA adapters (adapters.yaml), each kind asked."""
    out = _demo(tmp_path, "--in-process", "--adapters", timeout=600)
    _check(out)
    assert "adapters.yaml" in out.stdout
    both = _demo(tmp_path, "--in-process", "--adapters", "--config", "council/demo/council.yaml", timeout=120)
    assert both.returncode == 2 and "--adapters or --config" in both.stdout + both.stderr
