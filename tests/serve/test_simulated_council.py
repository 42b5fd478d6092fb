"""A council of simulated (accelerator-like) members on local Serve, with trimming and agreement on their own
deployment (`aggregator.placement: deployment`; the other tests' apps run them in the ingress, the default): the
benchmark's framework rows run on exactly this."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from council.client import Client
from council.engine_options import ALLOW_SIMULATED_ENV

DEMO_MODEL = Path(__file__).resolve().parents[2] / "council" / "demo" / "models" / "legal-1"
MEMBER_S, SLOW_S = 0.2, 3.0


def _member(name: str, base_s: float) -> dict[str, Any]:
    return {
        "name": name, "model": str(DEMO_MODEL), "description": "member", "engine": "simulated",
        "engine_options": {"base_s": base_s, "completion_tokens": 4},
        "generation": {"max_new_tokens": 8, "stop": []},
        "deployment": {"num_cpus": 0.05},
    }  # fmt: skip


@pytest.fixture(scope="module")
def sim_app(serve_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from ray import serve

    from council.serving.app import build_app

    config = {
        "specialists": [_member("fast0", MEMBER_S), _member("fast1", MEMBER_S), _member("slow", SLOW_S)],
        "router": {"k": 3, "quorum": 2, "member_timeout_s": 30, "num_cpus": 0.05},
        "retrieval": {"path": str(tmp_path_factory.mktemp("sim") / "store"), "num_cpus": 0.05},
        "aggregator": {"placement": "deployment", "num_cpus": 0.05, "default_budget_tokens": 64},
    }
    mp = pytest.MonkeyPatch()
    mp.setenv(ALLOW_SIMULATED_ENV, "1")
    try:
        serve.run(build_app({"config_dict": config}), name="sim", route_prefix="/sim")
    finally:
        mp.undo()
    yield "sim"
    serve.delete("sim")


def test_the_aggregator_deployment_trims_and_members_agree(sim_app: str) -> None:
    from ray import serve

    deployments = set(serve.status().applications[sim_app].deployments)
    members = {"Specialist_fast0", "Specialist_fast1", "Specialist_slow"}
    assert deployments == {"RouterIngress", "RetrievalServer", "AggregatorServer", *members}

    client = Client.connect(sim_app)
    answer = client.ask("what is the penalty under the kavo act ?", specialists=["fast0", "fast1", "slow"],
                        documents=["the kavo act carries a fine ."])  # fmt: skip
    assert [m.name for m in answer.members] == ["fast0", "fast1", "slow"]
    texts = {m.answer for m in answer.members}
    assert len(texts) == 1 and answer.answer in texts and answer.answer  # one word from the question's hash
    assert answer.agreement == pytest.approx(1.0) and not answer.abstained
    # Trimmed by the AggregatorServer with each member's own tokenizer: every member has its report.
    assert {t.member for t in answer.trims} == {"fast0", "fast1", "slow"}
    assert all(len(t.kept) == 1 and t.used_tokens > 0 for t in answer.trims), answer.trims
    assert [s.text for s in answer.sources] == ["the kavo act carries a fine ."]


def test_early_exit_leaves_the_straggler(sim_app: str) -> None:
    client = Client.connect(sim_app)
    t0 = time.perf_counter()
    answer = client.ask("who is the ceo of kavo corp ?", use_retrieval=False, early_exit=True,
                        specialists=["fast0", "fast1", "slow"])  # fmt: skip
    took = time.perf_counter() - t0
    slow = next(m for m in answer.members if m.name == "slow")
    assert slow.cancelled and not answer.abstained
    assert took < SLOW_S, f"early exit waited {took:.2f} s for the {SLOW_S} s straggler"
