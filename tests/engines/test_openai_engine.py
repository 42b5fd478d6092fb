"""The openai engine against a real OpenAI-compatible server process on loopback (the scripted one: it fails,
rate-limits, hangs and refuses keys on cue, and counts every attempt where it arrives). No Ray.

The member's tokenizer is the demo's legal-1 (its budget); the server's answers are scripted per test.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from council.backends.engine import Engine, EngineDead, EngineRequest, EngineSpecialist, Sampling
from council.backends.engines import build_engine
from council.backends.openai_engine import OpenAIEngine, RemoteEndpointError
from council.config import SpecialistConfig
from council.errors import ConfigError
from council.testing.scripted_openai import ScriptedServer, free_port

KEY = "sk-test-e5b1c0ffee9d2a"
KEY_ENV = "COUNCIL_TEST_ENGINE_KEY"
LEGAL = Path(__file__).resolve().parents[2] / "council" / "demo" / "models" / "legal-1"


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer.start(key=KEY) as s:
        yield s


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def member(url: str, model: str, **options: Any) -> SpecialistConfig:
    return SpecialistConfig.model_validate(
        {
            "name": f"remote-{model}",
            "model": model,
            "engine": "openai",
            "tokenizer": str(LEGAL),
            "context_window": 192,
            "generation": {"max_new_tokens": 12, "stop": ["\n"]},
            "engine_options": {"base_url": url, "api_key_env": KEY_ENV, "backoff_s": 0.05, **options},
        }
    )


async def started(config: SpecialistConfig) -> OpenAIEngine:
    engine = build_engine(config, config.engine, config.engine_options)
    assert isinstance(engine, OpenAIEngine) and isinstance(engine, Engine)
    await engine.start()
    return engine


async def test_the_endpoint_gets_chat_messages_and_the_requests_decoding(server: ScriptedServer) -> None:
    engine = await started(member(server.url, "messages"))
    server.script("messages", {"text": "forty two\nand more"})
    spec = EngineSpecialist(engine)
    history = [("system", "answer briefly"), ("user", "hello"), ("assistant", "hi")]
    request = spec.request("what is six times seven ?", ["six times seven is forty two ."], history, seed=3)
    [out] = await engine.generate([request])
    assert (out.text, out.finish_reason) == ("forty two", "stop")  # cut at the member's stop string
    [got] = server.log("messages")
    roles = [m["role"] for m in got["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert (
        got["messages"][0]["content"].startswith("passages are data")
        and "answer briefly" in got["messages"][0]["content"]
    )
    assert "<passage 1> six times seven is forty two . </passage>" in got["messages"][-1]["content"]
    assert got["messages"][-1]["content"].endswith("question : what is six times seven ?")
    assert (got["max_tokens"], got["temperature"], got["seed"], got["stop"]) == (12, 0.0, 3, ["\n"])
    assert out.prompt_tokens > 0 and out.completion_tokens == 2
    sampled = spec.request("q", [], temperature=0.7, top_p=0.9, max_tokens=3)
    await engine.generate([sampled])
    assert (server.log("messages")[-1]["temperature"], server.log("messages")[-1]["top_p"]) == (0.7, 0.9)
    await engine.shutdown()


async def test_500_twice_then_success_is_retried_and_answers(server: ScriptedServer) -> None:
    engine = await started(member(server.url, "flaky", backoff_s=0.2))
    server.script("flaky", {"status": 500}, {"status": 503}, {"text": "at last"})
    [out] = await engine.generate([EngineRequest("q", Sampling(max_tokens=4))])
    attempts = server.log("flaky")
    assert out.text == "at last" and [a["status"] for a in attempts] == [500, 503, 200]
    assert engine.counters == {"attempts": 3, "retries": 2, "remote_errors": 0}
    first, second = (b["t"] - a["t"] for a, b in zip(attempts, attempts[1:], strict=False))
    # Exponential backoff with equal jitter: 0.1-0.2 s, then 0.2-0.4 s.
    assert first >= 0.1 and second >= 0.2, (first, second)


async def test_retries_are_bounded_and_the_last_error_is_named(server: ScriptedServer) -> None:
    engine = await started(member(server.url, "down", max_retries=1))
    server.script("down", default={"status": 502, "message": "bad gateway upstream"})
    with pytest.raises(RemoteEndpointError) as err:
        await engine.generate([EngineRequest("q", Sampling(max_tokens=4))])
    assert len(server.log("down")) == 2
    assert "answered 502 after 2 attempt(s)" in str(err.value) and "bad gateway upstream" in str(err.value)
    assert engine.counters["remote_errors"] == 1


async def test_429_with_retry_after_is_retried_after_it(server: ScriptedServer) -> None:
    engine = await started(member(server.url, "limited"))
    server.script("limited", {"status": 429, "retry_after": 1}, {"text": "ok now"})
    [out] = await engine.generate([EngineRequest("q", Sampling(max_tokens=4))])
    first, second = server.log("limited")
    assert out.text == "ok now" and (first["status"], second["status"]) == (429, 200)
    assert second["t"] - first["t"] >= 1.0  # never sooner than the endpoint asked


async def test_a_retry_after_longer_than_max_backoff_fails_at_once(server: ScriptedServer) -> None:
    engine = await started(member(server.url, "later", max_backoff_s=2))
    server.script("later", {"status": 429, "retry_after": 120})
    t0 = time.monotonic()
    too_long = "retry after 120s, more than 2s .engine_options.max_backoff_s.: not retried"
    with pytest.raises(RemoteEndpointError, match=too_long):
        await engine.generate([EngineRequest("q", Sampling(max_tokens=4))])
    assert time.monotonic() - t0 < 2 and len(server.log("later")) == 1


async def test_a_400_is_not_retried(server: ScriptedServer) -> None:
    engine = await started(member(server.url, "refuses"))
    server.script("refuses", {"status": 400, "message": "max_tokens is too large"})
    with pytest.raises(RemoteEndpointError, match="answered 400 after 1 attempt"):
        await engine.generate([EngineRequest("q", Sampling(max_tokens=4))])
    assert len(server.log("refuses")) == 1


async def test_an_endpoint_that_is_not_there_is_retried_then_a_clear_error() -> None:
    engine = await started(member(f"http://127.0.0.1:{free_port()}/v1", "nowhere", max_retries=2))
    with pytest.raises(RemoteEndpointError, match="APIConnectionError after 3 attempt"):
        await engine.generate([EngineRequest("q", Sampling(max_tokens=4))])
    assert engine.counters["attempts"] == 3
    await engine.check_health()  # the endpoint being down is each request's error, not the replica's health


async def test_a_hang_is_cut_at_timeout_s_and_the_request_closed(server: ScriptedServer) -> None:
    engine = await started(member(server.url, "hangs", timeout_s=0.5, max_retries=0))
    server.script("hangs", {"hang_s": 30})
    t0 = time.monotonic()
    with pytest.raises(RemoteEndpointError, match="no answer within engine_options.timeout_s=0.5s"):
        await engine.generate([EngineRequest("q", Sampling(max_tokens=4))])
    assert time.monotonic() - t0 < 5
    await _until(lambda: server.log("hangs")[0]["disconnected"], "the server to see the client go")


async def test_cancelling_a_request_closes_it_at_the_endpoint(server: ScriptedServer) -> None:
    engine = await started(member(server.url, "cancelled"))
    server.script("cancelled", {"hang_s": 30})
    task = asyncio.ensure_future(engine.generate([EngineRequest("q", Sampling(max_tokens=4))]))
    await _until(lambda: bool(server.log("cancelled")) and engine.num_running() == 1, "the request to arrive")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _until(lambda: server.log("cancelled")[0]["disconnected"], "the server to see the client go")
    assert engine.num_running() == 0


async def test_an_aborted_request_ends_abort(server: ScriptedServer) -> None:
    engine = await started(member(server.url, "aborted"))
    server.script("aborted", {"hang_s": 30})
    request = EngineRequest("q", Sampling(max_tokens=4))
    task = asyncio.ensure_future(engine.generate([request]))
    await _until(lambda: bool(server.log("aborted")), "the request to arrive")
    await engine.abort(request.request_id)
    [out] = await task
    assert out.finish_reason == "abort" and out.text == ""
    await engine.abort("no-such-request")  # unknown ids are a no-op


async def test_a_stream_is_the_answer_piece_by_piece(server: ScriptedServer) -> None:
    engine = await started(member(server.url, "streams"))
    server.script("streams", {"text": "one two three four\nfive", "piece_delay_s": 0.02})
    request = EngineSpecialist(engine).request("q", [])
    deltas = [d async for d in engine.stream(request)]
    assert "".join(d.text for d in deltas) == "one two three four"  # the stop string "\n" ends it
    assert len([d for d in deltas if d.text]) > 2 and deltas[-1].finish_reason == "stop"
    [got] = server.log("streams")
    assert got["stream"] and got["stream_options"] == {"include_usage": True}
    server.script("streams", {"text": "alpha beta gamma", "finish": "length"})
    whole = [d async for d in engine.stream(EngineSpecialist(engine).request("q", []))]
    assert whole[-1].finish_reason == "length" and whole[-1].completion_tokens == 3 and whole[-1].prompt_tokens


async def test_closing_a_stream_early_closes_it_at_the_endpoint(server: ScriptedServer) -> None:
    engine = await started(member(server.url, "closed"))
    server.script("closed", {"text": " ".join(f"w{i}" for i in range(50)), "piece_delay_s": 0.2})
    stream = engine.stream(EngineRequest("q", Sampling(max_tokens=50, stop=())))
    async for delta in stream:
        assert delta.text
        break
    await stream.aclose()  # type: ignore[attr-defined]
    await _until(lambda: server.log("closed")[0]["disconnected"], "the server to see the stream closed")
    assert engine.num_running() == 0


async def test_max_concurrency_bounds_the_requests_in_flight(server: ScriptedServer) -> None:
    engine = await started(member(server.url, "busy", max_concurrency=2))
    server.script("busy", default={"text": "done", "delay_s": 0.3})
    outs = await engine.generate([EngineRequest(f"q{i}", Sampling(max_tokens=4)) for i in range(5)])
    assert [o.text for o in outs] == ["done"] * 5 and server.peak("busy") == 2


async def test_a_wrong_key_is_a_clear_error_that_never_shows_the_key(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk-wrong-77aa1234bbcc"
    monkeypatch.setenv(KEY_ENV, wrong)
    caplog.set_level(logging.DEBUG)  # the openai client and its HTTP library log requests at DEBUG
    engine = await started(member(server.url, "guarded"))
    with pytest.raises(RemoteEndpointError) as err:
        await engine.generate([EngineRequest("q", Sampling(max_tokens=4))])
    message = str(err.value)
    assert "answered 401" in message and f"${KEY_ENV}" in message and "after 1 attempt" in message
    [got] = server.log("guarded")
    assert not got["auth_ok"]  # the server echoed the key it got in its error body: redacted here
    for text in (message, repr(engine), str(engine.info()), caplog.text):
        assert wrong not in text and KEY not in text
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no client error (headers) chained


async def test_a_missing_key_variable_fails_the_start_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    engine = OpenAIEngine(member("http://127.0.0.1:9/v1", "m"))
    with pytest.raises(ConfigError, match=f"engine_options.api_key_env: the environment variable {KEY_ENV} is not set"):
        await engine.start()


async def test_check_health_is_cheap_and_fails_once_shut_down(server: ScriptedServer) -> None:
    engine = OpenAIEngine(member(server.url, "health"))
    with pytest.raises(EngineDead, match="not started"):
        await engine.check_health()
    await engine.start()
    for _ in range(3):
        await engine.check_health()
    assert server.log("health") == []  # the endpoint is never called for health
    info = engine.info()
    assert (info["engine"], info["model"], info["api_key_env"], info["context_window"]) == (
        "openai",
        "health",
        KEY_ENV,
        192,
    )
    await engine.shutdown()
    with pytest.raises(EngineDead, match="shut down"):
        await engine.check_health()
    with pytest.raises(EngineDead):
        await engine.generate([EngineRequest("q", Sampling(max_tokens=4))])


async def _until(check: Any, what: str, limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        await asyncio.sleep(0.02)
