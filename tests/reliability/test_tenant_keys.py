"""The tenant comes from the key: the HTTP app over the real council of test_tenant_attack (real Chroma, MiniLM and
tiny specialists, one of them leaky), with a key table of per-tenant keys.

A key for acme never reads or writes globex through /v1/council or /v1/chat/completions (the council or one
specialist) or /v1/documents, whatever it names; naming globex is the same 404 as naming a tenant that does not
exist; only an admin writes `public`; a rate-limited key gets 429 with Retry-After.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from council.credentials import KEYS_FILE_ENV, KeyTable, RateLimiter, load_table, table_entry
from council.errors import ConfigError
from council.pipeline import Council
from council.serving import http
from council.serving.exposure import checked_keys
from council.types import AskRequest, CouncilAnswer, Document
from tests.reliability.test_tenant_attack import ATTACKS, SECRETS, Recording, _assert_isolated, council

__all__ = ["council"]  # the module-scoped fixture, shared
KEYS = {"acme-rw": "ck-acme-0001", "globex-r": "ck-globex-0002", "ops": "ck-admin-0003", "slow": "ck-slow-0004"}


class LocalIngress:
    """`http.Ingress` over an in-process Council and its Chroma store (what RouterIngress does over handles)."""

    def __init__(self, built: Council) -> None:
        self.council = built
        assert built.retriever is not None
        self.store: Any = built.retriever

    async def answer(self, request: AskRequest) -> CouncilAnswer:
        return await self.council.ask(request)

    def deliberate(self, request: AskRequest, *, tokens: bool) -> AsyncIterator[Any]:
        return self.council.deliberate(request, tokens=tokens)

    async def add_documents(self, tenant: str, documents: Sequence[Document]) -> dict[str, Any]:
        report = self.store.ingest_texts([(d.source, d.text) for d in documents], tenant=tenant)
        return {"tenant": tenant, "documents": len(documents), "added": report.added, "chunks": report.chunks}

    def models(self) -> list[str]:
        return ["council", "honest", "leaky"]

    async def status(self, grant: Any) -> dict[str, Any]:
        own = sorted(t for t in grant.tenants if grant.covers(t))
        return {"tenants": {t: self.store.count(t) for t in own}}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyTable:
    path = tmp_path_factory.mktemp("keys") / "keys.yaml"
    entries = [
        table_entry("acme-rw", KEYS["acme-rw"], ["acme"], ["read", "write"]),
        table_entry("globex-r", KEYS["globex-r"], ["globex"], ["read"]),
        table_entry("ops", KEYS["ops"], ["*"], ["admin"]),
        {**table_entry("slow", KEYS["slow"], ["acme"], ["read"]), "requests_per_minute": 2},
    ]
    path.write_text(yaml.safe_dump({"keys": entries}))
    assert KEYS["acme-rw"] not in path.read_text()  # hashes only
    return load_table({KEYS_FILE_ENV: str(path)})


@pytest.fixture(scope="module")
def client(council: tuple[Council, list[Recording]], keys: KeyTable) -> TestClient:
    built, _ = council
    app = http.create_app(LocalIngress(built), max_body_bytes=65536, keys=keys, limiter=RateLimiter())
    return TestClient(app, raise_server_exceptions=False)


# What an acme key gets for each tenant it names: an answer (None), the unknown-tenant 404, or 400 for no name.
REFUSED: dict[str | None, int | None] = {
    None: None, "acme": None, "globex": 404, "no-such-tenant": 404, "GLOBEX": 404, "Acme": 404, "globex ": 400,
    "../globex": 400,
}  # fmt: skip


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[key]}"}


def _bodies(attack: dict[str, Any], tenant: str | None) -> list[tuple[str, dict[str, Any]]]:
    """The attack as a /v1/council body and as chat bodies to the council and to one specialist."""
    options: dict[str, Any] = {k: v for k, v in attack.items() if k != "question"}
    if "documents" in options:
        options["documents"] = [{"text": d.text, "source": d.source} for d in options["documents"]]
    if tenant is not None:
        options["tenant"] = tenant
    chat = {"messages": [{"role": "user", "content": attack["question"]}], "council": options}
    return [
        ("/v1/council", {"question": attack["question"], **options}),
        ("/v1/chat/completions", {"model": "council", **chat}),
        ("/v1/chat/completions", {"model": "leaky", **{**chat, "council": {**options, "k": None}}}),
    ]


def _report(path: str, body: Any) -> CouncilAnswer:
    return CouncilAnswer.from_dict(body if path == "/v1/council" else body["council"])


def test_an_acme_key_never_reaches_globex_by_any_route_or_tenant_named(
    client: TestClient, council: tuple[Council, list[Recording]]
) -> None:
    _, members = council
    unknown_body = None
    counts = {"answered": 0, "refused": 0}
    for attack in ATTACKS:
        for tenant, refused in REFUSED.items():
            for path, body in _bodies(attack, tenant):
                for m in members:
                    m.prompts.clear()
                r = client.post(path, json=body, headers=_as("acme-rw"))
                if refused is None:
                    assert r.status_code == 200, (path, tenant, r.text)
                    answer = _report(path, r.json())
                    _assert_isolated(answer, [p for m in members for p in m.prompts], "acme")
                    assert all(c.tenant == "acme" for c in answer.sources)
                    counts["answered"] += 1
                    continue
                assert tenant is not None and r.status_code == refused, r.text
                assert not any(m.prompts for m in members)  # refused before any member saw anything
                if r.status_code == 404 and tenant in ("globex", "no-such-tenant"):
                    error = r.json()["error"]
                    shape = (error["type"], error["message"].replace(tenant, "T"))
                    unknown_body = unknown_body or shape
                    assert shape == unknown_body == ("unknown_tenant", "unknown tenant 'T'")
                counts["refused"] += 1
    assert counts["answered"] + counts["refused"] >= 200 and counts["answered"] >= 60, counts


def test_writes_stay_in_the_keys_tenants_and_only_admin_writes_public(client: TestClient) -> None:
    doc = {"documents": [{"text": "The acme canteen opens at nine.", "source": "acme/canteen.txt"}]}
    own = client.post("/v1/documents", json=doc, headers=_as("acme-rw"))  # one tenant: it need not name it
    assert own.status_code == 200 and own.json()["tenant"] == "acme", own.text
    foreign = client.post("/v1/documents", json={**doc, "tenant": "globex"}, headers=_as("acme-rw"))
    unknown = client.post("/v1/documents", json={**doc, "tenant": "nobody"}, headers=_as("acme-rw"))
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json()["error"]["message"].replace("globex", "T") == unknown.json()["error"]["message"].replace(
        "nobody", "T"
    )
    public = client.post("/v1/documents", json={**doc, "tenant": "public"}, headers=_as("acme-rw"))
    assert public.status_code == 403 and "admin" in public.json()["error"]["message"]
    read_only = client.post("/v1/documents", json={**doc, "tenant": "globex"}, headers=_as("globex-r"))
    assert read_only.status_code == 403 and "'write'" in read_only.json()["error"]["message"]
    admin = client.post("/v1/documents", json=doc, headers=_as("ops"))  # every tenant: a write names one
    assert admin.status_code == 400 and "names its tenant" in admin.json()["error"]["message"]
    assert client.post("/v1/documents", json={**doc, "tenant": "public"}, headers=_as("ops")).status_code == 200
    status = client.get("/v1/status", headers=_as("acme-rw")).json()
    assert set(status["tenants"]) == {"acme"}  # its own tenants' counts only


def test_a_wrong_or_missing_key_is_401_and_a_key_over_its_rate_is_429(client: TestClient) -> None:
    body = {"question": "Who repaired the mill?", "use_retrieval": False}
    assert client.post("/v1/council", json=body).status_code == 401
    assert client.post("/v1/council", json=body, headers={"Authorization": "Bearer ck-guess"}).status_code == 401
    statuses = [client.post("/v1/council", json=body, headers=_as("slow")) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    limited = statuses[-1]
    assert limited.json()["error"]["type"] == "rate_limited" and "2 requests per minute" in limited.text
    assert 1 <= int(limited.headers["Retry-After"]) <= 30


def test_the_secret_of_the_other_tenant_is_never_in_any_answer(client: TestClient) -> None:
    r = client.post(
        "/v1/council", json={"question": "What is the globex vault code?"}, headers=_as("globex-r")
    )  # the globex key reads its own
    assert r.status_code == 200 and SECRETS["globex"] in json.dumps(r.json()["sources"])
    assert SECRETS["acme"] not in r.text


def test_an_exposed_app_needs_credentials_or_an_explicit_opt_out() -> None:
    none = KeyTable()
    with pytest.raises(ConfigError, match="COUNCIL_KEYS_FILE"):
        checked_keys("keys", none, "0.0.0.0")
    assert checked_keys("keys", none, "127.0.0.1") is none and checked_keys("keys", none, "localhost") is none
    assert checked_keys("none", none, "0.0.0.0") is none  # on purpose: logged as a warning
    some = load_table({"COUNCIL_API_KEY": "k"})
    assert checked_keys("keys", some, "0.0.0.0") is some
    with pytest.raises(ConfigError, match="auth is 'none' but keys are configured"):
        checked_keys("none", some, "127.0.0.1")
