"""The HTTP API: routes that map bodies to the ingress and its answers and errors back; no council logic.

Auth and the body-size limit are dependencies, every error family has one exception handler, and each request
is counted in the council's metrics here, once (handle callers are counted by RouterIngress instead).
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from council.config import CouncilConfig
from council.credentials import Grant, KeyTable, RateLimiter, load_table
from council.errors import (
    CouncilError,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
    Unauthorized,
    UnknownSpecialist,
)
from council.pipeline import Event
from council.serving import metrics, ray_errors
from council.serving.page import page_router
from council.serving.schemas import (
    AskBody,
    AskOptions,
    ChatBody,
    Completion,
    IngestBody,
    ModelCard,
    ModelList,
    event_body,
    parse,
)
from council.serving.sse import Events, Trimmed, opened, sse
from council.serving.sse import finite as _finite
from council.types import (
    AskRequest,
    CouncilAnswer,
    Document,
    MemberAnswer,
    MemberDelta,
    RouteDecision,
    SynthesisDelta,
)

log = logging.getLogger(__name__)


class Ingress(Protocol):
    """What the HTTP app needs of the council (RouterIngress in a replica; a fake in tests)."""

    async def answer(self, request: AskRequest) -> CouncilAnswer:
        """Run the council on one request (not counted: the caller counts)."""
        ...

    def deliberate(self, request: AskRequest, *, tokens: bool) -> AsyncGenerator[Event, None]:
        """The council on one request, as it happens (council.pipeline.Council.deliberate)."""
        ...

    async def add_documents(self, tenant: str, documents: Sequence[Document]) -> dict[str, Any]:
        """Store documents for a tenant; the ingest report."""
        ...

    def models(self) -> list[str]:
        """'council' and each specialist's name."""
        ...

    async def status(self, grant: Grant) -> dict[str, Any]:
        """The app's state, with the store's counts of the tenants `grant` covers."""
        ...

    async def tenants(self) -> list[str]:
        """The tenants the store knows (for the web page of a key over every tenant)."""
        ...

    @property
    def config(self) -> CouncilConfig:
        """The council's config (the web page shows its members, examples and defaults)."""
        ...


# ---------------------------------------------------------------- dependencies


def _started(request: Request) -> None:
    request.state.started = time.perf_counter()


def authorized(request: Request) -> None:
    """The caller's grant (council.credentials): with keys configured, `Authorization: Bearer <key>` must name
    one (hashed, compared in constant time); with none, the open grant. Then the key's rate limit."""
    keys: KeyTable = request.app.state.keys
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # Headers arrive latin-1 decoded: a UTF-8 key's original bytes, read as UTF-8 again.
    given = token.strip().encode("latin-1", "replace").decode("utf-8", "replace")
    grant = keys.authenticate(given if scheme.lower() == "bearer" else None)
    request.state.grant = grant
    limiter: RateLimiter = request.app.state.limiter
    limiter.admit(grant)


def _grant(request: Request) -> Grant:
    grant: Grant = request.state.grant
    return grant


