"""Issue 16, finding 9: a member's error reaches callers as a stable code, a short reason and an incident id —
never the exception's text (Ray's actor errors name node addresses and PIDs) — and the log holds the detail
under that same id. Through the HTTP app over a real pipeline (MiniLM agreement), the report the CLI renders,
and the answer the client rebuilds from JSON."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient
from rich.console import Console

from council.backends.embeddings import get_embedder
from council.config import CouncilConfig
from council.credentials import KeyTable
from council.local_aggregator import LocalAggregator
from council.pipeline import Council
from council.render import render_answer
from council.serving import http
from council.types import AskRequest, CouncilAnswer, Generation
from tests.fakes import WordCounter

# What Ray's ActorDiedError says about a replica that died: node address, PID, actor and node ids.
LEAK = ("The actor died unexpectedly before finishing this task. class_name: ServeReplica:council:lyra "
        "actor_id: 9f2c41aa01 pid: 48213 namespace: serve ip: 10.0.3.17 node_id: 7ab3e0c911d4")
SECRETS = ("10.0.3.17", "48213", "7ab3e0c911d4", "ServeReplica", "ActorDied", "RuntimeError")
INCIDENT = re.compile(r"member_error: the member failed \(incident ([0-9a-f]{12})\)")


class Member:
    def __init__(self, name: str, answer: str = "paris", fail: str | None = None) -> None:
        self.name, self.answer, self.fail = name, answer, fail

    async def generate(self, question: str, passages: Sequence[str]) -> Generation:
        if self.fail:
            raise RuntimeError(self.fail)
        return Generation(self.answer, prompt_tokens=10, completion_tokens=2, latency_s=0.0)


class PipelineIngress:
    """The part of `http.Ingress` these routes use, over an in-process Council."""

    def __init__(self, council: Council) -> None:
        self.council = council

    async def answer(self, request: AskRequest) -> CouncilAnswer:
        return await self.council.ask(request)

    def deliberate(self, request: AskRequest, *, tokens: bool) -> AsyncIterator[Any]:
        return self.council.deliberate(request, tokens=tokens)

    def models(self) -> list[str]:
        return ["council", "steady", "lyra"]


@pytest.fixture(scope="module")
def client() -> TestClient:
    members = [Member("steady"), Member("steady2", "Paris."), Member("lyra", fail=LEAK)]
    cfg = CouncilConfig.from_dict({
        "specialists": [{"name": m.name, "model": "unused"} for m in members],
        "router": {"k": 3, "member_timeout_s": 5.0},
        "aggregator": {"agreement_threshold": 0.5, "default_budget_tokens": 64},
    })  # fmt: skip
    embedder = get_embedder()
    counters = {m.name: WordCounter(256, 8, prompt=10, per_passage=3) for m in members}
    council = Council(cfg, embedder=embedder, specialists={m.name: m for m in members},
                      aggregator=LocalAggregator(embedder, counters, cfg.aggregator))
    app = http.create_app(PipelineIngress(council), max_body_bytes=65536, keys=KeyTable())
    return TestClient(app, raise_server_exceptions=False)


def _logged(caplog: pytest.LogCaptureFixture, incident: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if incident in r.getMessage()]


@pytest.mark.parametrize("route", ["/v1/council", "/v1/chat/completions"])
def test_a_members_error_is_a_code_and_an_incident_id_and_the_log_has_the_detail(
    client: TestClient, caplog: pytest.LogCaptureFixture, route: str
) -> None:
    body: dict[str, Any] = {"question": "What is the capital of France?", "specialists": ["steady", "steady2", "lyra"]}
    if route != "/v1/council":
        body = {"model": "council", "messages": [{"role": "user", "content": body["question"]}],
                "council": {"specialists": body["specialists"]}}
    with caplog.at_level(logging.WARNING, logger="council"):
        r = client.post(route, json=body)
    assert r.status_code == 200, r.text
    report = r.json() if route == "/v1/council" else r.json()["council"]
    for secret in SECRETS:
        assert secret not in r.text, f"{secret!r} reached the caller"
    (lyra,) = [m for m in report["members"] if m["name"] == "lyra"]
    match = INCIDENT.fullmatch(lyra["error"])
    assert match and lyra["error_code"] == "member_error" and lyra["incident"] == match.group(1), lyra
    assert report["degraded"] is True and report["answer"].lower().startswith("paris")

    (record,) = _logged(caplog, lyra["incident"])
    assert "member lyra failed" in record.getMessage() and LEAK in record.getMessage()
    assert record.exc_info is not None and str(record.exc_info[1]) == LEAK  # the traceback too

    # The client rebuilds the same answer from the JSON, and the CLI's report shows the code and the id.
    answer = CouncilAnswer.from_dict(report)
    console = Console(record=True, width=200)
    render_answer(answer, out=console)
    text = console.export_text()
    assert f"incident {lyra['incident']}" in text and "member_error" in text
    assert not any(secret in text for secret in SECRETS)


def test_under_quorum_the_503_names_each_member_by_code_only(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="council"):
        r = client.post("/v1/council", json={"question": "What is the capital of France?", "specialists": ["lyra"]})
    assert r.status_code == 503, r.text
    why = r.json()["error"]["details"]["members"]["lyra"]
    match = INCIDENT.fullmatch(why)
    assert match, why
    assert not any(secret in r.text for secret in SECRETS)
    assert LEAK in _logged(caplog, match.group(1))[0].getMessage()
