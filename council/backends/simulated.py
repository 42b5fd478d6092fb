"""The simulated engine: a member that behaves like a model on an accelerator, for benchmarks and tests only.

A GPU member's replica spends its time waiting for the device, not on its CPU. On a CPU-only machine a real
model's forward pass holds the same cores the council's own processes need, so a benchmark of the framework
measures the models instead. This engine answers after the time a batched accelerator would take,

    t(batch) = base_s + per_request_s * len(batch) + per_token_s * tokens

(`tokens` the most any request of the batch generates), sleeping on the event loop meanwhile: no CPU is held
while it "generates". Requests that arrive while a batch runs wait for the next one; a batch takes at most
`max_batch` requests (a static batcher, as a GPU server with a fixed batch size). It `batches_itself`, so no
`@serve.batch` sits in front of it, and a direct caller gets exactly the batching the council's replica gets.

Answers are deterministic and the same for every member asked the same question (they agree, so that early
exit and quorum behave as with members that know the answer): `answer` when set, else one word drawn from the
question's hash. `per_member_answers` makes each member answer differently (disagreement).

It is not a model: a council config read from a YAML file or a Serve config's `config_dict` naming it is refused
unless COUNCIL_ALLOW_SIMULATED_ENGINE=1 (`CouncilConfig.from_dict`, `council.engine_options.refuse_simulated`).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from council.backends.engine import (
    ConfiguredEngine,
    EngineDead,
    EngineDelta,
    EngineOutput,
    EngineRequest,
    FinishReason,
    parse_options,
)
from council.config import SpecialistConfig
from council.engine_options import SimulatedOptions

if TYPE_CHECKING:
    from council.backends.tokens import TokenizerCounter

__all__ = ["SimulatedEngine", "SimulatedOptions"]

# The words an answer is drawn from when `answer` is not set (the hash of the question picks one).
_WORDS = ("amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "harbor", "indigo", "juniper")


@dataclass
class _Pending:
    request: EngineRequest
    done: asyncio.Future[EngineOutput]
    arrived: float = field(default_factory=time.perf_counter)


class SimulatedEngine(ConfiguredEngine):
    """`Engine` that sleeps for an accelerator's batch time and answers deterministically."""

    kind = "simulated"
    batches_itself = True

    def __init__(self, config: SpecialistConfig, options: Mapping[str, Any] | None = None) -> None:
        self.config = config
        self.name = config.name
        self.options = parse_options(
            SimulatedOptions, config.engine_options if options is None else options, config.name
        )
        self._counter: TokenizerCounter | None = None
        self._queue: list[_Pending] = []
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._running: dict[str, _Pending] = {}
        self._closed = False
        self.batches: list[int] = []  # the size of every batch run (tests and benchmarks read it)

    def __repr__(self) -> str:
        return f"SimulatedEngine(name={self.name!r})"

    @property
    def ready(self) -> bool:
        return self._worker is not None and not self._closed

    async def start(self) -> None:
        if self._closed:
            raise EngineDead(f"engine {self.name} was shut down")
        if self._worker is None:
            self.tokens  # noqa: B018  (the tokenizer view loads here, not on the first request)
            self._wake = asyncio.Event()
            self._worker = asyncio.ensure_future(self._run())

    def batch_time_s(self, batch: int, tokens: int) -> float:
        o = self.options
        return o.base_s + o.per_request_s * batch + o.per_token_s * tokens

    def answer_for(self, prompt: str) -> str:
        o = self.options
        if o.answer is not None:
            return o.answer
        key = (self.name + "\x00" if o.per_member_answers else "") + prompt
        return _WORDS[hashlib.sha256(key.encode()).digest()[0] % len(_WORDS)]

    # -- the device ---------------------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[: self.options.max_batch], self._queue[self.options.max_batch :]
                batch = [p for p in batch if not p.done.done()]
                if not batch:
                    continue
                self.batches.append(len(batch))
                tokens = max(self._completion_tokens(p.request) for p in batch)
                await asyncio.sleep(self.batch_time_s(len(batch), tokens))
                for p in batch:
                    self._running.pop(p.request.request_id, None)
                    if not p.done.done():
                        p.done.set_result(self._output(p, "stop"))

    def _completion_tokens(self, request: EngineRequest) -> int:
        o = self.options
        return min(request.sampling.max_tokens, o.completion_tokens or request.sampling.max_tokens)

    def _output(self, p: _Pending, reason: FinishReason) -> EngineOutput:
        r = p.request
        return EngineOutput(
            request_id=r.request_id,
            text="" if reason == "abort" else self.answer_for(r.prompt),
            prompt_tokens=self.tokens.count(r.prompt),
            completion_tokens=0 if reason == "abort" else self._completion_tokens(r),
            finish_reason=reason,
            latency_s=time.perf_counter() - p.arrived,
        )

    # -- requests -----------------------------------------------------------------------------------------

    def _submit(self, request: EngineRequest) -> _Pending:
        if not self.ready:
            raise EngineDead(f"engine {self.name} is {'shut down' if self._closed else 'not started'}")
        assert self._wake is not None
        p = _Pending(request, asyncio.get_running_loop().create_future())
        self._queue.append(p)
        self._running[request.request_id] = p
        self._wake.set()
        return p

    async def generate(self, requests: Sequence[EngineRequest]) -> list[EngineOutput]:
        pending = [self._submit(r) for r in requests]
        try:
            return list(await asyncio.gather(*(asyncio.shield(p.done) for p in pending)))
        except asyncio.CancelledError:
            for p in pending:
                await self.abort(p.request.request_id)
            raise

    async def stream(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        """The answer in one piece when its batch ends, then the final delta (a device returns whole steps)."""
        p = self._submit(request)
        try:
            out = await asyncio.shield(p.done)
        except asyncio.CancelledError:
            await self.abort(request.request_id)
            raise
        try:
            if out.text:
                yield EngineDelta(request.request_id, out.text, out.completion_tokens)
            yield EngineDelta(
                request.request_id, "", out.completion_tokens, out.finish_reason, prompt_tokens=out.prompt_tokens
            )
        finally:
            self._running.pop(request.request_id, None)

    async def abort(self, request_id: str) -> None:
        p = self._running.pop(request_id, None)
        if p is not None and not p.done.done():
            p.done.set_result(self._output(p, "abort"))

    def num_running(self) -> int:
        return len(self._running)

    async def check_health(self) -> None:
        if not self.ready:
            raise EngineDead(f"engine {self.name} is {'shut down' if self._closed else 'not started'}")

    async def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        for rid in list(self._running):
            await self.abort(rid)
        if self._worker is not None:
            self._worker.cancel()

    def info(self) -> dict[str, Any]:
        o = self.options
        return {
            "engine": self.kind,
            "name": self.name,
            "model": self.config.model,
            "context_window": self.context_window,
            "max_new_tokens": self.tokens.max_new_tokens,
            "max_batch": o.max_batch,
            "batch_time_s": {"base": o.base_s, "per_request": o.per_request_s, "per_token": o.per_token_s},
        }