async def json_body(request: Request) -> Any:
    """The body as JSON, read at most `max_body_bytes` far (Starlette has no limit of its own): 413 beyond,
    400 for non-UTF-8 or invalid JSON."""
    limit: int = request.app.state.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the {limit}-byte limit")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise PayloadTooLarge(f"body is over the {limit}-byte limit")
    if not body.strip():
        raise InvalidRequest("empty body: expected a JSON object")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequest(f"body is not UTF-8 (bad byte at offset {e.start})") from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise InvalidRequest("invalid JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and ints too long to convert
        raise InvalidRequest(f"invalid JSON: {e}") from None
    try:
        # "\ud800" is valid JSON but no character: it would fail later, in a tokenizer or the response encoder.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("invalid JSON: a \\u escape encodes a lone surrogate, not a character") from None
    return value


# ---------------------------------------------------------------- routes

router = APIRouter(prefix="/v1", dependencies=[Depends(_started), Depends(authorized)])
JsonBody = Annotated[Any, Depends(json_body)]


def _ingress(request: Request) -> Ingress:
    ingress: Ingress = request.app.state.ingress
    return ingress


@router.post("/council")
async def ask(request: Request, payload: JsonBody) -> Response:
    body: AskBody = parse(AskBody, payload)
    ask = body.to_request(body.question, tenant=_grant(request).tenant_for(body.tenant, "read"))
    if body.stream:
        events = await opened(_ingress(request).deliberate(ask, tokens=False))
        return sse(_council_events(request, events))
    answer = await _answer(request, ask)
    return JSONResponse(_finite(answer.to_dict()))


@router.post("/documents")
async def ingest(request: Request, payload: JsonBody) -> Response:
    body: IngestBody = parse(IngestBody, payload)
    tenant = _grant(request).tenant_for(body.tenant, "write")
    documents = [d.to_document() for d in body.documents]
    return JSONResponse(await _ingress(request).add_documents(tenant, documents))


@router.get("/models")
async def models(request: Request) -> ModelList:
    return ModelList(data=[ModelCard(id=m) for m in _ingress(request).models()])


@router.get("/status")
async def status(request: Request) -> Response:
    return JSONResponse(_finite(await _ingress(request).status(_grant(request))))


@router.post("/chat/completions")
async def chat(request: Request, payload: JsonBody) -> Response:
    body: ChatBody = parse(ChatBody, payload)
    known = _ingress(request).models()
    if body.model not in known:
        raise UnknownSpecialist(f"unknown model {body.model!r}; known: {known}", details={"model": body.model})
    if (refused := body.refused()) is not None:
        raise InvalidRequest(refused)
    question, conversation = body.conversation()
    options = body.council or AskOptions()
    tenant = _grant(request).tenant_for(options.tenant, "read")
    alone = body.model != "council"
    if alone:  # one specialist, asked alone (and no chairman rewrites its answer)
        only = (body.model,)
        ask = options.to_request(
            question, specialists=only, k=None, conversation=conversation, synthesis=False, tenant=tenant
        )
    else:
        ask = options.to_request(question, conversation=conversation, tenant=tenant)
    completion = Completion(body.model)
    if body.stream:
        # Tokens stream from a specialist asked alone; the council streams each member's answer as it lands, then
        # its chairman's tokens when it has one.
        events = await opened(_ingress(request).deliberate(ask, tokens=alone))
        return sse(_chat_events(request, completion, events, alone))
    answer = await _answer(request, ask)
    content, finish = _content(answer, alone)
    return JSONResponse(completion.message(answer, content, _finite(answer.to_dict()), finish).model_dump())


async def _answer(request: Request, ask: AskRequest) -> CouncilAnswer:
    answer = await _ingress(request).answer(ask)
    _answered(request, answer)
    return answer


def _answered(request: Request, answer: CouncilAnswer) -> None:
    """Count an answer in the metrics and its generated tokens against the caller's key."""
    metrics.record_answer(answer, _elapsed(request))
    limiter: RateLimiter = request.app.state.limiter
    limiter.spend(_grant(request), sum(m.completion_tokens for m in answer.members))


def _content(answer: CouncilAnswer, alone: bool) -> tuple[str, str]:
    """The reply's text and finish_reason: a specialist's own answer, or the council's."""
    if alone:
        member = answer.members[0]
        return member.answer or "", member.finish_reason or "stop"
    return answer.answer, "stop"


# ---------------------------------------------------------------- streams



async def _council_events(request: Request, events: Events) -> AsyncIterator[dict[str, Any]]:
    """POST /v1/council's stream: every deliberation event as `event_body` shapes it; an error as the last one."""
    try:
        async for event in events:
            if isinstance(event, CouncilAnswer):
                _answered(request, event)
            yield event_body(event)
    except Exception as e:
        yield _stream_error(request, e)


async def _chat_events(
    request: Request, completion: Completion, events: Events, alone: bool
) -> AsyncIterator[dict[str, Any]]:
    """The chat stream: the role (with the route), then a specialist's tokens as its engine produces them, or the
    council's members as each answers and then the council's answer (its chairman's tokens as they come, when it
    has a chairman); a last chunk with finish_reason, usage and the report. An error after the stream began is an
    OpenAI error event (the openai client raises it). Pieces of a chairman that fails midway stay sent: the last
    chunk's report holds the answer the council settled on."""
    text = Trimmed()
    try:
        async for event in events:
            if isinstance(event, RouteDecision):
                yield completion.first(event_body(event)).wire()
            elif isinstance(event, MemberDelta | SynthesisDelta):
                # Alone: the member's own tokens. The council: its chairman's (members' answers come whole).
                ours = isinstance(event, MemberDelta) if alone else isinstance(event, SynthesisDelta)
                if ours and (piece := text.feed(event.text)):
                    yield completion.content(piece).wire()
            elif isinstance(event, MemberAnswer):
                if not alone:
                    yield completion.member(event_body(event)["member"]).wire()
            else:
                _answered(request, event)
                content, finish = _content(event, alone)
                rest = content[len(text.sent) :] if content.startswith(text.sent) else ""
                if rest:
                    yield completion.content(rest).wire()
                yield completion.last(event, _finite(event.to_dict()), finish).wire()
    except Exception as e:
        yield _stream_error(request, e)


def _stream_error(request: Request, error: Exception) -> dict[str, Any]:
    """An error after the stream's 200 went out, as OpenAI streams one: {"error": {type, message}}."""
    council_error = error if isinstance(error, CouncilError) else ray_errors.as_council_error(error)
    if council_error is None:
        incident = uuid.uuid4().hex[:12]
        log.error("internal error %s in a stream", incident, exc_info=error)
        metrics.record_failure(error, _elapsed(request))
        return {"error": {"type": "internal_error", "message": f"internal error (incident {incident})"}}
    metrics.record_failure(error, _elapsed(request), council_error)
    body: dict[str, Any] = json.loads(json.dumps(_finite(council_error.to_dict()), default=str))
    return body


# ---------------------------------------------------------------- errors


def _elapsed(request: Request) -> float:
    started = getattr(request.state, "started", None)
    return time.perf_counter() - started if started is not None else 0.0


def error_response(error: CouncilError) -> Response:
    """`{"error": {"type", "message"[, "details"]}}` with the error's status; 503s say when to retry."""
    headers: dict[str, str] = {}
    if isinstance(error, Overloaded):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    elif error.status == 503:
        headers["Retry-After"] = "1"
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    body = json.loads(json.dumps(_finite(error.to_dict()), default=str))
    return JSONResponse(body, status_code=error.status, headers=headers)


def _internal_error(request: Request, error: BaseException) -> Response:
    """A logged, generic 500: the caller learns an incident id, never the internals."""
    metrics.record_failure(error, _elapsed(request))
    incident = uuid.uuid4().hex[:12]
    log.error("internal error %s", incident, exc_info=error)
    body = {"error": {"type": "internal_error", "message": f"internal error (incident {incident})"}}
    return JSONResponse(body, status_code=500)


async def _council_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CouncilError)
    metrics.record_failure(exc, _elapsed(request))
    return error_response(exc)


