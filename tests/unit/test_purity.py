"""The pure core and `import council` load no heavy dependency at run time, lazy imports included.

Which module may import which is the layer contract's to say (test_layers.py).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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
        "import council, council.routing, council.budget, council.agreement, council.local_aggregator, "
        "council.retrieval, council.pipeline, council.types, council.config"
    )
    assert heavy_modules_after(imports) == []
