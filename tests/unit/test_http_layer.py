"""The HTTP layer alone (no Ray): error mapping for failures a live council rarely shows on demand."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from council.credentials import API_KEY_ENV
from council.errors import Overloaded, QuorumNotMet
from council.serving import http
from tests.fakes import FakeIngress


def _client(ingress: FakeIngress) -> TestClient:
    return TestClient(http.create_app(ingress, max_body_bytes=16384))


def test_unexpected_errors_are_a_generic_logged_500(caplog: pytest.LogCaptureFixture) -> None:
    r = _client(FakeIngress(ValueError("secret internals"))).post("/v1/council", json={"question": "q"})
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["type"] == "internal_error" and "secret" not in error["message"]
    assert "secret internals" in caplog.text


def test_serve_backpressure_is_a_503_with_retry_after() -> None:
    from ray.serve.exceptions import BackPressureError

    r = _client(FakeIngress(BackPressureError(num_queued_requests=9, max_queued_requests=8))).post(
        "/v1/council", json={"question": "q"}
    )
    assert r.status_code == 503 and r.json()["error"]["type"] == "overloaded"
    assert int(r.headers["Retry-After"]) >= 1


def test_overloaded_and_quorum_errors_say_when_to_retry() -> None:
    r = _client(FakeIngress(Overloaded("full", retry_after_s=2.5))).post("/v1/council", json={"question": "q"})
    assert (r.status_code, r.headers["Retry-After"]) == (503, "3")
    r = _client(FakeIngress(QuorumNotMet("0 of 1", details={"members": {"solo": "boom"}}))).post(
        "/v1/council", json={"question": "q"}
    )
    assert r.status_code == 503 and r.json()["error"]["details"] == {"members": {"solo": "boom"}}


def test_non_finite_numbers_become_null_not_a_500() -> None:
    r = _client(FakeIngress(agreement=float("nan"))).post("/v1/council", json={"question": "q"})
    assert r.status_code == 200 and r.json()["agreement"] is None


def test_api_key_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, "s3cret")
    client = _client(FakeIngress())
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    not_ascii = {"Authorization": "Bearer s3cret\u00e9".encode("latin-1")}
    assert client.get("/v1/models", headers=not_ascii).status_code == 401  # type: ignore[dict-item]
    assert client.get("/healthz").status_code == 200


def test_method_not_allowed_is_a_json_error() -> None:
    r = _client(FakeIngress()).get("/v1/council")
    assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"


def test_declared_length_over_the_limit_is_refused_before_reading() -> None:
    r = _client(FakeIngress()).post("/v1/council", content=b"{}", headers={"Content-Length": "999999999"})
    assert r.status_code == 413


def test_a_failure_is_counted_once_by_the_http_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    counted: list[tuple[str, str | None]] = []
    monkeypatch.setattr(
        http.metrics, "record_failure", lambda e, elapsed, cause=None: counted.append((type(e).__name__, None))
    )
    monkeypatch.setattr(http.metrics, "record_answer", lambda a, elapsed: counted.append(("answer", a.answer)))
    client = _client(FakeIngress(Overloaded("full")))
    assert client.post("/v1/council", json={"question": "q"}).status_code == 503
    assert client.post("/v1/council", content=b"{nope").status_code == 400
    assert _client(FakeIngress()).post("/v1/council", json={"question": "q"}).status_code == 200
    assert counted == [("Overloaded", None), ("InvalidRequest", None), ("answer", "forty two")]


def test_chat_streams_openai_chunks_and_ends_with_done() -> None:
    body = {"model": "council", "messages": [{"role": "user", "content": "q"}], "stream": True}
    r = _client(FakeIngress()).post("/v1/chat/completions", json=body)
    events = [line.removeprefix("data: ") for line in r.text.splitlines() if line]
    assert r.headers["content-type"].startswith("text/event-stream") and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["choices"][0]["index"] == 0 for c in chunks)
    assert chunks[0]["choices"][0] == {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    assert "usage" not in chunks[0] and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "forty two"
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert chunks[-1]["council"]["answer"] == "forty two"


def test_chat_completion_is_the_openai_shape() -> None:
    body = {"model": "council", "messages": [{"role": "user", "content": "q"}]}
    completion = _client(FakeIngress()).post("/v1/chat/completions", json=body).json()
    assert completion["object"] == "chat.completion" and completion["model"] == "council"
    assert completion["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "forty two"}, "finish_reason": "stop"}
    ]
    assert completion["usage"]["total_tokens"] == 5 and completion["council"]["answer"] == "forty two"
    models = _client(FakeIngress()).get("/v1/models").json()
    assert models == {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": 0, "owned_by": "council"} for m in ("council", "solo")],
    }


def _sse(r: Any) -> list[dict[str, Any]]:
    events = [line.removeprefix("data: ") for line in r.text.splitlines() if line]
    assert r.status_code == 200 and events[-1] == "[DONE]", r.text
    return [json.loads(e) for e in events[:-1]]


def test_a_council_stream_shows_each_member_before_the_answer() -> None:
    body = {"model": "council", "messages": [{"role": "user", "content": "q"}], "stream": True}
    chunks = _sse(_client(FakeIngress()).post("/v1/chat/completions", json=body))
    assert chunks[0]["council"]["route"]["chosen"] == ["solo"]
    kinds = ["member" if "member" in c.get("council", {}) else c["choices"][0]["delta"].get("content") for c in chunks]
    assert kinds == ["", "member", "forty two", None]  # role, the member as it lands, the answer, the report
    assert chunks[1]["council"]["member"]["answer"] == "forty two" and chunks[1]["choices"][0]["delta"] == {}


def test_a_specialist_stream_passes_its_tokens_on_as_its_stripped_answer() -> None:
    body = {"model": "solo", "messages": [{"role": "user", "content": "q"}], "stream": True}
    chunks = _sse(_client(FakeIngress()).post("/v1/chat/completions", json=body))
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert pieces == ["forty", " two"]  # the leading space dropped, the trailing one never sent
    assert not any("member" in c.get("council", {}) for c in chunks) and chunks[-1]["council"]["answer"] == "forty two"


def test_the_chat_request_reaches_the_members_whole() -> None:
    ingress = FakeIngress()
    messages = [
        {"role": "system", "content": "answer in one word"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        {"role": "user", "content": "what now ?"},
    ]
    body = {"model": "solo", "messages": messages, "max_completion_tokens": 3, "temperature": 0.5, "top_p": 0.9,
            "stop": "\n", "seed": 7, "user": "someone", "n": 1}  # fmt: skip
    r = _client(ingress).post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    [asked] = ingress.asked
    assert asked.question == "what now ?" and asked.specialists == ("solo",)
    assert asked.conversation is not None
    assert asked.conversation.history == (("system", "answer in one word"), ("user", "first"), ("assistant", "ok"))
    assert dict(asked.conversation.sampling) == {"max_tokens": 3, "temperature": 0.5, "top_p": 0.9, "stop": ["\n"],
                                                 "seed": 7}  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"n": 2}, "n=2"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"temperature": "hot"}, "temperature"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "messages[1]"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0]"),
        ({"messages": [{"role": "tool", "content": "x"}, {"role": "user", "content": "q"}]}, "messages[0].role"),
    ],
)
def test_chat_fields_no_member_can_honour_are_a_400_naming_them(extra: dict[str, Any], named: str) -> None:
    ingress = FakeIngress()
    for model in ("council", "solo"):
        body = {"model": model, "messages": [{"role": "user", "content": "q"}], **extra}
        r = _client(ingress).post("/v1/chat/completions", json=body)
        assert r.status_code == 400, r.text
        assert named in r.json()["error"]["message"], r.json()
    assert ingress.asked == []


def test_an_error_before_the_stream_begins_keeps_its_status_and_one_after_is_an_error_event() -> None:
    body = {"model": "council", "messages": [{"role": "user", "content": "q"}], "stream": True}
    before = _client(FakeIngress(QuorumNotMet("0 of 1 members answered"))).post("/v1/chat/completions", json=body)
    assert before.status_code == 503 and before.json()["error"]["type"] == "quorum_not_met"
    midway = FakeIngress(QuorumNotMet("0 of 1 members answered"))
    midway.fail_midway = True
    chunks = _sse(_client(midway).post("/v1/chat/completions", json=body))
    assert chunks[-1] == {"error": {"type": "quorum_not_met", "message": "0 of 1 members answered"}}


def test_the_council_route_streams_its_deliberation_events() -> None:
    events = _sse(_client(FakeIngress()).post("/v1/council", json={"question": "q", "stream": True}))
    assert [e["event"] for e in events] == ["route", "member", "answer"]
    assert events[1]["member"]["name"] == "solo" and events[2]["answer"]["answer"] == "forty two"
