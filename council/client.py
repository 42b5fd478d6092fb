"""The Python client: one `Client` over HTTP (outside a cluster) or a Serve handle (inside one, see
`council.serving.app_handle`)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from council.errors import CouncilError, Overloaded, Unreachable
from council.types import (
    AskRequest,
    CouncilAnswer,
    DeliberationEvent,
    Document,
    MemberAnswer,
    MemberDelta,
    RouteDecision,
    SynthesisDelta,
)

if TYPE_CHECKING:
    from council.serving.app_handle import HandleTransport

DEFAULT_URL = "http://127.0.0.1:8000"
# Every AskRequest field but the question (and a chat's conversation) is a per-request option of `ask`.
OPTIONS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(AskRequest)) - {"question", "conversation"}
# What `Client.astream` yields.
StreamEvent = DeliberationEvent


def _error_types() -> dict[str, type[CouncilError]]:
    """Map every CouncilError subclass's JSON `type` to the class (most derived wins on clashes)."""
    found: dict[str, type[CouncilError]] = {}
    todo: list[type[CouncilError]] = [CouncilError]
    while todo:
        cls = todo.pop(0)
        found[cls.type] = cls
        todo.extend(cls.__subclasses__())
    return found


def error_from_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> CouncilError:
    """Turn an HTTP error answer into the matching council.errors exception, keeping the server's message."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        # Not our JSON error shape (a proxy, Serve's own 408/503, FastAPI's 422): keep what it said.
        text = body if isinstance(body, str) else str(body)
        exc = CouncilError(f"HTTP {status}: {text.strip()[:300] or 'no body'}")
        exc.status = status
        return exc
    cls = _error_types().get(str(err.get("type")), CouncilError)
    message = str(err.get("message") or f"HTTP {status}")
    details = err.get("details") if isinstance(err.get("details"), dict) else None
    if issubclass(cls, Overloaded):
        retry = (headers or {}).get("retry-after") or (headers or {}).get("Retry-After")
        return cls(message, retry_after_s=float(retry) if retry else 1.0, details=details)
    exc = cls(message, details=details)
    if cls is CouncilError:
        exc.status = status
    return exc


def build_payload(question: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The POST /v1/council body for a question; None options are left out (the server's config decides)."""
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; expected some of {sorted(OPTIONS)}")
    payload: dict[str, Any] = {"question": question}
    for key, value in options.items():
        if value is None:
            continue
        if key == "documents":
            value = [_document(d) for d in value]
        elif key == "specialists":
            value = [value] if isinstance(value, str) else list(value)
        payload[key] = value
    return payload


