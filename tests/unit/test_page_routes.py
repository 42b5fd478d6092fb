"""The web page's routes alone (no Ray, no browser): the page and its files without a key, `/ui/auth`, and
`/ui/session` per key (tests/serve/ui drives the page itself in Chromium against the demo council)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from council.config import CouncilConfig
from council.credentials import KEYS_FILE_ENV, KeyTable, load_table, table_entry
from council.errors import ConfigError
from council.serving import http
from council.serving.page import STATIC
from council.types import CouncilAnswer, MemberAnswer
from tests.fakes import FakeIngress

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"acme-r": "ck-acme-1", "ops": "ck-ops-2", "writer": "ck-globex-3"}


@pytest.fixture
def keys(tmp_path: Path) -> KeyTable:
    import yaml

    path = tmp_path / "keys.yaml"
    entries = [
        table_entry("acme-r", KEYS["acme-r"], ["acme"], ["read"]),
        table_entry("ops", KEYS["ops"], ["*"], ["admin"]),
        table_entry("writer", KEYS["writer"], ["globex", "initech"], ["write"]),
    ]
    path.write_text(yaml.safe_dump({"keys": entries}))
    return load_table({KEYS_FILE_ENV: str(path)})


def _client(ingress: FakeIngress, keys: KeyTable | None = None, root_path: str = "") -> TestClient:
    return TestClient(http.create_app(ingress, max_body_bytes=16384, keys=keys or KeyTable()), root_path=root_path)


def _bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def test_the_page_and_its_files_answer_without_a_key_under_the_apps_route_prefix(keys: KeyTable) -> None:
    client = _client(FakeIngress(guard=True), keys, root_path="/council-a")
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert 'data-root="/council-a"' in page.text and 'src="/council-a/ui/page.js"' in page.text
    assert "{{ROOT}}" not in page.text and "default-src 'self'" in page.headers["content-security-policy"]
    for name, kind in (("page.js", "text/javascript"), ("page.css", "text/css")):
        r = client.get(f"/ui/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert r.content == (STATIC / name).read_bytes()
    for bad in ("/ui/index.html", "/ui/..%2Fpage.py", "/ui/page.js.map"):
        r = client.get(bad)
        assert r.status_code == 404, bad
        assert "no page file" in r.json()["error"]["message"] or r.json()["error"]["type"] == "not_found"


def test_the_page_names_no_other_origin() -> None:
    """No CDN, no fonts from elsewhere: everything the page loads is its own (the machine may have no internet)."""
    for name in ("index.html", "page.js", "page.css"):
        text = (STATIC / name).read_text()
        assert "http://" not in text.replace("http://127.0.0.1", "") and "https://" not in text, name


def test_auth_says_only_whether_a_key_is_needed(keys: KeyTable) -> None:
    assert _client(FakeIngress(guard=True), keys).get("/ui/auth").json() == {"required": True}
    assert _client(FakeIngress()).get("/ui/auth").json() == {"required": False}


def test_the_session_needs_the_key_and_lists_only_the_keys_tenants(keys: KeyTable) -> None:
    client = _client(FakeIngress(), keys)
    r = client.get("/ui/session")
    assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
    assert client.get("/ui/session", headers={"Authorization": "Bearer nope"}).status_code == 401
    acme = client.get("/ui/session", headers=_bearer("acme-r")).json()
    assert (acme["key"], acme["tenants"], acme["tenant"]) == ("acme-r", ["acme", "public"], "acme")
    assert acme["rights"] == ["read"]
    ops = client.get("/ui/session", headers=_bearer("ops")).json()
    assert (ops["tenants"], ops["tenant"]) == (["acme", "public"], "public")  # every tenant: those the store knows
    writer = client.get("/ui/session", headers=_bearer("writer")).json()
    assert (writer["tenants"], writer["tenant"]) == ([], None)  # a write-only key reads nothing, public included


def test_without_keys_the_session_is_open_with_the_councils_members_examples_and_defaults() -> None:
    ingress = FakeIngress()
    session = _client(ingress).get("/ui/session").json()
    assert session["auth"] is False and session["key"] is None and session["tenant"] == "public"
    assert session["specialists"] == [{"name": "solo", "domain": "general", "description": ""}]
    assert session["examples"] == [] and session["defaults"]["k"] == 3
    assert session["defaults"]["ordering"] == "relevance"
    two = [{"name": "a", "model": "m", "examples": ["q1", "q2"]}, {"name": "b", "model": "m", "examples": ["q2"]}]
    ingress.config = CouncilConfig.from_dict({"specialists": two})
    assert _client(ingress).get("/ui/session").json()["examples"] == ["q1", "q2"]  # each specialist's, once
    ingress.config = CouncilConfig.from_dict(
        {"specialists": [{"name": "a", "model": "m", "examples": ["q1"]}], "http": {"examples": ["the demo's"]}}
    )
    assert _client(ingress).get("/ui/session").json()["examples"] == ["the demo's"]


def test_http_examples_must_be_a_list_of_questions() -> None:
    with pytest.raises(ConfigError, match="http.examples"):
        CouncilConfig.from_dict({"specialists": [{"name": "a", "model": "m"}], "http": {"examples": "one question"}})


def test_the_answers_clusters_survive_the_wire() -> None:
    members = (MemberAnswer("a", 0.5, answer="x"), MemberAnswer("b", 0.4, answer="y"))
    answer = CouncilAnswer("q", "x", 0.5, 0.69, False, False, members, clusters=(("a",), ("b",)))
    assert answer.to_dict()["clusters"] == [["a"], ["b"]]
    assert CouncilAnswer.from_dict(answer.to_dict()) == answer


def test_the_pages_files_ship_in_the_wheel() -> None:
    """pyproject's package data names the static folder, so an installed (non-editable) council serves the page."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["council"]
    shipped = {p for pattern in data for p in (ROOT / "council").glob(pattern) if p.is_file()}
    assert {STATIC / n for n in ("index.html", "page.js", "page.css")} <= shipped


def test_the_demo_offers_the_questions_it_asks_as_the_pages_examples() -> None:
    from council.demo.run import demo_setup, demo_world, pick_questions, with_examples

    setup = demo_setup(None)
    questions = pick_questions(demo_world(), 2)
    offered = with_examples(setup, questions)
    asked = [q.question for q in questions]
    assert offered.config.http.examples == asked and offered.app_args["config_dict"]["http"]["examples"] == asked
    assert offered.config.specialists == setup.config.specialists  # nothing else changes
    assert with_examples(offered, questions[:1]) is offered  # a config's own examples win
