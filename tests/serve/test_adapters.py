"""Specialists that are LoRA adapters of one base, served by ONE deployment of that base: each member answers
with its own adapter's answer (the answer of that adapter merged into the base and run alone), also when their
requests share batches; past `max_adapters_per_replica` the replica loads adapters on first use and evicts the
least recently used one (Serve's model multiplexing), still answering correctly.

One app on the session's Serve: base `one` with members a and b (all adapters loaded), base `two` with x, y, z and
room for two adapters per replica, and a full model on its own deployment beside them.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from council.backends.engine import EngineSpecialist
from council.backends.hf_engine import TransformersEngine
from council.backends.tokens import load_tokenizer_counter
from council.config import CouncilConfig
from council.testing.tiny import build_lora_adapter
from tests.serve.conftest import App

APP = "council_lora"
LEGAL = Path(__file__).resolve().parents[2] / "council" / "demo" / "models" / "legal-1"
PROBE = "what is the penalty under the milo act ?"
# Each member's adapter is taught its own answer to the probe.
TAUGHT = {"a": "fine", "b": "prison", "x": "forfeiture", "y": "cough", "z": "treat"}


def _member(name: str, base: Path, adapter: str) -> dict[str, Any]:
    return {
        "name": name, "base": str(base), "adapter": adapter, "description": f"adapter {name}",
        "generation": {"max_new_tokens": 6, "stop": ["\n"]},
    }  # fmt: skip


@pytest.fixture(scope="module")
def lora_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("lora")
    bases = {n: Path(shutil.copytree(LEGAL, tmp / n)) for n in ("one", "two")}
    on = {"a": "one", "b": "one", "x": "two", "y": "two", "z": "two"}
    probe = CouncilConfig.from_dict({"specialists": [_member("p", bases["one"], str(tmp))]}).specialists[0]
    prompt = load_tokenizer_counter(probe).render_prompt(PROBE, [])
    adapters = {
        n: build_lora_adapter(bases[on[n]], tmp / f"lora-{n}", seed=i, scale=0.05, teach=(prompt, word))
        for i, (n, word) in enumerate(TAUGHT.items())
    }
    deployment = {"num_cpus": 0.05, "max_batch_size": 8, "batch_wait_timeout_s": 0.05}
    members = [_member(n, bases[on[n]], adapters[n]) for n in TAUGHT]
    members[0]["deployment"] = deployment
    members[2]["deployment"] = {**deployment, "max_adapters_per_replica": 2}
    full = {"name": "full", "model": str(LEGAL), "description": "the full model", "deployment": deployment}
    return {
        "specialists": [*members, full],
        "router": {"k": 2, "quorum": 1, "member_timeout_s": 60, "num_cpus": 0.05},
        "retrieval": {"path": str(tmp / "store"), "top_n": 3, "num_cpus": 0.05},
        "aggregator": {"num_cpus": 0.05, "answers_embedded_by": "ingress"},
    }


@pytest.fixture(scope="module")
def merged(lora_config: dict[str, Any]) -> dict[str, str]:
    """Each member's probe answer with its adapter merged into the base, run alone in plain transformers."""

    async def answer(spec: Any) -> str:
        engine = TransformersEngine(spec.model_copy(update={"base": None}))  # model + adapter: merged
        await engine.start()
        [out] = await engine.generate([EngineSpecialist(engine).request(PROBE, [])])
        return out.to_generation().text

    config = CouncilConfig.from_dict(lora_config)
    want = {n: asyncio.run(answer(config.specialist(n))) for n in TAUGHT}
    assert want == TAUGHT, "each adapter, merged and alone, gives the answer it was taught"
    return want


@pytest.fixture(scope="module")
def lora_app(serve_url: str, lora_config: dict[str, Any]) -> Iterator[App]:
    from ray import serve

    from council.serving.app import build_app

    serve.run(build_app({"config_dict": lora_config}), name=APP, route_prefix="/lora")
    try:
        yield App(APP, serve_url + "/lora")
    finally:
        serve.delete(APP)


def _ask(app: App, *names: str) -> dict[str, str]:
    r = app.post("/v1/council", {"question": PROBE, "specialists": list(names), "use_retrieval": False})
    assert r.status_code == 200, r.text
    members = r.json()["members"]
    assert all(m["error"] is None for m in members), members
    return {m["name"]: m["answer"] for m in members}


def _base(name: str) -> Any:
    from ray import serve

    return serve.get_deployment_handle(name, app_name=APP)


def test_one_deployment_per_base_and_each_member_is_a_model(lora_app: App) -> None:
    from ray import serve

    deployments = set(serve.status().applications[APP].deployments)
    assert deployments == {
        "Base_one", "Base_two", "Specialist_full", "RouterIngress", "RetrievalServer"
    }  # fmt: skip
    models = [m["id"] for m in lora_app.get("/v1/models").json()["data"]]
    assert models == ["council", *TAUGHT, "full"]
    status = lora_app.get("/v1/status").json()
    assert {"Base_one", "Base_two"} <= set(status["deployments"]) and status["specialists"] == [*TAUGHT, "full"]


def test_members_answer_with_their_own_adapter_also_in_shared_batches(lora_app: App, merged: dict[str, str]) -> None:
    assert _ask(lora_app, "a", "b") == {"a": merged["a"], "b": merged["b"]}
    ingress = _base("RouterIngress")
    before = _base("Base_one").stats.remote().result(timeout_s=30)
    body = {"question": PROBE, "use_retrieval": False}
    calls = [ingress.ask.remote({**body, "specialists": [n]}) for n in ["a", "b"] * 4]
    answers = [c.result(timeout_s=120)["members"][0] for c in calls]
    assert [(m["name"], m["answer"]) for m in answers] == [(n, merged[n]) for n in ["a", "b"] * 4]
    after = _base("Base_one").stats.remote().result(timeout_s=30)
    assert after["requests"] - before["requests"] == 8
    assert after["largest_batch"] >= 2  # requests for both adapters were batched together, in one pass
    assert sorted(_base("Base_one").adapters.remote().result(timeout_s=30)) == ["a", "b"]


def test_a_multiplexed_base_loads_on_first_use_and_evicts_the_least_recently_used(
    lora_app: App, merged: dict[str, str]
) -> None:
    two = _base("Base_two")
    assert two.adapters.remote().result(timeout_s=30) == []  # nothing loaded before its first request
    seen = []
    for name in ("x", "y", "z", "x", "x"):
        assert _ask(lora_app, name) == {name: merged[name]}
        seen.append(sorted(two.adapters.remote().result(timeout_s=30)))
    # Room for two: z evicts x (the least recently used), x back evicts y; x again loads nothing.
    assert seen == [["x"], ["x", "y"], ["y", "z"], ["x", "z"], ["x", "z"]]
    stats = two.stats.remote().result(timeout_s=30)
    assert (stats["adapter_loads"], stats["adapter_evictions"]) == (4, 2)
    assert _ask(lora_app, "full")["full"]  # the full model beside them, on its own deployment
