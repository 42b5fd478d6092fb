"""The HTTP API's bodies as pydantic models: the council's own and the OpenAI wire types it speaks.

Types are checked here (strictly: "3" is no int); what a value may be (k within the council, a tenant name,
an ordering) is checked once, in `council.pipeline.validate`, for every caller.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from council.config import validated
from council.errors import InvalidRequest
from council.retrieval import PUBLIC
from council.types import (
    CHAT_ROLES,
    AskRequest,
    Conversation,
    CouncilAnswer,
    Document,
    MemberAnswer,
    MemberDelta,
    RouteDecision,
    SynthesisDelta,
)


class _Strict(BaseModel):
    # Unknown fields are typos; strict types refuse "3" for an int and 1 for a bool.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _named(tenant: Any) -> Any:
    """A tenant left out means "the key's"; an explicit null is a mistake, not that."""
    if tenant is None:
        raise ValueError("leave tenant out or name one; null is not a tenant")
    return tenant


class DocumentIn(_Strict):
    """An ephemeral (or to-be-ingested) document."""

    text: StrictStr = Field(description="The document's text.")
    source: StrictStr = Field(default="request", description="Where it came from; shown in `sources`.")
    domain: StrictStr | None = Field(default=None, description="Optional domain label.")

    def to_document(self) -> Document:
        """The core's Document."""
        return Document(text=self.text, source=self.source, domain=self.domain)


class AskOptions(_Strict):
    """Per-request council options (None: the server's config decides)."""

    k: StrictInt | None = Field(default=None, description="Specialists asked (top-k by route score).")
    tenant: StrictStr | None = Field(
        default=None, description="Whose documents are searched (default: the key's only tenant, else public)."
    )
    budget_tokens: StrictInt | None = Field(default=None, description="Context token budget per member.")
    ordering: StrictStr | None = Field(default=None, description="Passage order: relevance, edges, reverse, random.")
    orderings: StrictInt | None = Field(default=None, description="Orderings per member (>1 votes across them).")
    documents: list[DocumentIn] = Field(default_factory=list, description="Ephemeral documents, this request only.")
    specialists: list[StrictStr] | None = Field(default=None, description="Ask exactly these specialists.")
    early_exit: StrictBool | None = Field(default=None, description="Answer once a quorum agrees.")
    escalation: StrictBool | None = Field(
        default=None, description="Ask the top members first, the rest of the top-k only if they do not settle it."
    )
    use_retrieval: StrictBool = Field(default=True, description="Search the tenant's store.")
    synthesis: StrictBool = Field(
        default=True, description="Let the configured chairman write the answer (false: the voted answer)."
    )

    _tenant = field_validator("tenant", mode="before")(lambda v: _named(v))

    def to_request(self, question: str, **overrides: Any) -> AskRequest:
        """The typed AskRequest for `question` with these options."""
        fields: dict[str, Any] = {
            "question": question,
            "k": self.k,
            "tenant": self.tenant or PUBLIC,
            "budget_tokens": self.budget_tokens,
            "ordering": self.ordering,
            "orderings": self.orderings,
            "early_exit": self.early_exit,
            "escalation": self.escalation,
            "use_retrieval": self.use_retrieval,
            "synthesis": self.synthesis,
            "documents": tuple(d.to_document() for d in self.documents),
            "specialists": tuple(self.specialists) if self.specialists is not None else None,
        }
        return AskRequest(**{**fields, **overrides})


class AskBody(AskOptions):
    """POST /v1/council."""

    question: StrictStr = Field(description="The question.")
    stream: StrictBool = Field(default=False, description="Server-sent deliberation events (see event_body).")


class IngestBody(_Strict):
    """POST /v1/documents."""

    tenant: StrictStr | None = Field(
        default=None, description="Whose store the documents join (required unless the key has one tenant)."
    )

    _tenant = field_validator("tenant", mode="before")(lambda v: _named(v))
    documents: list[DocumentIn] = Field(min_length=1, max_length=1000, description="Documents to store.")


