"""The openai engine: a member served by any OpenAI-compatible chat endpoint (`vllm serve`, Ray Serve LLM, TGI,
Ollama, LM Studio, a hosted API), through the official `openai` async client.

The endpoint gets proper chat messages (system: the fenced-passages instruction; the chat's earlier turns;
user: passages and question), rendered by the member's own `tokens` like every engine's prompt, and the
request's decoding (max_tokens, temperature, top_p, seed, stop). It schedules concurrent requests itself
(`batches_itself`); `max_concurrency` bounds how many this replica has in flight there.

Retries are ours, not the client's (its `max_retries=0`): a 408/409/429/5xx answer, a connection error or a
timeout is retried up to `max_retries` times, after an exponential backoff with jitter, or after the endpoint's
`Retry-After` when it sends one (never sooner; one longer than `max_backoff_s` fails the request at once). A
stream is retried only before its first piece. Cancelling a request, or closing its stream, closes the HTTP
request: the endpoint sees the client go away.

The API key is read from the environment variable `api_key_env` names, when the engine starts; it is never in
the config, `info()`, a log line or an error message (error text from the endpoint is redacted).

`check_health` never calls the endpoint: it passes while the engine is started and its client open. A remote
that is down is each request's error (the member's answer, `degraded`), not a reason for Serve to restart a
replica that would reach the same remote; and health checks every few seconds per replica would spend the
endpoint's rate limit on nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from council.backends.engine import (
    ConfiguredEngine,
    Engine,
    EngineDead,
    EngineDelta,
    EngineOutput,
    EngineRequest,
    FinishReason,
    parse_options,
)
from council.backends.retry import RETRY_STATUSES, Backoff, WaitTooLong, retry_after
from council.backends.transformers import cut_at_stop
from council.config import SpecialistConfig
from council.engine_options import OpenAIOptions
from council.errors import ConfigError

if TYPE_CHECKING:
    from council.backends.tokens import TokenizerCounter

log = logging.getLogger(__name__)

__all__ = ["OpenAIEngine", "OpenAIOptions", "RemoteEndpointError"]

T = TypeVar("T")
# The OpenAI API takes at most this many stop strings; the rest are cut here, after the text arrives.
MAX_REMOTE_STOPS = 4


class RemoteEndpointError(RuntimeError):
    """The endpoint refused or failed a request (after the retries); the message names the status and the URL."""


@dataclass
class _Inflight:
    """One request at the endpoint: what `abort` stops."""

    aborted: bool = False
    task: asyncio.Future[Any] | None = None
    stream: Any = None


def _finish(reason: str | None) -> FinishReason:
    return "length" if reason == "length" else "abort" if reason == "abort" else "stop"


class OpenAIEngine(ConfiguredEngine):
    """`Engine` over an OpenAI-compatible endpoint; `await start()` opens the client (no call to the endpoint)."""

    kind = "openai"
    batches_itself = True

    def __init__(self, config: SpecialistConfig, options: Mapping[str, Any] | None = None) -> None:
        """`options`: the engine's options (default: the member's `engine_options`; base_url has no default)."""
        self.config = config
        self.name = config.name
        self.options = parse_options(OpenAIOptions, config.engine_options if options is None else options, config.name)
        self._client: Any = None
        self._secret: str | None = None  # kept only to redact it from the endpoint's error text
        self._closed = False
        self._counter: TokenizerCounter | None = None
        self._inflight: dict[str, _Inflight] = {}
        self._slots = asyncio.Semaphore(self.options.max_concurrency)
        self._backoff = Backoff(self.options.backoff_s, self.options.max_backoff_s)
        # Attempts sent to the endpoint, retries among them, and requests that failed after them (stats()).
        self.counters = {"attempts": 0, "retries": 0, "remote_errors": 0}

    def __repr__(self) -> str:
        return f"OpenAIEngine(name={self.name!r}, model={self.config.model!r}, base_url={self.options.base_url!r})"

    # -- life cycle -------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._client is not None and not self._closed

    async def start(self) -> None:
        """Read the key, load the tokenizer and open the client; the endpoint is not called (it may be down)."""
        if self._closed:
            raise EngineDead(f"engine {self.name} was shut down")
        if self._client is not None:
            return
        try:
            import openai
        except ImportError as e:
            raise ConfigError(
                f"specialist {self.name}: engine: openai needs the openai package (pip install 'council[openai]'): {e}"
            ) from e
        self._secret = self._api_key()
        _ = self.tokens  # a bad tokenizer fails the replica's start, not its first request
        self._client = openai.AsyncOpenAI(
            base_url=self.options.base_url,
            api_key=self._secret or "no-key",  # the client insists on one; keyless endpoints ignore it
            max_retries=0,  # ours instead: Retry-After honoured, attempts counted
            timeout=self.options.timeout_s,
        )
        log.info("specialist %s: openai engine for %s at %s", self.name, self.config.model, self.options.base_url)

    def _api_key(self) -> str | None:
        env = self.options.api_key_env
        if env is None:
            return None
        value = os.environ.get(env, "").strip()
        if not value:
            raise ConfigError(
                f"specialist {self.name}: engine_options.api_key_env: the environment variable {env} is not set "
                "where this replica runs"
            )
        return value

    async def shutdown(self) -> None:
        client = self._client
        self.close()
        if client is not None:
            await client.close()

    def close(self) -> None:
        """`shutdown` from synchronous code (a destructor): no request is sent after this."""
        self._closed = True
        self._client = None

    # -- what the council reads -------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        o = self.options
        return {
            "engine": self.kind,
            "name": self.name,
            "model": self.config.model,
            "base_url": o.base_url,
            "api_key_env": o.api_key_env,  # the variable's name, never its value
            "tokenizer": self.config.tokenizer,
            "context_window": self.context_window,
            "max_new_tokens": self.tokens.max_new_tokens,
            "max_concurrency": o.max_concurrency,
        }

    def num_running(self) -> int:
        """Requests this engine holds: waiting for a slot or at the endpoint."""
        return len(self._inflight)

    async def check_health(self) -> None:
        """Passes while started and open; never calls the endpoint (see the module's docstring)."""
        if not self.ready:
            raise EngineDead(f"engine {self.name} is {'shut down' if self._closed else 'not started'}")

    async def abort(self, request_id: str) -> None:
        flight = self._inflight.get(request_id)
        if flight is None:
            return
        flight.aborted = True
        if flight.task is not None:
            flight.task.cancel()
        if flight.stream is not None:
            await flight.stream.close()

    # -- requests ---------------------------------------------------------------------------------------------

    async def generate(self, requests: Sequence[EngineRequest]) -> list[EngineOutput]:
        """Each request sent on its own, concurrently (up to max_concurrency); the endpoint batches them."""
        return list(await asyncio.gather(*(self._complete(r) for r in requests)))

    async def _complete(self, request: EngineRequest) -> EngineOutput:
        start = time.perf_counter()
        async with self._slot(request) as flight:
            flight.task = task = asyncio.ensure_future(self._with_retries(lambda: self._create(request)))
            try:
                response = await task
            except asyncio.CancelledError:
                task.cancel()  # the consumer went away: cancelling the call closes its HTTP request
                current = asyncio.current_task()
                if flight.aborted and current is not None and not current.cancelling():
                    return EngineOutput(request.request_id, "", self._prompt_tokens(request), 0, "abort", 0.0)
                raise
        choice = response.choices[0]
        raw = choice.message.content or ""
        text = cut_at_stop(raw, request.sampling.stop)
        usage = response.usage
        return EngineOutput(
            request_id=request.request_id,
            text=text,
            prompt_tokens=usage.prompt_tokens if usage else self._prompt_tokens(request),
            completion_tokens=usage.completion_tokens if usage and text == raw else self.tokens.count(text),
            finish_reason="stop" if text != raw else _finish(choice.finish_reason),
            latency_s=time.perf_counter() - start,
        )

    async def stream(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        """The endpoint's stream (`stream=True`), piece by piece; a piece that may begin a stop string is held
        back until it cannot. Closing this iterator closes the endpoint's stream."""
        stops = request.sampling.stop
        hold = max((len(s) for s in stops), default=1) - 1
        async with self._slot(request) as flight:
            stream = await self._with_retries(lambda: self._create(request, stream=True))
            flight.stream = stream
            text, sent, pieces, usage, reason = "", "", 0, None, None
            try:
                with self._errors(attempts=1):
                    async for chunk in stream:
                        usage = getattr(chunk, "usage", None) or usage
                        if not chunk.choices:
                            continue
                        c = chunk.choices[0]
                        text += (c.delta.content or "") if c.delta else ""
                        reason = c.finish_reason or reason
                        if (cut := cut_at_stop(text, stops)) != text:
                            text, reason = cut, "stop"
                            break  # the rest is after a stop string: closing the stream stops the endpoint
                        ready = text[: len(text) - hold] if hold else text
                        if len(ready) > len(sent):
                            pieces += 1
                            yield EngineDelta(request.request_id, ready[len(sent) :], pieces)
                            sent = ready
            except Exception:  # an abort closed the stream under us: end it as aborted
                if not flight.aborted:
                    raise
            finally:
                await stream.close()
            if flight.aborted:
                reason = "abort"
            tokens = usage.completion_tokens if usage and reason != "stop" else self.tokens.count(text)
            prompt = usage.prompt_tokens if usage else self._prompt_tokens(request)
            yield EngineDelta(request.request_id, text[len(sent) :], tokens, _finish(reason), prompt_tokens=prompt)

    # -- internals --------------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _slot(self, request: EngineRequest) -> AsyncIterator[_Inflight]:
        """Hold one of the member's `max_concurrency` slots at the endpoint for the request."""
        if not self.ready:
            raise EngineDead(f"engine {self.name} is {'shut down' if self._closed else 'not started'}")
        flight = self._inflight.setdefault(request.request_id, _Inflight())
        try:
            async with self._slots:
                yield flight
        finally:
            self._inflight.pop(request.request_id, None)

    def _create(self, request: EngineRequest, *, stream: bool = False) -> Awaitable[Any]:
        s = request.sampling
        messages = [{"role": r, "content": c} for r, c in request.messages] or [
            {"role": "user", "content": request.prompt}
        ]
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
        }
        if not s.greedy:
            body["top_p"] = s.top_p
        if s.seed is not None:
            body["seed"] = s.seed
        if s.stop:
            body["stop"] = list(s.stop[:MAX_REMOTE_STOPS])
        if s.ignore_eos:  # not OpenAI's; vLLM's server takes it
            body["extra_body"] = {"ignore_eos": True}
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        client = self._client
        if client is None:
            raise EngineDead(f"engine {self.name} is shut down")
        result: Awaitable[Any] = client.chat.completions.create(**body)
        return result

    async def _with_retries(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, retried on what is worth retrying (see the module's docstring)."""
        import openai

        o = self.options
        for attempt in range(1, o.max_retries + 2):
            self.counters["attempts"] += 1
            asked: float | None = None
            with self._errors(attempt):
                try:
                    return await call()
                except openai.APIStatusError as e:
                    if e.status_code not in RETRY_STATUSES or attempt > o.max_retries:
                        raise
                    asked = retry_after(e.response.headers)
                    why = f"status {e.status_code}"
                except openai.APIConnectionError as e:  # refused, reset, or timed out (APITimeoutError)
                    if attempt > o.max_retries:
                        raise
                    why = type(e).__name__
                try:
                    wait = self._backoff.wait(attempt, asked)
                except WaitTooLong as e:
                    self.counters["remote_errors"] += 1
                    raise RemoteEndpointError(
                        f"{o.base_url} answered {why} and {e} (engine_options.max_backoff_s): not retried"
                    ) from None
            self.counters["retries"] += 1
            log.warning(
                "specialist %s: %s from %s; retry %d of %d in %.2fs",
                self.name, why, o.base_url, attempt, o.max_retries, wait,
            )  # fmt: skip
            await asyncio.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    @contextlib.contextmanager
    def _errors(self, attempts: int) -> Iterator[None]:
        """Turn the client's errors into RemoteEndpointError with a clear, redacted message (and no chained
        exception: the client's carries the request, headers and all)."""
        import openai

        try:
            yield
        except openai.APIStatusError as e:
            self.counters["remote_errors"] += 1
            hint, env = "", self.options.api_key_env
            if e.status_code in (401, 403):
                hint = f" (check the key in ${env})" if env else " (it wants a key: set engine_options.api_key_env)"
            raise RemoteEndpointError(
                f"{self.options.base_url} answered {e.status_code}{hint} after {attempts} attempt(s): "
                f"{self._redact(e.message)}"[:600]
            ) from None
        except openai.APITimeoutError:
            self.counters["remote_errors"] += 1
            raise RemoteEndpointError(
                f"{self.options.base_url}: no answer within engine_options.timeout_s={self.options.timeout_s:g}s "
                f"({attempts} attempt(s))"
            ) from None
        except openai.APIError as e:  # connection errors, and errors inside a stream
            self.counters["remote_errors"] += 1
            raise RemoteEndpointError(
                f"{self.options.base_url}: {type(e).__name__} after {attempts} attempt(s): {self._redact(str(e))}"[:600]
            ) from None

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _prompt_tokens(self, request: EngineRequest) -> int:
        return len(self.tokens.encode_prompt(request.prompt))


if TYPE_CHECKING:  # mypy checks that the class implements the Engine protocol

    def _implements_engine(engine: OpenAIEngine) -> Engine:
        return engine
