"""The HTTP API's bodies as pydantic models: the council's own and the OpenAI wire types it speaks.

Types are checked here (strictly: "3" is no int); what a value may be (k within the council, a tenant name,
an ordering) is checked once, in `council.pipeline.validate`, for every caller.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from council.config import validated
from council.errors import InvalidRequest
from council.types import AskRequest, CouncilAnswer, Document


class _Strict(BaseModel):
    # Unknown fields are typos; strict types refuse "3" for an int and 1 for a bool.
    model_config = ConfigDict(extra="forbid", frozen=True)


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
            "documents": tuple(d.to_document() for d in self.documents),
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


# ---------------------------------------------------------------- OpenAI wire types


class ChatMessage(BaseModel):
    """One OpenAI chat message; text parts of a list content are joined."""

    model_config = ConfigDict(extra="allow")

    role: StrictStr
    content: StrictStr | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text."""
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

    def question(self) -> str:
        """The last user message's text ("" when there is none)."""
        users = [m for m in self.messages if m.role == "user"]
        return users[-1].text() if users else ""


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
    """Tokens of every member's prompts and answers."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, answer: CouncilAnswer) -> Usage:
        """The usage of one council answer."""
        prompt = sum(m.prompt_tokens for m in answer.members)
        completion = sum(m.completion_tokens for m in answer.members)
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
    """One chat answer as OpenAI's wire types: the whole completion, or its chunk stream."""

    def __init__(self, model: str, answer: CouncilAnswer, content: str, report: dict[str, Any]) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.content = content
        self.report = report
        self.usage = Usage.of(answer)

    def message(self) -> ChatCompletion:
        """The non-streaming response body."""
        choice = Choice(message=AssistantMessage(content=self.content))
        return ChatCompletion(
            id=self.id, created=self.created, model=self.model, choices=[choice], usage=self.usage, council=self.report
        )

    def chunks(self) -> Iterator[ChatCompletionChunk]:
        """The role, the answer word by word, and a final chunk with usage and the report."""
        yield self._chunk(Delta(role="assistant", content=""))
        for piece in re.findall(r"\s*\S+", self.content):
            yield self._chunk(Delta(content=piece))
        yield self._chunk(Delta(), "stop", usage=self.usage, council=self.report)

    def _chunk(self, delta: Delta, finish: str | None = None, **extra: Any) -> ChatCompletionChunk:
        choice = ChunkChoice(delta=delta, finish_reason=finish)
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[choice], **extra)


# ---------------------------------------------------------------- parsing


def parse(model: type[BaseModel], payload: Any) -> Any:
    """`payload` (decoded JSON) as `model`; InvalidRequest names the first bad field."""
    return validated(model, payload, "request", InvalidRequest)


def parse_ask(payload: Any) -> AskRequest:
    """Validate a POST /v1/council body (a dict) into an AskRequest; InvalidRequest names the bad field."""
    body: AskBody = parse(AskBody, payload)
    return body.to_request(body.question)


def parse_ingest(payload: Any) -> IngestBody:
    """Validate a POST /v1/documents body."""
    body: IngestBody = parse(IngestBody, payload)
    return body