def _document(doc: str | Document | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(doc, str):
        return {"text": doc, "source": "request"}
    if isinstance(doc, Document):
        return {k: v for k, v in dataclasses.asdict(doc).items() if v is not None}
    if isinstance(doc, Mapping) and "text" in doc:
        return {"source": "request", **doc}
    raise TypeError(f"a document must be a string, a Document or a dict with 'text', got {type(doc).__name__}")


class _Http:
    """HTTP transport over httpx: a pooled sync client, and an async one per event loop."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.timeout = httpx.Timeout(timeout_s, connect=min(5.0, timeout_s))
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._sync: httpx.Client | None = None
        self._async: dict[int, httpx.AsyncClient] = {}

    def _client(self) -> Any:
        import httpx

        if self._sync is None:
            self._sync = httpx.Client(timeout=self.timeout, headers=self.headers)
        return self._sync

    def _aclient(self) -> Any:
        import httpx

        key = id(asyncio.get_running_loop())
        if key not in self._async:
            self._async[key] = httpx.AsyncClient(timeout=self.timeout, headers=self.headers)
        return self._async[key]

    def request(self, method: str, path: str, body: Any = None) -> Any:
        import httpx

        try:
            resp = self._client().request(method, self.url + path, json=body)
        except httpx.TimeoutException as e:
            raise Unreachable(f"no answer from {self.url} within the timeout ({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise Unreachable(f"cannot reach the council at {self.url}: {e}") from None
        return _decode(resp)

    async def arequest(self, method: str, path: str, body: Any = None) -> Any:
        import httpx

        try:
            resp = await self._aclient().request(method, self.url + path, json=body)
        except httpx.TimeoutException as e:
            raise Unreachable(f"no answer from {self.url} within the timeout ({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise Unreachable(f"cannot reach the council at {self.url}: {e}") from None
        return _decode(resp)

    async def astream(self, path: str, body: Any) -> AsyncIterator[dict[str, Any]]:
        """POST `body` and yield each server-sent event's JSON until [DONE]; an error event raises it."""
        import httpx

        try:
            async with self._aclient().stream("POST", self.url + path, json=body) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    _decode(resp)
                async for line in resp.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: ") :]
                    if data.strip() == "[DONE]":
                        return
                    event = json.loads(data)
                    if isinstance(event, dict) and "error" in event:
                        raise _stream_error(event)
                    yield event
        except httpx.TimeoutException as e:
            raise Unreachable(f"no answer from {self.url} within the timeout ({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise Unreachable(f"cannot reach the council at {self.url}: {e}") from None

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None


def _stream_error(event: dict[str, Any]) -> CouncilError:
    """An error event of a stream as the council error its `type` names (its HTTP status is that error's)."""
    cls = _error_types().get(str(event["error"].get("type")), CouncilError)
    return error_from_response(cls.status, event)


def stream_event(body: Mapping[str, Any]) -> StreamEvent:
    """One deliberation event's JSON (POST /v1/council with stream, or the handle's ask_stream) as its type."""
    kind = body.get("event")
    if kind == "route":
        return RouteDecision(scores=dict(body["scores"]), chosen=tuple(body["chosen"]))
    if kind == "delta":
        return MemberDelta(str(body["member"]), str(body["text"]))
    if kind == "member":
        return MemberAnswer.from_dict(body["member"])
    if kind == "synthesis":
        return SynthesisDelta(str(body["chairman"]), str(body["text"]))
    if kind == "answer":
        return CouncilAnswer.from_dict(body["answer"])
    raise CouncilError(f"unknown stream event {kind!r}")


def _decode(resp: Any) -> Any:
    try:
        body: Any = resp.json()
    except ValueError:
        body = resp.text
    if resp.status_code >= 400:
        raise error_from_response(resp.status_code, body, resp.headers)
    return body


class Client:
    """Ask the council: `Client(url=...)` over HTTP, or `Client.connect()` over a Serve handle in-cluster.

    >>> answer = Client().ask("What does Zorvex treat?", k=3)
    >>> answer.answer, answer.agreement
    """

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout_s: float = 120.0) -> None:
        """HTTP client; `api_key` defaults to $COUNCIL_API_KEY (sent as a bearer token when set)."""
        self.url: str | None = url
        self.timeout_s = timeout_s
        self._http: _Http | None = _Http(url, api_key or os.environ.get("COUNCIL_API_KEY"), timeout_s)
        self._handle: HandleTransport | None = None

    @classmethod
    def connect(
        cls,
        app_name: str = "council",
        *,
        address: str | None = None,
        timeout_s: float = 120.0,
        api_key: str | None = None,
    ) -> Client:
        """A client over `serve.get_app_handle(app_name)`; joins the Ray cluster at `address` if needed.

        Without `address`, RAY_ADDRESS or the running cluster ("auto") is used. `api_key` (default
        $COUNCIL_API_KEY) is the caller's key, as over HTTP: with keys configured it decides the tenants.
        """
        from council.serving.app_handle import HandleTransport

        self = cls.__new__(cls)
        self.url, self.timeout_s, self._http = None, timeout_s, None
        key = api_key or os.environ.get("COUNCIL_API_KEY")
        self._handle = HandleTransport.connect(app_name, address=address, timeout_s=timeout_s, api_key=key)
        return self

    @property
    def transport(self) -> str:
        """'http' or 'handle'."""
        return "http" if self._http is not None else "handle"

    def ask(self, question: str, **options: Any) -> CouncilAnswer:
        """Ask one question. Options are AskRequest fields (k, tenant, documents as strings or dicts, ...)."""
        payload = build_payload(question, options)
        if self._http is not None:
            return CouncilAnswer.from_dict(self._http.request("POST", "/v1/council", payload))
        assert self._handle is not None
        return CouncilAnswer.from_dict(self._handle.call("ask", payload, keyed=True))

    async def astream(self, question: str, **options: Any) -> AsyncIterator[StreamEvent]:
        """`ask`, as the council deliberates: the RouteDecision (who is asked), each member's MemberAnswer as it
        lands (failed and cancelled ones too), then the CouncilAnswer.

        >>> async for event in Client().astream("What does Zorvex treat?"):
        ...     if isinstance(event, MemberAnswer): print(event.name, event.answer)
        """
        payload = build_payload(question, options)
        if self._http is not None:
            events = self._http.astream("/v1/council", {**payload, "stream": True})
        else:
            assert self._handle is not None
            events = self._handle.astream("ask_stream", payload)
        async for body in events:
            yield stream_event(body)

    async def aask(self, question: str, **options: Any) -> CouncilAnswer:
        """`ask` for asyncio code; many may run concurrently on one client."""
        payload = build_payload(question, options)
        if self._http is not None:
            return CouncilAnswer.from_dict(await self._http.arequest("POST", "/v1/council", payload))
        assert self._handle is not None
        return CouncilAnswer.from_dict(await self._handle.acall("ask", payload, keyed=True))

    def models(self) -> list[str]:
        """The model names the council answers to: 'council' and each specialist's name."""
        if self._http is not None:
            body = self._http.request("GET", "/v1/models")
            return [m["id"] for m in body.get("data", [])] if isinstance(body, dict) else list(body)
        assert self._handle is not None
        return list(self._handle.call("models"))

    def health(self) -> dict[str, Any]:
        """Liveness: GET /healthz over HTTP (no auth needed), the ingress's `status()` over a handle."""
        if self._http is not None:
            body = self._http.request("GET", "/healthz")
            return body if isinstance(body, dict) else {"status": str(body).strip() or "ok"}
        return self.status()

    def status(self) -> dict[str, Any]:
        """The app's state: specialists, each deployment's replicas, the store's chunk count."""
        if self._http is not None:
            return dict(self._http.request("GET", "/v1/status"))
        assert self._handle is not None
        return dict(self._handle.call("status", keyed=True))

    def ingest(
        self, documents: Iterable[str | Document | Mapping[str, Any]], *, tenant: str | None = None
    ) -> dict[str, Any]:
        """Store documents for `tenant` in the council's own store (POST /v1/documents); idempotent. A write names
        its tenant unless the key has exactly one.

        Returns the server's report: {"tenant", "documents", "chunks"}.
        """
        payload: dict[str, Any] = {"documents": [_document(d) for d in documents]}
        if tenant is not None:
            payload["tenant"] = tenant
        if self._http is not None:
            return dict(self._http.request("POST", "/v1/documents", payload))
        assert self._handle is not None
        return dict(self._handle.call("ingest", payload, keyed=True))

    def close(self) -> None:
        """Release pooled HTTP connections (handles need no closing)."""
        if self._http is not None:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(url={self.url!r})" if self._http is not None else "Client.connect(...)"


def documents_from(texts: Iterable[str]) -> list[dict[str, Any]]:
    """Ephemeral documents from plain strings, numbered as their source (used by the CLI's --doc)."""
    return [{"text": t, "source": f"doc{i + 1}"} for i, t in enumerate(texts)]
