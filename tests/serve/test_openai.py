"""The OpenAI-compatible routes, through the official `openai` client against the real endpoint."""

from __future__ import annotations

import openai
import pytest
import requests

from tests.serve.conftest import SPECIALISTS, App

QUESTION = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is energy?"}]


@pytest.fixture(scope="module")
def client(council_app: App) -> openai.OpenAI:
    # No retries: a retried 5xx would hide a failure and triple the work.
    return openai.OpenAI(base_url=council_app.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_lists_the_council_and_each_specialist(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["council", *SPECIALISTS]


def test_chat_runs_the_council_and_carries_its_report(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="council", messages=QUESTION)  # type: ignore[arg-type]
    assert completion.object == "chat.completion" and completion.model == "council"
    content = completion.choices[0].message.content
    assert isinstance(content, str)
    report = (completion.model_extra or {})["council"]
    assert report["question"] == "What is energy?"
    assert report["answer"] == content
    assert len(report["members"]) == 3
    assert completion.usage is not None and completion.usage.total_tokens > 0


def test_chat_with_a_specialist_talks_to_it_alone(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="history", messages=QUESTION)  # type: ignore[arg-type]
    report = (completion.model_extra or {})["council"]
    assert report["route"]["chosen"] == ["history"]
    assert [m["name"] for m in report["members"]] == ["history"]
    assert completion.choices[0].message.content == report["members"][0]["answer"]


def test_chat_takes_council_options_as_an_extra_field(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="council",
        messages=QUESTION,
        extra_body={"council": {"k": 1, "use_retrieval": False}},  # type: ignore[arg-type]
    )
    report = (completion.model_extra or {})["council"]
    assert len(report["members"]) == 1 and report["sources"] == []


def test_streaming_sends_openai_chunks(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="council", messages=QUESTION, stream=True)  # type: ignore[arg-type]
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    report = (chunks[-1].model_extra or {})["council"]
    assert text == report["answer"]


def test_stream_ends_with_done(council_app: App) -> None:
    r = requests.post(
        council_app.url + "/v1/chat/completions",
        stream=True,
        timeout=60,
        json={"model": "physics", "messages": QUESTION, "stream": True},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line for line in r.iter_lines(decode_unicode=True) if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_unknown_model_is_a_404_the_client_understands(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nobody", messages=QUESTION)  # type: ignore[arg-type]
    assert "nobody" in str(info.value)
