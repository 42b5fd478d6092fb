"""The HTTP API: request schemas, OpenAI-compatible routes, bearer auth and the error mapping; no council logic."""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from council.config import NAME_RE, format_validation_error
from council.errors import (
    CouncilError,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
    Unauthorized,
    UnknownSpecialist,
)
from council.serving import metrics
from council.serving.handles import unwrap
from council.types import AskRequest, CouncilAnswer, Document

if TYPE_CHECKING:
    from council.serving.deployments import RouterIngress

log = logging.getLogger(__name__)

API_KEY_ENV = "COUNCIL_API_KEY"


class _Strict(BaseModel):
    # Unknown fields are typos; strict types refuse "3" for an int and 1 for a bool.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DocumentIn(_Strict):
    """An ephemeral (or to-be-ingested) document."""

    text: StrictStr = Field(description="The document's text.")
    source: StrictStr = Field(default="request", description="Where it came from; shown in `sources`.")
    domain: StrictStr | None = Field(default=None, description="Optional domain label.")


class AskOptions(_Strict):
    """Per-request council options (None: the server's config decides)."""

    k: StrictInt | None = Field(default=None, description="Specialists asked (top-k by route score).")
    tenant: StrictStr = Field(default="public", description="Whose documents are searched.")
    budget_tokens: StrictInt | None = Field(default=None, description="Context token budget per member.")
    ordering: StrictStr | None = Field(default=None, description="Passage order: relevance, edges, reverse, random.")
    orderings: StrictInt | None = Field(default=None, description="Orderings per member (>1 votes across them).")
    documents: list[DocumentIn] = Field(default_factory=list, description="Ephemeral documents, this request only.")
    specialists: list[StrictStr] | None = Field(default=None, description="Ask exactly these specialists.")
    early_exit: StrictBool | None = Field(default=None, description="Answer once a quorum agrees.")
    use_retrieval: StrictBool = Field(default=True, description="Search the tenant's store.")

    def to_request(self, question: str, **overrides: Any) -> AskRequest:
        """The typed AskRequest for `question` with these options."""
        fields: dict[str, Any] = {
            "question": question,
            "k": self.k,
            "tenant": self.tenant,
            "budget_tokens": self.budget_tokens,
            "ordering": self.ordering,
            "orderings": self.orderings,
            "early_exit": self.early_exit,
            "use_retrieval": self.use_retrieval,
            "documents": tuple(Document(text=d.text, source=d.source, domain=d.domain) for d in self.documents),
            "specialists": tuple(self.specialists) if self.specialists is not None else None,
        }
        return AskRequest(**{**fields, **overrides})


class AskBody(AskOptions):
    """POST /v1/council."""

    question: StrictStr = Field(description="The question.")


class IngestBody(_Strict):
    """POST /v1/documents."""

    tenant: StrictStr = Field(default="public", description="Whose store the documents join.")
    documents: list[DocumentIn] = Field(min_length=1, max_length=1000, description="Documents to store.")

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"tenant {v!r} is not a valid tenant name ({NAME_RE.pattern})")
        return v


class ChatMessage(BaseModel):
    """One OpenAI chat message; text parts of a list content are joined."""

    model_config = ConfigDict(extra="allow")

    role: StrictStr
    content: StrictStr | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return " ".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatBody(BaseModel):
    """POST /v1/chat/completions; OpenAI fields we do not use (temperature, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False
    council: AskOptions | None = Field(default=None, description="Council options (tenant, k, ...) as an extra field.")


def _validate(model: type[BaseModel], payload: Any, what: str) -> Any:
    if not isinstance(payload, dict):
        raise InvalidRequest(f"{what}: expected a JSON object, got {type(payload).__name__}")
    try:
        return model.model_validate(payload)
    except ValidationError as e:
        raise InvalidRequest(f"{what}: {format_validation_error(e)}") from None


def parse_ask(payload: Any) -> AskRequest:
    """Validate a POST /v1/council body (a dict) into an AskRequest; InvalidRequest names the bad field."""
    body: AskBody = _validate(AskBody, payload, "request")
    return body.to_request(body.question)


def parse_ingest(payload: Any) -> IngestBody:
    """Validate a POST /v1/documents body."""
    body: IngestBody = _validate(IngestBody, payload, "request")
    return body


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, read at most `limit` bytes far: 413 beyond, 400 for non-UTF-8 or invalid JSON."""
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


