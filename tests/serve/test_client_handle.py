"""council.Client against the real Serve app: over HTTP and over a Serve handle, answers and errors alike."""

from __future__ import annotations

import asyncio

import pytest

from council import Client, CouncilAnswer
from council.errors import InvalidRequest, Unauthorized, UnknownSpecialist, UnknownTenant
from tests.serve.conftest import API_KEY, SPECIALISTS, App

QUESTION = "what force keeps the planets in orbit around the sun ?"


@pytest.fixture(scope="module")
def http(council_app: App) -> Client:
    return Client(council_app.url, timeout_s=60)


@pytest.fixture(scope="module")
def handle(council_app: App) -> Client:
    return Client.connect(council_app.name, timeout_s=60)


@pytest.mark.parametrize("transport", ["http", "handle"])
def test_ask_returns_a_typed_answer_with_members(transport: str, request: pytest.FixtureRequest) -> None:
    client: Client = request.getfixturevalue(transport)
    assert client.transport == transport
    answer = client.ask(QUESTION, k=2, use_retrieval=False)
    assert isinstance(answer, CouncilAnswer)
    assert answer.question == QUESTION
    assert len(answer.members) == 2
    assert {m.name for m in answer.members} <= set(SPECIALISTS)
    assert all(m.ok and 1 <= m.completion_tokens <= 8 for m in answer.members)  # max_new_tokens: 8
    assert answer.route is not None and len(answer.route.chosen) == 2
    assert answer.timings["total"] > 0


@pytest.mark.parametrize("transport", ["http", "handle"])
def test_errors_come_back_typed(transport: str, request: pytest.FixtureRequest) -> None:
    client: Client = request.getfixturevalue(transport)
    with pytest.raises(InvalidRequest, match="question"):
        client.ask("   ")
    with pytest.raises(InvalidRequest, match="k=99"):
        client.ask(QUESTION, k=99)
    with pytest.raises(UnknownSpecialist):
        client.ask(QUESTION, specialists=["astrology"])
    assert client.ask(QUESTION, k=1, use_retrieval=False).members  # still answering afterwards


async def test_aask_concurrently_over_both(http: Client, handle: Client) -> None:
    answers = await asyncio.gather(
        *(c.aask(f"{QUESTION} ({i})", k=1, use_retrieval=False) for i, c in enumerate([http, handle, http, handle]))
    )
    assert all(isinstance(a, CouncilAnswer) and len(a.members) == 1 for a in answers)


def test_ingest_then_retrieve_for_one_tenant(http: Client, handle: Client) -> None:
    fact = "The zorvex bridge in kellanor was built from blue granite in 1802."
    report = http.ingest([{"text": fact, "source": "bridges.md"}], tenant="client-tests")
    assert report["tenant"] == "client-tests" and report["chunks"] >= 1
    answer = handle.ask("what was the zorvex bridge built from ?", tenant="client-tests", k=1)
    assert any("zorvex bridge" in c.text for c in answer.sources)
    assert all(c.tenant == "client-tests" or c.ephemeral for c in answer.sources)
    handle.ingest(["The quiet harbour of vesmark freezes every winter."], tenant="client-tests-b")
    other = http.ask("what was the zorvex bridge built from ?", tenant="client-tests-b", k=1)
    assert other.sources and not any("zorvex" in c.text for c in other.sources)
    with pytest.raises(UnknownTenant):
        http.ask("what was the zorvex bridge built from ?", tenant="nobody-at-all", k=1)


def test_ephemeral_documents_as_strings(http: Client) -> None:
    answer = http.ask("what colour is the quiet lantern ?", k=1, documents=["The quiet lantern is green."])
    assert any(c.ephemeral and "quiet lantern" in c.text for c in answer.sources)


def test_models_and_status(http: Client, handle: Client) -> None:
    assert http.models() == handle.models() == ["council", *SPECIALISTS]
    assert http.health() == {"status": "ok"}
    status = handle.status()
    assert status["specialists"] == list(SPECIALISTS)
    assert http.status()["status"] == "RUNNING"


def test_auth_and_degraded_answers_on_the_guarded_app(guarded_app: App) -> None:
    with pytest.raises(Unauthorized):
        Client(guarded_app.url, api_key="wrong").ask(QUESTION)
    answer = Client(guarded_app.url, api_key=API_KEY, timeout_s=60).ask(QUESTION, k=3, use_retrieval=False)
    assert answer.degraded
    failed = {m.name: m for m in answer.members if not m.ok}
    # The client sees a code and an incident id, never the member's exception text (issue 16, finding 9).
    broken = failed["broken"]
    assert broken.error_code == "member_error" and broken.incident and "injected failure" not in (broken.error or "")
    assert failed["sleepy"].error_code == "member_timeout" and "timed out" in (failed["sleepy"].error or "")
