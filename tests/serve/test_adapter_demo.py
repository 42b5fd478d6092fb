"""The committed adapter demo (`council/demo/adapters.yaml`: one base + six LoRA adapters) served as `serve run`
serves it: ONE `Base_general` deployment for the six specialists; the demo's questions answered over HTTP with the
demo world ingested; and each member's answer the same as that adapter merged into the base in-process
(`council.local`, no Ray) gives, so the served adapters are the trained ones, applied per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from council.config import CouncilConfig
from council.demo.run import DEMO_DIR, demo_world, ingest_served, pick_questions
from council.types import AskRequest
from tests.serve.conftest import App

APP = "council_adapter_demo"
CONFIG = DEMO_DIR / "adapters.yaml"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> CouncilConfig:
    demo = CouncilConfig.from_yaml(CONFIG)
    store = tmp_path_factory.mktemp("adapter-demo") / "store"
    small = {"num_cpus": 0.05}
    return demo.model_copy(update={
        "retrieval": demo.retrieval.model_copy(update={"path": str(store), "num_cpus": 0.05}),
        "router": demo.router.model_copy(update={"num_cpus": 0.05, "member_timeout_s": 120}),
        "specialists": [s.model_copy(update={"deployment": s.deployment.model_copy(update=small)})
                        for s in demo.specialists],
    })  # fmt: skip


@pytest.fixture(scope="module")
def demo_app(serve_url: str, config: CouncilConfig) -> Iterator[App]:
    from ray import serve

    from council.serving.app import build_app

    serve.run(build_app({"config_dict": config.model_dump(mode="json")}), name=APP, route_prefix="/adapter-demo")
    try:
        yield App(APP, serve_url + "/adapter-demo")
    finally:
        serve.delete(APP)


def _answers(body: dict[str, Any]) -> dict[str, str]:
    assert all(m["error"] is None for m in body["members"]), body["members"]
    return {m["name"]: m["answer"] for m in body["members"]}


def test_six_adapter_specialists_on_one_base_deployment(demo_app: App, config: CouncilConfig) -> None:
    from ray import serve

    names = [s.name for s in config.specialists]
    assert len(names) == 6 and {s.base for s in config.specialists} == {str(DEMO_DIR / "general")}
    deployments = set(serve.status().applications[APP].deployments)
    assert deployments == {"Base_general", "RouterIngress", "RetrievalServer"}
    assert [m["id"] for m in demo_app.get("/v1/models").json()["data"]] == ["council", *names]


def test_the_demo_questions_answered_as_the_merged_adapters_answer(demo_app: App, config: CouncilConfig) -> None:
    from council.client import Client
    from council.local import build_local_council

    world = demo_world()
    questions = pick_questions(world, 2)
    with Client(demo_app.url) as client:
        ingest_served(world, client, Console(quiet=True))
        served = [client.ask(q.question) for q in questions]
    for q, answer in zip(questions, served, strict=True):
        assert answer.members, q.question
        assert all(m.error is None and m.answer for m in answer.members), (q.question, answer.members)
    # Closed book (no store in-process), every member alone: served per request == merged into the base.
    names = [s.name for s in config.specialists]
    closed = {"use_retrieval": False, "specialists": names, "k": len(names)}
    local = build_local_council(config, with_retrieval=False)  # the served store stays the served app's alone
    for q in questions:
        over_http = _answers(demo_app.post("/v1/council", {"question": q.question, **closed}).json())
        merged = asyncio.run(local.ask(AskRequest(question=q.question, **{**closed, "specialists": tuple(names)})))
        assert over_http == {m.name: m.answer for m in merged.members}, q.question
    assert Path(config.retrieval.path).is_dir()