def _finite(value: Any) -> Any:
    """JSON has no NaN/Infinity: they become null rather than a 500 from the encoder."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


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


def as_council_error(e: BaseException) -> CouncilError | None:
    """The council error `e` stands for (unwrapping Ray's wrappers; an unavailable service is Overloaded)."""
    cause = unwrap(e)
    if isinstance(cause, CouncilError):
        return cause
    if type(cause).__name__ in {"DeploymentUnavailableError", "ReplicaUnavailableError"}:
        return Overloaded(f"a council service is unavailable: {cause}", retry_after_s=1.0)
    return None


async def guarded(work: Callable[[], Awaitable[Response]]) -> Response:
    """Run a route: council errors become their JSON error; anything else a logged, generic 500."""
    t0 = time.perf_counter()
    try:
        return await work()
    except Exception as e:
        error = as_council_error(e)
        # Counted once: the ingress has already counted what failed inside the council.
        metrics.record_failure(e, time.perf_counter() - t0, error)
        if error is not None:
            return error_response(error)
        incident = uuid.uuid4().hex[:12]
        log.exception("internal error %s", incident)
        body = {"error": {"type": "internal_error", "message": f"internal error (incident {incident})"}}
        return JSONResponse(body, status_code=500)


def check_auth(request: Request, key: str | None) -> None:
    """With an API key configured, require `Authorization: Bearer <key>` (compared in constant time)."""
    if not key:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # Headers arrive latin-1 decoded; compare the original bytes.
    given = token.strip().encode("latin-1", "replace")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given, key.encode("utf-8")):
        raise Unauthorized("missing or wrong bearer token (Authorization: Bearer <COUNCIL_API_KEY>)")


def create_app(ingress: RouterIngress) -> FastAPI:
    """The FastAPI app over one RouterIngress replica."""
    from starlette.exceptions import HTTPException

    # No schema or docs routes: they would answer without the bearer token.
    app = FastAPI(title="council", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    key = os.environ.get(API_KEY_ENV) or None
    limit = ingress.config.http.max_body_bytes

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        kind = "not_found" if status == 404 else "method_not_allowed" if status == 405 else "http_error"
        message = f"{request.method} {request.url.path}: {getattr(exc, 'detail', '')}"
        body = {"error": {"type": kind, "message": message}}
        return JSONResponse(body, status_code=status)

    app.add_exception_handler(HTTPException, not_found)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/council")
    async def ask(request: Request) -> Response:
        async def work() -> Response:
            check_auth(request, key)
            return JSONResponse(_finite(await ingress.ask(await read_json(request, limit))))

        return await guarded(work)

    @app.post("/v1/documents")
    async def ingest(request: Request) -> Response:
        async def work() -> Response:
            check_auth(request, key)
            return JSONResponse(await ingress.ingest(await read_json(request, limit)))

        return await guarded(work)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        async def work() -> Response:
            check_auth(request, key)
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "council"} for m in ingress.models()]
            return JSONResponse({"object": "list", "data": data})

        return await guarded(work)

    @app.get("/v1/status")
    async def status(request: Request) -> Response:
        async def work() -> Response:
            check_auth(request, key)
            return JSONResponse(_finite(await ingress.status()))

        return await guarded(work)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        async def work() -> Response:
            check_auth(request, key)
            body: ChatBody = _validate(ChatBody, await read_json(request, limit), "request")
            answer, content = await _chat_answer(ingress, body)
            completion = Completion(body.model, answer, content)
            if body.stream:
                return StreamingResponse(completion.events(), media_type="text/event-stream")
            return JSONResponse(completion.message())

        return await guarded(work)

    return app


async def _chat_answer(ingress: RouterIngress, body: ChatBody) -> tuple[CouncilAnswer, str]:
    """Run the council (model 'council') or one specialist alone (model = its name) on the last user message."""
    known = ingress.models()
    if body.model not in known:
        raise UnknownSpecialist(f"unknown model {body.model!r}; known: {known}", details={"model": body.model})
    users = [m for m in body.messages if m.role == "user"]
    question = users[-1].text() if users else ""
    if not question.strip():
        raise InvalidRequest("messages: a non-empty user message is required")
    options = body.council or AskOptions()
    if body.model == "council":
        answer = await ingress.ask_request(options.to_request(question))
        return answer, answer.answer
    answer = await ingress.ask_request(options.to_request(question, specialists=(body.model,), k=None))
    member = answer.members[0]
    return answer, member.answer or ""


class Completion:
    """An OpenAI chat.completion (or its chunk stream) carrying the council's report as `council`."""

    def __init__(self, model: str, answer: CouncilAnswer, content: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.content = content
        self.report = _finite(answer.to_dict())
        prompt = sum(m.prompt_tokens for m in answer.members)
        completion = sum(m.completion_tokens for m in answer.members)
        self.usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def message(self) -> dict[str, Any]:
        """The non-streaming response body."""
        choice = {"index": 0, "message": {"role": "assistant", "content": self.content}, "finish_reason": "stop"}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage,
            "council": self.report,
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n"

    async def events(self) -> AsyncIterator[str]:
        """Server-sent events: the role, the answer word by word, a final chunk with the report, [DONE]."""
        yield self._chunk({"role": "assistant", "content": ""})
        for piece in re.findall(r"\s*\S+", self.content):
            yield self._chunk({"content": piece})
        yield self._chunk({}, "stop", usage=self.usage, council=self.report)
        yield "data: [DONE]\n\n"
