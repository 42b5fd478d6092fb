"""The engine seam: what a specialist's model must do for the council, whichever library runs it.

A specialist deployment is a thin shim over an `Engine` (the way Ray Serve LLM's `LLMServer` takes an
`engine_cls`): the transformers engine (`council.backends.hf_engine`), the vLLM engine
(`council.backends.vllm_engine`) and wrappers such as the fault injector (`council.backends.faulty`) all
implement the same protocol, and what crosses it is the frozen dataclasses below.

An engine gets already-rendered prompts: the member's own `tokens` (its tokenizer, prompt template and
context window; also the budget's `TokenCounter`) renders them, so every engine sees the same text. The same
request comes as chat messages too (`EngineRequest.messages`), for an engine that sends messages to a server
that applies its own chat template (`council.backends.openai_engine`); the others read `prompt`.

This module is light (no torch, no vLLM, no Ray) and never imports `council.serving`.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ValidationError

from council.config import GenerationOptions, format_validation_error
from council.engine_options import ENGINE_KINDS as ENGINE_KINDS  # re-exported: engines.py and tests read it here
from council.errors import ConfigError
from council.types import Generation

if TYPE_CHECKING:
    from council.backends.tokens import TokenizerCounter
    from council.config import SpecialistConfig

OptionsT = TypeVar("OptionsT", bound=BaseModel)
FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class Sampling:
    """Decoding settings of one request. `temperature == 0` is greedy (and then top_p and seed do not matter)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # Generate max_tokens whatever the model's end-of-sequence says (stop strings still end it): benchmarks.
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_generation(cls, g: GenerationOptions, **overrides: Any) -> Sampling:
        """A member's configured decoding (`generation:` in its config), with per-request overrides."""
        base: dict[str, Any] = {
            "max_tokens": g.max_new_tokens,
            "temperature": g.temperature if g.do_sample else 0.0,
            "top_p": g.top_p if g.do_sample else 1.0,
            "stop": tuple(s for s in g.stop if s),
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        base["stop"] = tuple(base["stop"])
        return cls(**base)


def sequence_confidence(logprobs: Sequence[float], n: int) -> float | None:
    """An answer's sequence probability as a per-token geometric mean: exp(mean log p) over its first `n`
    tokens (not the end-of-sequence or padding after them); None for an empty answer."""
    scored = list(logprobs[:n])
    return math.exp(sum(scored) / len(scored)) if scored else None


def new_request_id() -> str:
    return uuid.uuid4().hex


Message = tuple[str, str]  # (role, content)


@dataclass(frozen=True)
class EngineRequest:
    """One completion: an already-rendered prompt and how to decode it. `request_id` names it for `abort`.

    `messages`: the same request as (role, content) chat messages, when it was built from one (EngineSpecialist);
    () for a bare prompt (an engine that speaks chat then sends `prompt` as one user message).
    `adapter`: on an engine holding a base and its members' LoRA adapters, the member whose adapter this request
    runs under; None: the engine's own model.
    """

    prompt: str
    sampling: Sampling
    request_id: str = field(default_factory=new_request_id)
    messages: tuple[Message, ...] = ()
    adapter: str | None = None


@dataclass(frozen=True)
class EngineOutput:
    """A finished completion. `text` is cut before the first stop string and not stripped."""

    request_id: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    latency_s: float
    # The completion's geometric-mean token probability under the model (None: the engine gave none).
    confidence: float | None = None

    def to_generation(self) -> Generation:
        """The council's `Generation` (stripped text), as `SpecialistServer` returns it today."""
        return Generation(
            text=self.text.strip(),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_s=self.latency_s,
            finish_reason=self.finish_reason,
            confidence=self.confidence,
        )


@dataclass(frozen=True)
class EngineDelta:
    """A piece of a streamed completion: `text` is what is new since the previous delta (may be "").

    The last delta of a stream has `finish_reason` set and carries the final token counts.
    """

    request_id: str
    text: str
    completion_tokens: int
    finish_reason: FinishReason | None = None
    prompt_tokens: int | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class EngineDead(RuntimeError):
    """The engine cannot serve any more requests (its process died, it was shut down, it is wedged)."""


@runtime_checkable
class Engine(Protocol):
    """A member's model, as the council uses it. Implementations: TransformersEngine, VLLMEngine, FaultyEngine.

    Life cycle: construct (cheap, no weights) -> `await start()` (loads; `ready` turns True) -> requests ->
    `await shutdown()`. `generate` of a batch may run it as one forward pass (transformers) or hand each
    request to a continuously batching scheduler (vLLM): callers need not batch in front of an engine whose
    `batches_itself` is True.
    """

    name: str
    kind: str
    # True when the engine schedules concurrent requests itself (continuous batching): no @serve.batch in front.
    batches_itself: bool

    @property
    def ready(self) -> bool:
        """Whether `start()` has finished and the engine takes requests."""
        ...

    @property
    def tokens(self) -> TokenizerCounter:
        """The member's own tokenizer view: counts, prompt rendering, `context_window`, `max_new_tokens`."""
        ...

    @property
    def context_window(self) -> int: ...

    @property
    def default_sampling(self) -> Sampling:
        """The member's configured decoding, for requests that set none."""
        ...

    async def start(self) -> None:
        """Load the model and get ready; idempotent."""
        ...

    async def generate(self, requests: Sequence[EngineRequest]) -> list[EngineOutput]:
        """Complete every request; one output each, in order. A request aborted meanwhile ends 'abort'."""
        ...

    def stream(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        """Yield the completion's text as it is produced; the last delta has `finish_reason`.

        Closing the iterator early (or cancelling its consumer) aborts the request.
        """
        ...

    async def abort(self, request_id: str) -> None:
        """Stop a request in flight (its generate/stream ends with finish_reason 'abort'); unknown ids: no-op."""
        ...

    def num_running(self) -> int:
        """Requests the engine holds right now (queued or decoding)."""
        ...

    async def check_health(self) -> None:
        """Return if the engine can serve; raise (EngineDead or the cause) if it cannot."""
        ...

    async def shutdown(self) -> None:
        """Release the model and any processes; idempotent. Requests in flight end."""
        ...

    def info(self) -> dict[str, Any]:
        """Kind, model, device and token limits, for `/v1/models`-like listings and logs."""
        ...


class ConfiguredEngine:
    """What every engine built from a member's config shares: its tokenizer view (the tokenizer and model config,
    loaded on first use, never the weights), the context window, and the configured decoding."""

    config: SpecialistConfig
    _counter: TokenizerCounter | None = None

    @property
    def tokens(self) -> TokenizerCounter:
        if self._counter is None:
            from council.backends.tokens import load_tokenizer_counter

            self._counter = load_tokenizer_counter(self.config)
        return self._counter

    @property
    def context_window(self) -> int:
        return self.tokens.context_window

    @property
    def default_sampling(self) -> Sampling:
        return Sampling.from_generation(self.config.generation)


def render_chat(tokens: TokenizerCounter, messages: Sequence[Mapping[str, str]]) -> str:
    """A message list as one prompt: the tokenizer's chat template when it has one, else plain "role: text"
    lines ending with "assistant:" (what a completion model continues)."""
    msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    if tokens.uses_chat_template:
        return str(tokens.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
    lines = [f"{m['role']} : {m['content'].strip()}" for m in msgs]
    return "\n".join([*lines, "assistant :"])


def fit_prompt(ids: list[int], context_window: int, max_tokens: int) -> list[int]:
    """Prompt ids cut from the left so that `max_tokens` more still fit the window (the question is last)."""
    limit = context_window - max_tokens
    if limit < 1:
        from council.errors import InvalidRequest

        raise InvalidRequest(f"max_tokens={max_tokens} leaves no room in a {context_window}-token window")
    return ids if len(ids) <= limit else ids[-limit:]


def parse_options(model: type[OptionsT], options: Mapping[str, Any] | None, member: str) -> OptionsT:
    """Validate a member's `engine_options` against an engine's options model; a bad or unknown one raises
    ConfigError naming it (`engine_options.<field>`)."""
    try:
        return model.model_validate(dict(options or {}))
    except ValidationError as e:
        where = format_validation_error(e).replace("(root)", "engine_options")
        where = "; ".join(p if p.startswith("engine_options") else f"engine_options.{p}" for p in where.split("; "))
        raise ConfigError(f"specialist {member}: {where}", details={"engine_options": dict(options or {})}) from None


def replace_sampling(request: EngineRequest, **changes: Any) -> EngineRequest:
    """`request` with some sampling settings changed (same id)."""
    return dataclasses.replace(request, sampling=dataclasses.replace(request.sampling, **changes))


class EngineSpecialist:
    """The council's `Specialist` (and `generate_batch`, what SpecialistServer's @serve.batch calls) over an engine:
    renders the member's prompt with its own template and tokenizer, decodes with its configured settings.

    `member`: one of the members sharing the engine's base (a LoRA adapter of it): its own prompt template, window
    and decoding over the engine's tokenizer, and its requests run under its adapter."""

    def __init__(self, engine: Engine, member: SpecialistConfig | None = None) -> None:
        self.engine = engine
        self.name = engine.name if member is None else member.name
        self.member = member
        self._tokens: TokenizerCounter | None = None

    @property
    def tokens(self) -> TokenizerCounter:
        """The member's tokenizer view (the engine's own, unless this is a member on a shared base)."""
        if self.member is None:
            return self.engine.tokens
        if self._tokens is None:
            from council.backends.tokens import TokenizerCounter, load_model_config

            shared = self.engine.tokens.tokenizer  # the base's tokenizer, loaded once for all its members
            self._tokens = TokenizerCounter(self.member, shared, load_model_config(self.member.model))
        return self._tokens

    def request(
        self,
        question: str,
        passages: Sequence[str],
        history: Sequence[tuple[str, str]] = (),
        *,
        answers: Sequence[str] | None = None,
        **sampling: Any,
    ) -> EngineRequest:
        """The engine request for one question (after a chat's `history`, see TokenizerCounter.render_prompt);
        `sampling` overrides the member's settings (None: keep). With `answers` (the members' answers, anonymised
        and in the order to show) it is a chairman's synthesis instead (TokenizerCounter.render_chairman)."""
        member = self.member
        base = self.engine.default_sampling if member is None else Sampling.from_generation(member.generation)
        changes = {k: v for k, v in sampling.items() if v is not None}
        if "stop" in changes:
            changes["stop"] = tuple(changes["stop"])
        tokens = self.tokens
        if answers is None:
            prompt = tokens.render_prompt(question, passages, history)
            messages = tokens.render_messages(question, passages, history)
        else:
            prompt, messages = tokens.render_chairman(question, passages, answers, history)
        turns = tuple((m["role"], m["content"]) for m in messages)
        adapter = None if member is None else member.name
        return EngineRequest(prompt, dataclasses.replace(base, **changes), messages=turns, adapter=adapter)

    async def generate(self, question: str, passages: Sequence[str]) -> Generation:
        [out] = await self.engine.generate([self.request(question, passages)])
        return out.to_generation()

    async def generate_batch(self, items: Sequence[tuple[str, Sequence[str]]]) -> list[Generation]:
        outs = await self.engine.generate([self.request(q, p) for q, p in items])
        return [o.to_generation() for o in outs]
