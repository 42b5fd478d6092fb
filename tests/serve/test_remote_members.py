"""Remote members (engine: openai) and a chairman, on the session's Serve, against real OpenAI-compatible servers on
loopback: the project's own /v1/chat/completions, and the scripted server (council.testing.scripted_openai, a real
process that fails, rate-limits, hangs and refuses keys on cue and counts every attempt where it arrives).

The app's members: `near` (a local transformers member); `far-a`, a remote member whose endpoint is this very app's
OpenAI route, model `near` (a specialist asked alone there: no recursion) — a real OpenAI-compatible server without
deploying a second app, which on two cores would cost four more replicas that load torch and MiniLM; its budget is
counted with near's own HF tokenizer. Then `lyra` (scripted), `wrongkey` (scripted, with the wrong key), and `orion`
(the chairman, also a member) with `vega` as its fallback (both scripted). The scripted members count their
budgets with tiktoken's o200k_base where litellm's bundled copy is there (offline), which also keeps their replicas
free of torch and transformers. The app runs under its own name and route prefix and is deleted at the end.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from council.agreement import ABSTAIN_ANSWER
from council.backends.tokens import load_tokenizer_counter
from council.config import SpecialistConfig
from council.prompts import CHAIRMAN_SYSTEM
from council.testing.scripted_openai import ScriptedServer
from tests.serve.conftest import App, council_config

# The keys live in the environment of every Ray process, as a cluster's nodes would carry a real key: set when
# this module is collected, before the session's Ray starts (its workers inherit it). Never in any config.
KEY_ENV, WRONG_ENV = "COUNCIL_TEST_REMOTE_KEY", "COUNCIL_TEST_WRONG_KEY"
KEY, WRONG = f"sk-remote-{secrets.token_hex(12)}", f"sk-wrong-{secrets.token_hex(12)}"
os.environ[KEY_ENV], os.environ[WRONG_ENV] = KEY, WRONG


def _bundled_tiktoken() -> str | None:
    spec = importlib.util.find_spec("litellm")
    folder = Path(spec.submodule_search_locations[0]) / "litellm_core_utils" / "tokenizers" if spec else None
    return (
        str(folder) if folder is not None and (folder / "fb374d419588a4632f3f557e76b4b70aebbca790").exists() else None
    )


# tiktoken reads its encodings from here, in every Ray process (set before Ray starts, like the keys).
TIKTOKEN_DIR = _bundled_tiktoken()
if TIKTOKEN_DIR is not None:
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", TIKTOKEN_DIR)

REMOTE = "council_remote"
MEMBER_TIMEOUT_S = 4.0
QUESTION = "what does the court decide ?"
DOC = {"text": "the court decides that the contract is void .", "source": "ruling.txt"}
NAMES = ("far-a", "near", "lyra", "wrongkey", "orion", "vega")


def _remote(name: str, url: str, model: str, tokenizer: Path | str, **options: Any) -> dict[str, Any]:
    return {
        "name": name,
        "model": model,
        "engine": "openai",
        "tokenizer": str(tokenizer),
        "context_window": 256,
        "description": f"{name} remote member",
        "generation": {"max_new_tokens": 8, "stop": ["\n"]},
        "engine_options": {"base_url": url, "backoff_s": 0.05, **options},
        "deployment": {"num_cpus": 0.05},
    }


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedServer]:
    with ScriptedServer.start(key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def remote_app(
    serve_url: str, tiny_models: list[Path], tmp_path_factory: pytest.TempPathFactory, scripted: ScriptedServer
) -> Iterator[App]:
    from ray import serve

    from council.serving.app import build_app

    keyed = {"api_key_env": KEY_ENV}
    tok = "tiktoken:o200k_base" if os.environ.get("TIKTOKEN_CACHE_DIR") else tiny_models[0]
    members = [
        _remote("far-a", f"{serve_url}/remote/v1", "near", tiny_models[1]),
        _remote("lyra", scripted.url, "m-lyra", tok, **keyed),
        _remote("wrongkey", scripted.url, "m-wrong", tok, api_key_env=WRONG_ENV),
        _remote("orion", scripted.url, "m-orion", tok, max_retries=0, **keyed),
        _remote("vega", scripted.url, "m-vega", tok, max_retries=0, **keyed),
    ]
    config = council_config(tiny_models[1:2], tmp_path_factory.mktemp("remote") / "store", {"near": "local rulings"})
    config["specialists"] += members
    config["router"]["member_timeout_s"] = MEMBER_TIMEOUT_S
    config["aggregator"] |= {
        "answers_embedded_by": "ingress",
        "agreement_threshold": 0.6,
        "chairman": {"member": "orion", "fallback": ["vega"]},  # a chairman may also be a member
    }
    t0 = time.perf_counter()
    serve.run(build_app({"config_dict": config}), name=REMOTE, route_prefix="/remote")
    print(f"\ncouncil with remote members deployed in {time.perf_counter() - t0:.1f}s")  # shown with -s
    try:
        yield App(REMOTE, f"{serve_url}/remote")
    finally:
        serve.delete(REMOTE)


def _ask(app: App, *members: str, **body: Any) -> dict[str, Any]:
    r = app.post("/v1/council", {"question": QUESTION, "specialists": list(members), "documents": [DOC], **body})
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def _members(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in answer["members"]}


def _stats(name: str) -> dict[str, int]:
    from ray import serve

    stats: dict[str, int] = (
        serve.get_deployment_handle(f"Specialist_{name}", app_name=REMOTE).stats.remote().result(timeout_s=30)
    )
    return stats


def test_two_remote_members_and_a_local_one_answer_over_http_and_handle(
    remote_app: App, tiny_models: list[Path], scripted: ScriptedServer
) -> None:
    from ray import serve

    scripted.script("m-lyra", default={"text": "the contract is void"})
    answer = _ask(remote_app, "far-a", "lyra", "near", synthesis=False)
    members = _members(answer)
    assert set(members) == {"far-a", "lyra", "near"} and all(m["error"] is None for m in members.values()), members
    # Each remote member's answer is what its server returned for the messages it sent.
    tokens = load_tokenizer_counter(SpecialistConfig.model_validate(_remote("x", "http://u", "m", tiny_models[1])))
    messages: Any = tokens.render_messages(QUESTION, [DOC["text"]])
    server = openai.OpenAI(base_url=remote_app.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    direct = server.chat.completions.create(model="near", messages=messages, max_tokens=8, temperature=0, stop=["\n"])
    assert members["far-a"]["answer"] == (direct.choices[0].message.content or "").strip()
    assert members["far-a"]["prompt_tokens"] > 0
    assert members["lyra"]["answer"] == "the contract is void"
    assert scripted.log("m-lyra")[-1]["messages"] == messages  # the same messages, whatever the server
    ingress = serve.get_app_handle(REMOTE)
    body = {"question": QUESTION, "specialists": ["far-a", "lyra", "near"], "documents": [DOC], "synthesis": False}
    by_handle = ingress.ask.remote(body).result(timeout_s=60)
    assert {m["name"]: m["answer"] for m in by_handle["members"]} == {n: m["answer"] for n, m in members.items()}
    scripted.reset()


def test_a_remote_member_streams_its_tokens_over_the_chat_route(remote_app: App) -> None:
    client = openai.OpenAI(base_url=remote_app.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    user = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model="far-a", messages=user)  # type: ignore[arg-type]
    chunks = list(client.chat.completions.create(model="far-a", messages=user, stream=True))  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_a_remote_member_that_returns_500_twice_is_retried_and_answers(
    remote_app: App, scripted: ScriptedServer
) -> None:
    before = _stats("lyra")
    scripted.script("m-lyra", {"status": 500}, {"status": 500}, {"text": "the contract is void"})
    answer = _ask(remote_app, "lyra", "near", synthesis=False)
    assert _members(answer)["lyra"]["answer"] == "the contract is void" and not answer["degraded"]
    assert [r["status"] for r in scripted.log("m-lyra")[-3:]] == [500, 500, 200]
    after = _stats("lyra")
    assert (after["attempts"] - before["attempts"], after["retries"] - before["retries"]) == (3, 2)


def test_a_remote_member_answered_429_is_retried_after_retry_after(remote_app: App, scripted: ScriptedServer) -> None:
    scripted.script("m-lyra", {"status": 429, "retry_after": 1}, {"text": "void"})
    answer = _ask(remote_app, "lyra", "near", synthesis=False)
    assert _members(answer)["lyra"]["answer"] == "void"
    limited, ok = scripted.log("m-lyra")[-2:]
    assert (limited["status"], ok["status"]) == (429, 200) and ok["t"] - limited["t"] >= 1.0


def test_a_hanging_remote_member_is_cut_at_the_member_timeout_and_its_request_closed(
    remote_app: App, scripted: ScriptedServer
) -> None:
    scripted.script("m-lyra", {"hang_s": 60})
    t0 = time.monotonic()
    answer = _ask(remote_app, "lyra", "near", synthesis=False)
    assert time.monotonic() - t0 < MEMBER_TIMEOUT_S + 10
    members = _members(answer)
    assert answer["degraded"] and members["lyra"]["error"] == f"member_timeout: timed out after {MEMBER_TIMEOUT_S:g}s"
    assert members["near"]["error"] is None
    # Cancelling the member's call reached its replica, which closed the request at the endpoint.
    deadline = time.monotonic() + 15
    while not scripted.log("m-lyra")[-1]["disconnected"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert scripted.log("m-lyra")[-1]["disconnected"]


def test_a_wrong_api_key_is_that_members_clear_error_not_the_councils(
    remote_app: App, scripted: ScriptedServer
) -> None:
    answer = _ask(remote_app, "wrongkey", "near", synthesis=False)
    error = _members(answer)["wrongkey"]["error"]
    assert answer["degraded"] and _members(answer)["near"]["error"] is None
    # The caller gets a code and an incident id; "answered 401 ... $WRONG_ENV" is in the replica's log under that
    # id (issue 16, finding 9: tests/reliability/test_member_error_redaction.py reads such a log).
    assert re.fullmatch(r"member_error: the member failed \(incident [0-9a-f]{12}\)", error), error
    assert _members(answer)["wrongkey"]["error_code"] == "member_error" and "401" not in error
    assert not scripted.log("m-wrong")[-1]["auth_ok"] and len(scripted.log("m-wrong")) == 1  # a 401 is not retried
    assert WRONG not in error and KEY not in error  # the server echoed the key it got: redacted


def test_the_api_keys_never_appear_in_status_serve_state_or_logs(remote_app: App) -> None:
    import ray
    from ray import serve

    _ask(remote_app, "wrongkey", "lyra", synthesis=False)  # something to log: a 401 and an answer
    texts = {"/v1/status": remote_app.get("/v1/status").text, "serve.status()": str(serve.status())}
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    for path in logs.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            texts[str(path)] = path.read_text(errors="replace")
    assert len(texts) > 10 and any("RemoteEndpointError" in t for t in texts.values())  # the replicas' logs are there
    leaked = [where for where, text in texts.items() if KEY in text or WRONG in text]
    assert not leaked, leaked


# ---- the chairman ------------------------------------------------------------------------------------------


def _chairman_messages(scripted: ScriptedServer, model: str) -> list[dict[str, str]]:
    """What the chairman's endpoint received last: its request's messages."""
    last: list[dict[str, str]] = scripted.log(model)[-1]["messages"]
    return last


def test_the_chairmans_synthesis_comes_with_the_members_answers_and_agreement(
    remote_app: App, scripted: ScriptedServer
) -> None:
    scripted.script("m-lyra", {"text": "the contract is void"})
    scripted.script("m-orion", {"text": "the contract is void"}, {"text": "the court holds the contract void"})
    answer = _ask(remote_app, "lyra", "orion")
    members = _members(answer)
    assert answer["answer"] == "the court holds the contract void" and not answer["abstained"]
    assert {n: m["answer"] for n, m in members.items()} == {
        "lyra": "the contract is void",
        "orion": "the contract is void",
    }
    assert answer["agreement"] == pytest.approx(1.0) and not answer["degraded"]
    s = answer["synthesis"]
    assert (s["chairman"], s["voted_answer"], s["failures"]) == ("orion", "the contract is void", [])
    assert sorted(s["labels"].values()) == ["lyra", "orion"] and s["completion_tokens"] > 0
    # The chairman saw the question, the passage and both answers under labels; no member's or model's name.
    system, user = _chairman_messages(scripted, "m-orion")
    assert system == {"role": "system", "content": CHAIRMAN_SYSTEM} and user["role"] == "user"
    assert user["content"] == (
        f"<passage 1> {DOC['text']} </passage>\n<answer A> the contract is void </answer>\n"
        f"<answer B> the contract is void </answer>\nquestion : {QUESTION}"
    )
    seen = system["content"] + user["content"]
    assert not [n for n in (*NAMES, "m-lyra", "m-orion") if n in seen], seen


def test_a_failing_chairman_falls_back_and_with_none_left_the_vote_is_marked(
    remote_app: App, scripted: ScriptedServer
) -> None:
    scripted.script("m-lyra", {"text": "void"}, {"text": "void"})
    scripted.script("m-orion", {"text": "void"}, {"status": 500}, {"text": "void"}, {"status": 503})
    scripted.script("m-vega", {"text": "the contract is void, says the fallback"}, {"hang_s": 0, "status": 502})
    answer = _ask(remote_app, "lyra", "orion")
    s = answer["synthesis"]
    assert answer["answer"] == "the contract is void, says the fallback" and s["chairman"] == "vega"
    # Each failure is a code and an incident id; the endpoint's status and URL are in the log (issue 16, finding 9).
    failed = r"{}: member_error: the member failed \(incident [0-9a-f]{{12}}\)"
    assert len(s["failures"]) == 1 and re.fullmatch(failed.format("orion"), s["failures"][0]), s["failures"]
    again = _ask(remote_app, "lyra", "orion")
    assert again["answer"] == "void" and again["synthesis"] is None and again["degraded"]
    assert re.fullmatch(f"{failed.format('orion')}; {failed.format('vega')}", again["synthesis_failed"]), again


def test_below_the_threshold_the_council_abstains_and_asks_no_chairman(
    remote_app: App, scripted: ScriptedServer
) -> None:
    asked = len(scripted.log("m-vega"))
    scripted.script("m-lyra", {"text": "the contract is void"})
    scripted.script("m-orion", {"text": "the appeal is dismissed"}, {"text": "never asked"})
    answer = _ask(remote_app, "lyra", "orion")
    assert answer["abstained"] and answer["answer"] == ABSTAIN_ANSWER and answer["synthesis"] is None
    assert scripted.log("m-orion")[-1]["messages"][0]["content"] != CHAIRMAN_SYSTEM  # its last request: as a member
    assert len(scripted.log("m-vega")) == asked
    scripted.reset()  # drop the unused step


def test_the_council_streams_its_chairmans_tokens_over_the_chat_route(
    remote_app: App, scripted: ScriptedServer
) -> None:
    client = openai.OpenAI(base_url=remote_app.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    extra = {"council": {"specialists": ["lyra", "orion"], "documents": [DOC]}}
    synthesis = "the court holds that the contract is void and of no effect"
    for _ in range(2):
        scripted.script("m-lyra", {"text": "void"})
        scripted.script("m-orion", {"text": "void"}, {"text": synthesis, "piece_delay_s": 0.02})
    user = [{"role": "user", "content": QUESTION}]
    chunks = list(client.chat.completions.create(model="council", messages=user, extra_body=extra, stream=True))  # type: ignore[arg-type]
    extras = [(c.model_extra or {}).get("council") or {} for c in chunks]
    landed = [i for i, e in enumerate(extras) if "member" in e]
    pieces = [i for i, c in enumerate(chunks) if c.choices[0].delta.content]
    assert len(landed) == 2 and len(pieces) > 3 and max(landed) < min(pieces)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == synthesis == extras[-1]["answer"]
    assert extras[-1]["synthesis"]["chairman"] == "orion"
    whole = client.chat.completions.create(model="council", messages=user, extra_body=extra)  # type: ignore[arg-type]
    assert whole.choices[0].message.content == synthesis
    assert whole.usage is not None and whole.usage.completion_tokens >= len(synthesis.split())
