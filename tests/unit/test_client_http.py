"""council.Client over HTTP against a real local HTTP server speaking the council's API shape."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from council import Client, CouncilAnswer
from council.client import Unreachable, build_payload, error_from_response
from council.errors import CouncilError, InvalidRequest, Overloaded, QuorumNotMet, Unauthorized
from council.types import Chunk, MemberAnswer, TrimReport

ANSWER = CouncilAnswer(
    question="what does zorvex treat ?",
    answer="migraine",
    agreement=0.8,
    entropy=0.5,
    abstained=False,
    degraded=True,
    members=(
        MemberAnswer("medical-a", 0.9, answer="migraine", prompt_tokens=40, completion_tokens=2, latency_s=0.05),
        MemberAnswer("medical-b", 0.7, error="member_timeout: timed out after 2s", error_code="member_timeout"),
    ),
    sources=(Chunk("c1", "zorvex treats migraine .", source="medical.md", score=0.8),),
    trims=(TrimReport("medical-a", 100, 12, kept=("c1",)),),
    timings={"total": 55.0},
)


class _Council(BaseHTTPRequestHandler):
    """Answers like RouterIngress: the question picks the outcome, so each test can ask for one."""

    seen: list[tuple[str, dict[str, Any], dict[str, str]]] = []

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if not isinstance(body, str) else "text/plain")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, {"status": "ok", "specialists": 2})
        elif self.path == "/v1/status":
            self._send(200, {"app": "council", "status": "RUNNING", "deployments": {}, "chunks": 3})
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "council"}, {"id": "medical-a"}]})
        else:
            self._send(404, {"error": {"type": "not_found", "message": "no such route"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.path, body, dict(self.headers)))
        if self.path == "/v1/documents":
            self._send(200, {"tenant": body["tenant"], "documents": len(body["documents"]), "chunks": 2})
            return
        q = body.get("question", "")
        errors = {
            "": (400, {"error": {"type": "invalid_request", "message": "question must be a non-empty string"}}, {}),
            "quorum": (
                503,
                {"error": {"type": "quorum_not_met", "message": "0 of 2 answered", "details": {"members": {}}}},
                {},
            ),
            "busy": (503, {"error": {"type": "overloaded", "message": "queue full"}}, {"Retry-After": "7"}),
            "secret": (401, {"error": {"type": "unauthorized", "message": "missing bearer token"}}, {}),
            "weird": (418, {"error": {"type": "teapot", "message": "short and stout"}}, {}),
            "plain": (500, "Internal Server Error", {}),
        }
        if q in errors:
            self._send(*errors[q])
        else:
            self._send(200, ANSWER.to_dict())


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Council)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_ask_returns_typed_answer_and_sends_the_body(url: str) -> None:
    with Client(url, api_key="s3cret") as client:
        answer = client.ask("what does zorvex treat ?", k=2, tenant="acme", documents=["zorvex treats migraine ."])
    assert answer == ANSWER
    assert answer.members[1].error and not answer.members[1].ok
    path, body, headers = _Council.seen[-1]
    assert path == "/v1/council"
    assert body == {
        "question": "what does zorvex treat ?",
        "k": 2,
        "tenant": "acme",
        "documents": [{"text": "zorvex treats migraine .", "source": "request"}],
    }
    assert headers["Authorization"] == "Bearer s3cret"


async def test_aask_runs_concurrently(url: str) -> None:
    import asyncio

    client = Client(url)
    answers = await asyncio.gather(*(client.aask(f"question {i}") for i in range(5)))
    assert all(isinstance(a, CouncilAnswer) and a.answer == "migraine" for a in answers)


@pytest.mark.parametrize(
    ("question", "exc", "message"),
    [
        ("", InvalidRequest, "question must be a non-empty string"),
        ("quorum", QuorumNotMet, "0 of 2 answered"),
        ("busy", Overloaded, "queue full"),
        ("secret", Unauthorized, "missing bearer token"),
        ("weird", CouncilError, "short and stout"),
        ("plain", CouncilError, "HTTP 500: Internal Server Error"),
    ],
)
def test_http_errors_become_council_errors(url: str, question: str, exc: type[CouncilError], message: str) -> None:
    with pytest.raises(exc) as info:
        Client(url).ask(question)
    assert info.value.message == message
    assert type(info.value) is exc  # the exact class, not just a base


def test_error_details_and_retry_after_survive() -> None:
    e = error_from_response(503, {"error": {"type": "overloaded", "message": "m"}}, {"retry-after": "7"})
    assert isinstance(e, Overloaded) and e.retry_after_s == 7.0
    q = error_from_response(503, {"error": {"type": "quorum_not_met", "message": "m", "details": {"a": 1}}})
    assert isinstance(q, QuorumNotMet) and q.details == {"a": 1}
    other = error_from_response(502, "<html>bad gateway</html>")
    assert other.status == 502 and "bad gateway" in other.message


def test_models_health_status_and_ingest(url: str) -> None:
    client = Client(url)
    assert client.models() == ["council", "medical-a"]
    assert client.health()["status"] == "ok"
    assert client.status()["status"] == "RUNNING"
    report = client.ingest(["zorvex treats migraine .", {"text": "kavo is a fine .", "domain": "legal"}], tenant="t1")
    assert report == {"tenant": "t1", "documents": 2, "chunks": 2}
    path, body, _ = _Council.seen[-1]
    assert path == "/v1/documents"
    assert body["documents"][1] == {"source": "request", "text": "kavo is a fine .", "domain": "legal"}


def test_unreachable_url_is_a_clear_error() -> None:
    with pytest.raises(Unreachable, match="cannot reach the council at http://127.0.0.1:9"):
        Client("http://127.0.0.1:9", timeout_s=2).ask("anyone there?")


def test_payload_options() -> None:
    body = build_payload("q", {"documents": [{"text": "t"}, "u"], "specialists": "a", "k": None})
    assert body == {
        "question": "q",
        "documents": [{"source": "request", "text": "t"}, {"text": "u", "source": "request"}],
        "specialists": ["a"],
    }
    with pytest.raises(TypeError, match="unknown option"):
        build_payload("q", {"top_k": 3})
    with pytest.raises(TypeError, match="a document must be"):
        build_payload("q", {"documents": [42]})


def test_importing_the_client_imports_no_ray() -> None:
    code = "import sys, council; council.Client; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