# ---------------------------------------------------------------- OpenAI wire types


class ChatMessage(BaseModel):
    """One OpenAI chat message; the text parts of a list content are joined (other parts are refused)."""

    model_config = ConfigDict(extra="allow")

    role: StrictStr
    content: StrictStr | list[dict[str, Any]] | None = None

    def text(self, where: str) -> str:
        """The message's text; InvalidRequest for a part that is not text (`where` names the message)."""
        if not isinstance(self.content, list):
            return self.content or ""
        for j, part in enumerate(self.content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest(
                    f"{where}.content[{j}]: only text parts are supported, got type {part.get('type')!r}"
                )
        return " ".join(str(p["text"]) for p in self.content)


# Chat fields no member can honour: refused with a 400 naming the field rather than silently ignored.
_REFUSED_WHEN_SET: dict[str, str] = {
    "tools": "tools are not supported",
    "functions": "functions are not supported",
    "logit_bias": "logit_bias is not supported",
    "response_format": "response_format is not supported (members answer in plain text)",
}
_REFUSED_WHEN_TRUE = {"logprobs": "logprobs are not supported", "top_logprobs": "top_logprobs are not supported"}


class ChatBody(BaseModel):
    """POST /v1/chat/completions. The whole conversation reaches the member(s): system messages and earlier
    turns before the last user message (the question); max_tokens (or max_completion_tokens), temperature,
    top_p, stop and seed are every member's decoding for this request. Fields no member can honour (n > 1,
    tools, penalties, logprobs, ...) are a 400 naming the field; others OpenAI defines (user, metadata,
    stream_options, ...) are accepted and have no effect."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False
    council: AskOptions | None = Field(default=None, description="Council options (tenant, k, ...) as an extra field.")
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    temperature: float | None = Field(default=None, strict=True)
    top_p: float | None = Field(default=None, strict=True)
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    n: StrictInt | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    def refused(self) -> str | None:
        """The first field set to something no member can do, as the 400's message; None if all is well."""
        if self.n is not None and self.n != 1:
            return f"n={self.n}: one choice per request only (n must be 1)"
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                return f"{name}={getattr(self, name)}: penalties are not supported (use 0 or leave it out)"
        extra = self.model_extra or {}
        for name, why in _REFUSED_WHEN_SET.items():
            if extra.get(name) not in (None, [], {}) and not (name == "response_format" and _is_text(extra[name])):
                return f"{name}: {why}"
        for name, why in _REFUSED_WHEN_TRUE.items():
            if extra.get(name):
                return f"{name}: {why}"
        if extra.get("tool_choice") not in (None, "none", "auto"):
            return "tool_choice: tools are not supported"
        return None

    def conversation(self) -> tuple[str, Conversation]:
        """The question (the last user message) and what comes with it; InvalidRequest names a bad message."""
        last = len(self.messages) - 1
        texts = [m.text(f"messages[{i}]") for i, m in enumerate(self.messages)]
        for i, m in enumerate(self.messages):
            if m.role not in CHAT_ROLES:
                raise InvalidRequest(f"messages[{i}].role {m.role!r} is not supported; use one of {list(CHAT_ROLES)}")
        if self.messages[last].role != "user":
            raise InvalidRequest(
                f"messages[{last}]: the last message must be the user's question, not {self.messages[last].role!r}"
            )
        if not texts[last].strip():
            raise InvalidRequest(f"messages[{last}]: a non-empty user message is required")
        sampling: dict[str, Any] = {
            "max_tokens": self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": [self.stop] if isinstance(self.stop, str) else self.stop,
        }
        history = tuple((m.role, t) for m, t in zip(self.messages[:last], texts[:last], strict=True))
        return texts[last], Conversation(history, {k: v for k, v in sampling.items() if v is not None})


def _is_text(response_format: Any) -> bool:
    return isinstance(response_format, dict) and response_format.get("type") == "text"


class ModelCard(BaseModel):
    """One entry of GET /v1/models."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "council"


class ModelList(BaseModel):
    """GET /v1/models."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class Usage(BaseModel):
    """Tokens of every member's prompts and answers, and of the chairman's synthesis."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, answer: CouncilAnswer) -> Usage:
        """The usage of one council answer."""
        chair = answer.synthesis
        prompt = sum(m.prompt_tokens for m in answer.members) + (chair.prompt_tokens if chair else 0)
        completion = sum(m.completion_tokens for m in answer.members) + (chair.completion_tokens if chair else 0)
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str = "stop"


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None


class ChatCompletion(BaseModel):
    """The non-streaming chat.completion, with the council's report as `council`."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    council: dict[str, Any]


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat.completion; the last one carries usage and the report."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    council: dict[str, Any] | None = None

    def wire(self) -> dict[str, Any]:
        """The event's JSON: absent parts left out, but `finish_reason` always there (null until the last)."""
        body = self.model_dump(exclude_none=True)
        for choice, model in zip(body["choices"], self.choices, strict=True):
            choice["finish_reason"] = model.finish_reason
        return body


class Completion:
    """One chat answer as OpenAI's wire types: the whole completion, or the chunks of its stream."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def message(self, answer: CouncilAnswer, content: str, report: dict[str, Any], finish: str) -> ChatCompletion:
        """The non-streaming response body."""
        choice = Choice(message=AssistantMessage(content=content), finish_reason=finish)
        return ChatCompletion(
            id=self.id, created=self.created, model=self.model, choices=[choice], usage=Usage.of(answer),
            council=report,
        )  # fmt: skip

    def first(self, route: dict[str, Any]) -> ChatCompletionChunk:
        """The stream's first chunk: the assistant role, and the members the council asks (`council.route`)."""
        return self._chunk(Delta(role="assistant", content=""), council={"route": route})

    def content(self, text: str) -> ChatCompletionChunk:
        """A piece of the answer."""
        return self._chunk(Delta(content=text))

    def member(self, member: dict[str, Any]) -> ChatCompletionChunk:
        """One member's answer as it lands (`council.member`), no content of its own."""
        return self._chunk(Delta(), council={"member": member})

    def last(self, answer: CouncilAnswer, report: dict[str, Any], finish: str) -> ChatCompletionChunk:
        """The final chunk: finish_reason, usage and the council's report."""
        return self._chunk(Delta(), finish, usage=Usage.of(answer), council=report)

    def _chunk(self, delta: Delta, finish: str | None = None, **extra: Any) -> ChatCompletionChunk:
        choice = ChunkChoice(delta=delta, finish_reason=finish)
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[choice], **extra)


