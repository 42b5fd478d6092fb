"""Hostile input at scale: property-based requests against the real HTTP endpoint always get a 2xx, or a 4xx
with a JSON error — never a 500 — and the server keeps answering."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serve.conftest import App

pytestmark = [pytest.mark.timeout(900)]

LIMIT = 16384  # http.max_body_bytes of the test council (tests/serve/conftest.py)
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

control = st.text(st.characters(max_codepoint=0x1F), min_size=1, max_size=20)
surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=5)
weird_text = st.one_of(st.text(max_size=120), control, surrogates, st.just(""), st.just(" \t\n"))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    weird_text,
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
document = st.fixed_dictionaries({"text": weird_text | values}, optional={"source": values, "domain": values})
ASK_FIELDS: dict[str, Any] = {
    "k": st.integers(-3, 6) | values,
    "tenant": st.sampled_from(["public", "acme", '{"$ne": "a"}', "$ne", "a" * 65]) | values,
    "budget_tokens": st.integers(-5, 10**6) | values,
    "ordering": st.sampled_from(["relevance", "edges", "reverse", "random", "chaos"]) | values,
    "orderings": st.integers(-1, 9) | values,
    "documents": st.lists(document, max_size=3) | values,
    "specialists": st.lists(st.sampled_from(["physics", "history", "ghost"]), max_size=3) | values,
    "early_exit": st.booleans() | values,
    "escalation": st.booleans() | values,
    "use_retrieval": st.booleans() | values,
    "surprise": values,
}
ask_bodies = st.fixed_dictionaries({"question": weird_text | values}, optional=ASK_FIELDS) | values
chat_bodies = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["council", "physics", "nope"]) | values,
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "tool"]) | values, "content": values}),
            max_size=3,
        )
        | values,
    },
    optional={"stream": st.booleans() | values, "council": values, "temperature": values},
)
raw_bodies = st.one_of(
    st.binary(max_size=400),  # mostly not UTF-8, never JSON
    st.integers(1, 6000).map(lambda d: "[" * d + "]" * d),  # nested deeper than the parser allows
    st.integers(1, 3000).map(lambda d: '{"question": ' * d + '"q"' + "}" * d),
    st.integers(4000, 6000).map(lambda n: '{"question": "q", "k": ' + "9" * n + "}"),  # too many digits for int()
    st.sampled_from(['{"question": "q", "k": 1e999}', '{"question": "q", "budget_tokens": -1e400}', "NaN", "[]"]),
    st.integers(LIMIT - 200, LIMIT + 200).map(lambda n: json.dumps({"question": "q" * n})),  # around the limit
    st.integers(LIMIT // 2, LIMIT - 100).map(
        lambda n: json.dumps({"question": "what is written here?", "documents": [{"text": "word. " * (n // 6)}]})
    ),
    st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")),
)


def _check(r: requests.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    assert 200 <= r.status_code < 300 or 400 <= r.status_code < 500, r.status_code
    if r.status_code >= 400:
        error = r.json()["error"]
        assert isinstance(error["type"], str) and isinstance(error["message"], str)


def _post(app: App, path: str, data: bytes, content_type: str = "application/json") -> requests.Response:
    return requests.post(app.url + path, data=data, headers={"Content-Type": content_type}, timeout=120)


def _encode(body: Any) -> bytes:
    # ensure_ascii keeps lone surrogates as \ud800 escapes: the server's JSON parser must cope with them.
    return json.dumps(body, allow_nan=True).encode("ascii")


@FUZZ
@given(body=ask_bodies)
def test_council_schema_fuzz(council_app: App, body: Any) -> None:
    _check(_post(council_app, "/v1/council", _encode(body)))


@settings(FUZZ, max_examples=60)
@given(body=chat_bodies)
def test_chat_schema_fuzz(council_app: App, body: Any) -> None:
    _check(_post(council_app, "/v1/chat/completions", _encode(body)))


@settings(FUZZ, max_examples=80)
@given(data=raw_bodies, path=st.sampled_from(["/v1/council", "/v1/chat/completions", "/v1/documents"]))
def test_raw_body_fuzz(council_app: App, data: bytes | str, path: str) -> None:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    _check(_post(council_app, path, raw, content_type="application/x-www-form-urlencoded"))


def test_the_server_still_answers_after_the_fuzzing(council_app: App) -> None:
    assert requests.get(council_app.url + "/healthz", timeout=30).status_code == 200
    r = council_app.post("/v1/council", {"question": "What holds the planets in orbit?"})
    assert r.status_code == 200 and r.json()["answer"] is not None
