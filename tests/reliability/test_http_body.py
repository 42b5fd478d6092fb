"""Hostile bodies found by the fuzzing of the live endpoint, kept as fast regressions on the HTTP layer alone."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from council.serving import http
from tests.fakes import FakeIngress

LIMIT = 8192


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(http.create_app(FakeIngress(echo=True), max_body_bytes=LIMIT), raise_server_exceptions=False)


CHAT = b'{"model": "council", "messages": [{"role": "user", "content": "%s"}]}'


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/council", b'{"question": "q\\ud800"}', 400),  # lone surrogate: was a 500 from the response encoder
        ("/v1/council", b'{"question": "q", "\\udc00": 1}', 400),
        ("/v1/chat/completions", CHAT % b"\\udfff", 400),
        ("/v1/council", b'{"question": "q\\ud83d\\ude00"}', 200),  # a surrogate pair is a real character
        ("/v1/council", b"[" * 1500 + b"]" * 1500, 400),
        ("/v1/council", b'{"question": "q", "k": ' + b"9" * 9000 + b"}", 413),  # over the body limit
        ("/v1/council", b'{"question": "q", "k": ' + b"9" * 5000 + b"}", 400),  # too many digits for int()
        ("/v1/council", b'{"question": "q", "k": ' + b"9" * 3000 + b"}", 400),  # k out of range
        ("/v1/council", b'{"question": "q", "k": 1e999}', 400),
        ("/v1/council", b"\xff\xfe{}", 400),
        ("/v1/council", b'{"question": "\\u0000\\u0007 "}', 400),  # nothing left once control characters go
    ],
)
def test_hostile_bodies_are_4xx_json(client: TestClient, path: str, body: bytes, status: int) -> None:
    r = client.post(path, content=body)
    assert r.status_code == status, r.text[:300]
    if status >= 400:
        assert set(r.json()["error"]) >= {"type", "message"}