def event_body(event: RouteDecision | MemberDelta | MemberAnswer | SynthesisDelta | CouncilAnswer) -> dict[str, Any]:
    """A deliberation event (council.pipeline.Event) as JSON: {"event": "route" | "delta" | "member" |
    "synthesis" | "answer", ...}; what POST /v1/council with `stream: true` sends, and the handle's `ask_stream`
    yields."""
    if isinstance(event, RouteDecision):
        return {"event": "route", "chosen": list(event.chosen), "scores": dict(event.scores)}
    if isinstance(event, MemberDelta):
        return {"event": "delta", "member": event.name, "text": event.text}
    if isinstance(event, MemberAnswer):
        return {"event": "member", "member": dataclasses.asdict(event)}
    if isinstance(event, SynthesisDelta):
        return {"event": "synthesis", "chairman": event.chairman, "text": event.text}
    return {"event": "answer", "answer": event.to_dict()}


# ---------------------------------------------------------------- parsing


def parse(model: type[BaseModel], payload: Any) -> Any:
    """`payload` (decoded JSON) as `model`; InvalidRequest names the first bad field."""
    return validated(model, payload, "request", InvalidRequest)


def parse_ingest(payload: Any) -> IngestBody:
    """Validate a POST /v1/documents body."""
    body: IngestBody = parse(IngestBody, payload)
    return body
