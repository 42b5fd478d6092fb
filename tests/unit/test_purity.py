"""The pure core and `import council` pull in no heavy or serving dependencies."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("ray", "chromadb", "torch", "transformers")
ROOT = Path(__file__).resolve().parents[2]


def heavy_modules_after(imports: str) -> list[str]:
    """Import in a fresh interpreter (this one may already hold them) and list the heavy ones loaded."""
    code = f"{imports}; import sys; print([m for m in {HEAVY!r} if m in sys.modules])"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


def test_import_council_is_light() -> None:
    assert heavy_modules_after("import council") == []


def test_pure_core_and_pipeline_are_light() -> None:
    imports = (
        "import council, council.routing, council.budget, council.agreement, council.aggregator, "
        "council.pipeline, council.types, council.config"
    )
    assert heavy_modules_after(imports) == []


@pytest.mark.parametrize("module", ["routing", "budget", "agreement", "aggregator"])
def test_pure_modules_do_not_import_backends_or_serving(module: str) -> None:
    # A static check as well: a lazy import inside a function would slip past the runtime one.
    tree = ast.parse((ROOT / "council" / f"{module}.py").read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    bad = [n for n in names if n.split(".")[0] in HEAVY or n.startswith(("council.serving", "council.backends"))]
    assert bad == []