async def _ray_error(request: Request, exc: Exception) -> Response:
    error = ray_errors.as_council_error(exc)
    if error is None:
        return _internal_error(request, exc)
    metrics.record_failure(exc, _elapsed(request), error)
    return error_response(error)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    kind = "not_found" if status == 404 else "method_not_allowed" if status == 405 else "http_error"
    message = f"{request.method} {request.url.path}: {getattr(exc, 'detail', '')}"
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


class _Incidents:
    """Everything no handler maps becomes `_internal_error` (Starlette's own catch-all would re-raise it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as e:
            if started:  # a stream already under way cannot become an error response
                raise
            await _internal_error(Request(scope), e)(scope, receive, send)


def create_app(
    ingress: Ingress, *, max_body_bytes: int, keys: KeyTable | None = None, limiter: RateLimiter | None = None
) -> FastAPI:
    """The FastAPI app over one ingress. `keys`: the key table (default: read now from COUNCIL_KEYS_FILE and
    COUNCIL_API_KEY); `limiter`: per-key rate limits (default: none)."""
    # No schema or docs routes: they would answer without the bearer token.
    app = FastAPI(title="council", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ingress = ingress
    app.state.max_body_bytes = max_body_bytes
    app.state.keys = keys if keys is not None else load_table()
    app.state.limiter = limiter if limiter is not None else RateLimiter()
    app.add_exception_handler(CouncilError, _council_error)
    for family in ray_errors.RAY_ERRORS:
        app.add_exception_handler(family, _ray_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_middleware(_Incidents)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(router)
    app.include_router(page_router(authorized))
    return app
