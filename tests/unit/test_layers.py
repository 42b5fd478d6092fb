"""The house's layers hold over every module (import-linter's contracts in pyproject.toml), and they would catch
a back-edge: the same contracts fail on a copy of the package with one upward import added."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
# (file, line added, what the report says): the pure core importing the serving layer, the pure core importing
# ray.serve, and a cycle inside one layer.
BACK_EDGES = {
    "upward": ("council/routing.py", "from council.serving import app as _edge", "council.routing -> council.serving"),
    "ray.serve": ("council/budget.py", "from ray import serve as _edge", "council.budget -> ray.serve"),
    "cycle": ("council/serving/handles.py", "from council.serving import ingress as _edge", "No cycles are allowed"),
}


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` over the package under `root`, with the contracts of `root`/pyproject.toml."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(root / "pyproject.toml")],
        cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_every_contract_is_kept() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize("edge", sorted(BACK_EDGES))
def test_an_injected_back_edge_breaks_a_contract(edge: str, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "council", tmp_path / "council", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path, line, report = BACK_EDGES[edge]
    with open(tmp_path / path, "a") as f:
        f.write(f"\n{line}  # injected back-edge\n")
    done = lint_imports(tmp_path)
    print(done.stdout)  # `pytest -s` shows the broken contract as lint-imports reports it
    assert done.returncode != 0 and "BROKEN" in done.stdout, done.stdout + done.stderr
    assert report in done.stdout
