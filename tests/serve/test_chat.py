"""The chat route means what it says, and streams for real: the official `openai` client, LangChain's ChatOpenAI
and LiteLLM against a council of two transformers-engine members on local Serve.

`chatty` is a random GPT-2 (6 layers of width 256, a chat template) allowed 96 new tokens and no stop string:
its answers are long, so a stream can be seen arriving while the engine still decodes. `brief` is a tiny GPT-2
that stops at a newline within 8 tokens. The app runs under its own name and route prefix on the session's Serve.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from council.client import Client
from council.testing.tiny import build_tiny_gpt2
from council.types import CouncilAnswer, MemberAnswer, RouteDecision
from tests.serve.conftest import App, council_config

APP = "council_chat"
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)
USER = [{"role": "user", "content": "what does the court decide ?"}]


@pytest.fixture(scope="module")
def chat_app(serve_url: str, tiny_models: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    from ray import serve

    from council.serving.app import build_app

    tmp = tmp_path_factory.mktemp("chat")
    chatty = build_tiny_gpt2(tmp / "chatty", n_layer=6, n_embd=256, chat_template=CHAT_TEMPLATE, n_positions=512)
    config = council_config([chatty, tiny_models[0]], tmp / "store", {"chatty": "long talk", "brief": "short talk"})
    config["specialists"][0]["generation"] = {"max_new_tokens": 96, "stop": []}
    config["router"]["k"] = 2
    serve.run(build_app({"config_dict": config}), name=APP, route_prefix="/chat")
    try:
        yield App(APP, serve_url + "/chat")
    finally:
        serve.delete(APP)


@pytest.fixture(scope="module")
def client(chat_app: App) -> openai.OpenAI:
    return openai.OpenAI(base_url=chat_app.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _stats(name: str) -> dict[str, int]:
    from ray import serve

    handle = serve.get_deployment_handle(f"Specialist_{name}", app_name=APP)
    stats: dict[str, int] = handle.stats.remote().result(timeout_s=30)
    return stats


def _chat(client: openai.OpenAI, model: str = "chatty", messages: Any = USER, **fields: Any) -> Any:
    return client.chat.completions.create(model=model, messages=messages, **fields)


def test_a_specialist_streams_its_tokens_while_its_engine_still_decodes(client: openai.OpenAI) -> None:
    stream = _chat(client, stream=True)
    pieces: list[str] = []
    running_at_first: int | None = None
    for chunk in stream:
        content = chunk.choices[0].delta.content
        if content and running_at_first is None:
            running_at_first = _stats("chatty")["running"]  # the engine holds the request: decoding goes on
        pieces.append(content or "")
        last = chunk
    report = (last.model_extra or {})["council"]
    assert running_at_first == 1
    assert len([p for p in pieces if p]) > 1
    assert "".join(pieces) == report["members"][0]["answer"] and report["members"][0]["completion_tokens"] > 8
    whole = _chat(client)
    assert whole.choices[0].message.content == "".join(pieces)  # greedy: the stream is the same answer


def test_max_tokens_one_returns_one_token_cut_for_length(client: openai.OpenAI) -> None:
    completion = _chat(client, max_tokens=1)
    assert completion.usage.completion_tokens == 1 and completion.choices[0].finish_reason == "length"
    streamed = list(_chat(client, max_completion_tokens=1, stream=True))
    assert streamed[-1].usage.completion_tokens == 1 and streamed[-1].choices[0].finish_reason == "length"


def test_max_tokens_over_the_members_limit_is_a_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _chat(client, max_tokens=500)
    assert "max_tokens=500" in str(info.value) and "96" in str(info.value)
    council = _chat(client, model="council", max_tokens=500)  # the council caps it to each member's own limit
    members = {m["name"]: m for m in (council.model_extra or {})["council"]["members"]}
    assert all(m["error"] is None for m in members.values()), members
    assert members["chatty"]["completion_tokens"] <= 96 and members["brief"]["completion_tokens"] <= 8


def test_sampling_settings_reach_the_engine(client: openai.OpenAI) -> None:
    greedy = _chat(client).choices[0].message.content
    one = _chat(client, temperature=1.0, seed=3).choices[0].message.content
    assert _chat(client, temperature=1.0, seed=3).choices[0].message.content == one  # seeded: reproducible
    assert one != greedy and _chat(client, temperature=1.0, seed=4).choices[0].message.content != one
    stop = greedy[10:14]
    assert stop.strip(), greedy
    cut = _chat(client, stop=[stop]).choices[0].message.content
    assert cut == greedy[: greedy.index(stop)].strip()


def test_the_system_message_and_earlier_turns_are_in_the_prompt(client: openai.OpenAI) -> None:
    alone = _chat(client, max_tokens=1).usage.prompt_tokens
    system = [{"role": "system", "content": "you are a careful clerk of the court"}, *USER]
    with_system = _chat(client, messages=system, max_tokens=1).usage.prompt_tokens
    turns = [*system[:1], {"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"}, *USER]
    with_turns = _chat(client, messages=turns, max_tokens=1).usage.prompt_tokens
    assert alone < with_system < with_turns


def test_a_council_stream_shows_each_member_before_the_answer(client: openai.OpenAI) -> None:
    chunks = list(_chat(client, model="council", stream=True))
    extras = [c.model_extra.get("council") or {} for c in chunks]
    members = [i for i, e in enumerate(extras) if "member" in e]
    content = [i for i, c in enumerate(chunks) if c.choices[0].delta.content]
    assert sorted(extras[0]["route"]["chosen"]) == ["brief", "chatty"]
    assert sorted(extras[i]["member"]["name"] for i in members) == ["brief", "chatty"]
    assert content and max(members) < min(content)  # every member's answer before the council's
    report = extras[-1]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == report["answer"]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_the_python_client_iterates_the_deliberation_over_http_and_handle(chat_app: App) -> None:
    async def events(client: Client) -> list[Any]:
        return [e async for e in client.astream("what does the court decide ?", k=2)]

    over_http = asyncio.run(events(Client(chat_app.url)))
    over_handle = asyncio.run(events(Client.connect(APP)))
    for got in (over_http, over_handle):
        assert isinstance(got[0], RouteDecision) and isinstance(got[-1], CouncilAnswer)
        landed = [e for e in got[1:-1] if isinstance(e, MemberAnswer)]
        assert sorted(m.name for m in landed) == ["brief", "chatty"]
        assert {m.name: m.answer for m in landed} == {m.name: m.answer for m in got[-1].members}


def test_closing_a_stream_aborts_the_engine_request(chat_app: App) -> None:
    import requests

    before = _stats("chatty")
    with requests.post(
        chat_app.url + "/v1/chat/completions",
        json={"model": "chatty", "messages": USER, "stream": True},
        stream=True,
        timeout=60,
    ) as r:
        lines = r.iter_lines()
        while b'"content":' not in next(lines) or _stats("chatty")["running"] == 0:
            pass
    deadline = time.monotonic() + 20
    while (after := _stats("chatty"))["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert after["running"] == 0 and after["cancelled"] == before["cancelled"] + 1, after


def test_langchain_chat_openai_streams_from_a_specialist_and_the_council(chat_app: App) -> None:
    from langchain_openai import ChatOpenAI

    for model in ("chatty", "council"):
        llm = ChatOpenAI(model=model, base_url=chat_app.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        pieces = [chunk.content for chunk in llm.stream("what does the court decide ?")]
        whole = llm.invoke("what does the court decide ?").content
        assert "".join(str(p) for p in pieces) == whole and whole, (model, pieces)
        if model == "chatty":
            assert len([p for p in pieces if p]) > 1


def test_litellm_streams_from_a_specialist_and_the_council(chat_app: App) -> None:
    import litellm

    for model in ("chatty", "council"):
        kwargs: dict[str, Any] = {"model": f"openai/{model}", "api_base": chat_app.url + "/v1", "api_key": "unused"}
        pieces = [c.choices[0].delta.content or "" for c in litellm.completion(messages=USER, stream=True, **kwargs)]
        whole = litellm.completion(messages=USER, **kwargs).choices[0].message.content
        assert "".join(pieces) == whole and whole, (model, pieces)
        if model == "chatty":
            assert len([p for p in pieces if p]) > 1
