"""The shape of the deployed app: one deployment per specialist, options from config, dynamic batching."""

from __future__ import annotations

import asyncio

import ray
from ray import serve

from council.backends.transformers import TransformersSpecialist
from council.config import CouncilConfig
from tests.serve.conftest import SPECIALISTS, App


def test_each_specialist_is_its_own_deployment(council_app: App) -> None:
    app = serve.status().applications[council_app.name]
    assert app.status == "RUNNING"
    # Trimming and agreement run in the ingress by default (aggregator.placement): no AggregatorServer.
    expected = {f"Specialist_{n}" for n in SPECIALISTS} | {"RouterIngress", "RetrievalServer"}
    assert set(app.deployments) == expected
    # Each runs in its own replica actor (Serve names them SERVE_REPLICA::<app>#<deployment>#<id>).
    replicas = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{council_app.name}#Specialist_")
    ]
    assert sorted(r.split("#")[1] for r in replicas) == sorted(f"Specialist_{n}" for n in SPECIALISTS)


def test_deployment_options_come_from_the_config(council_app: App) -> None:
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    deployments = details["applications"][council_app.name]["deployments"]
    physics = deployments["Specialist_physics"]["deployment_config"]
    assert physics["max_ongoing_requests"] == 16 and physics["max_queued_requests"] == 64
    assert physics["ray_actor_options"]["num_cpus"] == 0.05
    ingress = deployments["RouterIngress"]["deployment_config"]
    assert ingress["max_ongoing_requests"] == 200 and ingress["max_queued_requests"] == 400


def test_concurrent_generate_calls_are_batched(council_app: App) -> None:
    handle = serve.get_deployment_handle("Specialist_finance", app_name=council_app.name)
    before = handle.stats.remote().result(timeout_s=30)

    async def burst() -> list[object]:
        return await asyncio.gather(*(handle.generate.remote(f"question {i}", ["a passage"]) for i in range(8)))

    generations = asyncio.run(burst())
    # Batched greedy answers are exactly what the same model gives each question alone, token counts included.
    assert council_app.config_path is not None
    alone = TransformersSpecialist(CouncilConfig.from_yaml(council_app.config_path).specialist("finance"))
    expected = [alone.generate_batch([(f"question {i}", ["a passage"])])[0] for i in range(8)]
    assert [(g.text, g.completion_tokens) for g in generations] == [(e.text, e.completion_tokens) for e in expected]
    assert all(1 <= g.completion_tokens <= 8 for g in generations)  # max_new_tokens of the test council
    after = handle.stats.remote().result(timeout_s=30)
    assert after["requests"] - before["requests"] == 8
    assert after["batches"] - before["batches"] < 8, "8 concurrent requests should share forward passes"
    assert after["largest_batch"] > 1


def test_members_embed_their_answers_and_the_ingress_only_the_question(council_app: App) -> None:
    from council.agreement import is_unknown
    from council.backends.embeddings import get_embedder

    member = serve.get_deployment_handle("Specialist_finance", app_name=council_app.name)
    ingress = serve.get_deployment_handle("RouterIngress", app_name=council_app.name)
    generation = member.generate.remote("what was the revenue of kavo corp ?", []).result(timeout_s=30)
    if is_unknown(generation.text):
        assert generation.embedding is None  # "unknown" never merges with an answer: no vector needed
    else:
        expected = get_embedder().embed([generation.text.strip()])[0]
        assert abs(float(expected @ expected) - float(expected @ generation.embedding)) < 1e-4
    before = [h.stats.remote().result(timeout_s=30) for h in (member, ingress)]
    answer = ingress.ask.remote(
        {"question": "members embed answers: how much did kavo corp earn?", "specialists": ["finance"]}
    ).result(timeout_s=60)
    after = [h.stats.remote().result(timeout_s=30) for h in (member, ingress)]
    real = not is_unknown(answer["members"][0]["answer"] or "")
    assert after[0]["embedded"] - before[0]["embedded"] == int(real)
    assert after[1]["texts"] - before[1]["texts"] == 1  # the question; the answer came with its vector
