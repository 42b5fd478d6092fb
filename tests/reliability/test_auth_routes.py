"""With COUNCIL_API_KEY set, every route of the HTTP app but /healthz and the web page's own files (the page, its
script and style, and whether a key is needed: no data) refuses a missing or wrong token (401), found by walking
the app's routes (a new route cannot slip through), and the token is compared in constant time."""

from __future__ import annotations

import hmac
from typing import Any

import pytest
from fastapi.testclient import TestClient

from council import credentials
from council.credentials import API_KEY_ENV, key_hash
from council.serving import http
from tests.fakes import FakeIngress

KEY = "s3cret-key-\u00e9"  # non-ASCII: the comparison is on bytes
OPEN = {"/healthz", "/", "/ui/auth", "/ui/{name}"}


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv(API_KEY_ENV, KEY)
    return TestClient(http.create_app(FakeIngress(guard=True), max_body_bytes=65536), raise_server_exceptions=False)


def _routes(client: TestClient) -> list[tuple[str, str]]:
    app: Any = client.app
    found = []
    # The app's own routes, and the API router's (included routers are not listed as routes of their own).
    for route in [*(r for r in app.routes if hasattr(r, "path")), *http.router.routes]:
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method != "HEAD":
                found.append((method, route.path))
    return found


def test_the_app_has_the_documented_routes(client: TestClient) -> None:
    paths = {p for _, p in _routes(client)}
    assert {"/healthz", "/v1/council", "/v1/chat/completions", "/v1/models"} <= paths


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Bearer wrong", f"Basic {KEY}", f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", KEY],
)
def test_every_route_but_healthz_refuses_a_bad_token(client: TestClient, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization.encode("utf-8")}
    for method, path in _routes(client):
        if path in OPEN:
            continue
        r = client.request(method, path, headers=headers, content=b'{"question": "q"}')
        assert r.status_code == 401, (method, path, r.status_code, r.text[:200])
        assert r.json()["error"]["type"] == "unauthorized"
        assert r.headers["WWW-Authenticate"] == "Bearer"


def test_healthz_stays_open(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200


def test_the_pages_open_routes_answer_without_a_token_and_reach_nothing(client: TestClient) -> None:
    """FakeIngress(guard=True) fails any call that reaches it: the page's open routes never do."""
    assert client.get("/").status_code == 200 and client.get("/ui/page.js").status_code == 200
    assert client.get("/ui/auth").json() == {"required": True}
    assert client.get("/ui/session").status_code == 401


def test_the_token_is_compared_in_constant_time(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(credentials.hmac, "compare_digest", spy)
    assert client.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    # The key's hash against every stored hash, never the key itself in plain text.
    assert calls and calls[-1] == (key_hash("nope").encode(), key_hash(KEY).encode())


def test_the_right_token_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, KEY)
    client = TestClient(http.create_app(FakeIngress(), max_body_bytes=65536), raise_server_exceptions=False)
    r = client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}".encode()})
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["council", "solo"]
