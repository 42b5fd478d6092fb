"""SpecialistServer: one specialist on its own deployment, a thin shim over the member's engine.

The engine is the member's `engine:` (council.backends.engines). The transformers engine runs one padded forward
pass per batch, so the server batches in front of it (PassGate + a per-instance @serve.batch); the vLLM engine
schedules concurrent requests itself (`batches_itself`), so each request goes straight to it, as it does to the
openai engine (a remote endpoint: the replica holds no model). A chairman's synthesis is a request like any
other, with the members' answers (`answers`), and goes the same way.

Plain classes, no decorators: `app.py` turns them into deployments and binds them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from ray import serve

from council.agreement import is_unknown
from council.backends.engine import Engine, EngineDelta, EngineRequest, EngineSpecialist
from council.batching import BatchedEmbedder, PassGate
from council.config import SpecialistConfig
from council.errors import InvalidRequest
from council.types import Generation

log = logging.getLogger(__name__)


class SpecialistServer:
    """One specialist on its own deployment: `generate` over its engine; `check_health` is the engine's.

    A transformers member is loaded when this returns; another engine starts with `await start()` (or its first
    request): `AsyncSpecialistServer` does that in Serve's replica, on the replica's own event loop.
    """

    def __init__(
        self, config: dict[str, Any], fault: dict[str, Any] | None = None, answer_embedder: str | None = None
    ) -> None:
        """`fault`: fault injection for resilience tests (council.backends.faulty.Faults fields), None: none.
        `answer_embedder`: embed each answer right after generating it, with this sentence-transformers model
        ("" = the bundled MiniLM), and return the vector with the Generation; None: do not embed. The replica's
        embedder remembers recent answers (`council.batching.BatchedEmbedder`, as the ingress's does): short
        answers repeat across questions and batches, and a repeated one costs no pass."""
        from council.backends.faulty import Faults, FaultyEngine
        from council.backends.hf_engine import TransformersEngine

        self.config = SpecialistConfig.model_validate(config)
        base = self._build_engine()
        if isinstance(base, TransformersEngine):
            base.load()  # as before the engines: the replica is ready once its model is
        self.base_engine = base
        # Requests batched by us meet the delay and error fault one by one, on arrival (see generate).
        self.batched = not base.batches_itself
        self.faulty: FaultyEngine | None = None
        self.engine: Engine = base
        if fault:
            faults = Faults.model_validate({"stuck_after_s": self.config.deployment.stuck_after_s, **fault})
            self.faulty = FaultyEngine(base, faults, admitted_by_caller=self.batched)
            self.engine = self.faulty
        self.specialist = EngineSpecialist(self.engine)
        self._start_lock = asyncio.Lock()
        self.answer_embedder: BatchedEmbedder | None = None
        if answer_embedder is not None:
            from council.backends.embeddings import get_batched_embedder

            self.answer_embedder = get_batched_embedder(answer_embedder or None)
            self.answer_embedder.embed(["warm up"])  # first-pass allocations at start-up, not in the first request
        self._stats = {
            "requests": 0, "errors": 0, "cancelled": 0, "batches": 0, "largest_batch": 0, "embedded": 0,
            "embed_cpu_ms": 0, "embed_cache_hits": 0, "streams": 0,
        }  # fmt: skip
        options = self.config.deployment
        # Requests arriving during a forward pass join the next one together (see PassGate).
        self._gate = PassGate()
        # @serve.batch keeps ONE queue per decorated function, shared by every instance in the process: applied
        # to the class's method, two SpecialistServers in one process (tests, benchmarks, local use) would run
        # each other's requests through one model. Decorating the bound method gives each instance its queue.
        self._generate_batch: Any = serve.batch(
            max_batch_size=options.max_batch_size, batch_wait_timeout_s=options.batch_wait_timeout_s
        )(self._run_batch)
        self._in_generate = 0  # requests inside generate(): at the gate, queued or in a pass

    def _build_engine(self) -> Engine:
        from council.backends.engines import build_engine

        return build_engine(self.config, self.config.engine, self.config.engine_options)

    def _member(self, member: str | None) -> EngineSpecialist:
        """The specialist a request is for: this deployment's own (a base's deployment holds several)."""
        if member not in (None, self.config.name):
            raise InvalidRequest(f"specialist {self.config.name}: this deployment does not serve {member!r}")
        return self.specialist

    async def _enter(self, member: str | None) -> None:
        """Before a request's work: a multiplexed base's replica makes sure the member's adapter is loaded."""

    def _exit(self, member: str | None) -> None:
        """After a request's work (see `_enter`)."""

    async def start(self) -> None:
        """Start the engine (idempotent); vLLM builds its engine core here (~30 s for the demo checkpoint)."""
        async with self._start_lock:
            if not self.engine.ready:
                t0 = time.perf_counter()
                await self.engine.start()
                took = time.perf_counter() - t0
                log.info("specialist %s: %s engine up in %.1fs", self.config.name, self.engine.kind, took)

    async def generate(
        self,
        question: str,
        passages: Sequence[str],
        sampling: Mapping[str, Any] | None = None,
        history: Sequence[tuple[str, str]] = (),
        answers: Sequence[str] | None = None,
        member: str | None = None,
    ) -> Generation:
        """Answer a question from its (already trimmed) passages. Cancelling the call aborts an engine request
        that batches itself (vLLM, openai); a transformers pass that has begun runs to its end.

        `sampling`: overrides of the member's decoding for this request (`Sampling` fields: max_tokens, temperature,
        top_p, seed, stop, ignore_eos); the prompt and max_tokens must fit the member's context window.
        `history`: a chat's system messages and earlier turns, (role, text), rendered before the question.
        `answers`: the members' answers, anonymised and in the order to show: this request is this member's
        synthesis as the council's chairman (council.prompts.chairman_messages). `member`: which of a base's
        members answers (None: this deployment's own specialist)."""
        self._stats["requests"] += 1
        self._in_generate += 1
        entered = False
        try:
            if not self.engine.ready:
                await self.start()
            request = self._request(question, passages, sampling, history, answers, member)
            await self._enter(member)
            entered = True
            if self.batched:
                if self.faulty is not None:
                    await self.faulty.admit()
                result = await self._generate_batched(request)
            else:
                result = await self._generate_alone(request)
        except asyncio.CancelledError:
            self._stats["cancelled"] += 1
            raise
        except Exception:
            self._stats["errors"] += 1
            raise
        finally:
            self._in_generate -= 1
            if entered:
                self._exit(member)
        return result

    async def stream(
        self,
        question: str,
        passages: Sequence[str],
        sampling: Mapping[str, Any] | None = None,
        history: Sequence[tuple[str, str]] = (),
        answers: Sequence[str] | None = None,
        member: str | None = None,
    ) -> AsyncIterator[EngineDelta]:
        """`generate`, streamed: the answer's text as the engine produces it (call with
        `handle.options(stream=True)`). Each delta carries the new text; the last one has `finish_reason` and the
        token counts. Not batched by us (one pass per stream on transformers); closing the stream or cancelling
        its consumer aborts the engine request. Text is not stripped and no vector comes with it."""
        self._stats["requests"] += 1
        self._stats["streams"] += 1
        try:
            if not self.engine.ready:
                await self.start()
            request = self._request(question, passages, sampling, history, answers, member)
            if self.batched and self.faulty is not None:
                await self.faulty.admit()
            await self._enter(member)
            deltas = self.engine.stream(request)
            try:
                async for delta in deltas:
                    yield delta
            finally:  # now, not when garbage-collected: closing the engine's stream aborts its request
                self._exit(member)
                aclose = getattr(deltas, "aclose", None)
                if aclose is not None:
                    await aclose()
        except (asyncio.CancelledError, GeneratorExit):
            self._stats["cancelled"] += 1
            raise
        except Exception:
            self._stats["errors"] += 1
            raise

    def _request(
        self,
        question: str,
        passages: Sequence[str],
        sampling: Mapping[str, Any] | None,
        history: Sequence[tuple[str, str]],
        answers: Sequence[str] | None = None,
        member: str | None = None,
    ) -> EngineRequest:
        specialist = self._member(member)
        try:
            turns = [(str(role), str(text)) for role, text in history]
            shown = None if answers is None else [str(a) for a in answers]
            return specialist.request(question, passages, turns, answers=shown, **dict(sampling or {}))
        except (TypeError, ValueError) as e:  # an unknown field, or a value Sampling refuses
            raise InvalidRequest(f"specialist {specialist.name}: bad sampling {dict(sampling or {})}: {e}") from None

    async def _generate_batched(self, request: EngineRequest) -> Generation:
        await self._gate.wait_idle()
        # The batch wait only pays when others are on their way: a request alone in the replica runs at once.
        alone = self._in_generate == 1
        self._generate_batch.set_batch_wait_timeout_s(0.0 if alone else self.config.deployment.batch_wait_timeout_s)
        result: Generation = await self._generate_batch(request)
        return result

    async def _generate_alone(self, request: EngineRequest) -> Generation:
        # The engine batches concurrent requests itself; a CancelledError here reaches its generator and aborts it.
        [out] = await self.engine.generate([request])
        generation = out.to_generation()
        if self.answer_embedder is None:
            return generation
        [generation] = await asyncio.to_thread(self._embed_answers, [generation])
        return generation

    async def _run_batch(self, requests: list[EngineRequest]) -> list[Generation]:
        """One @serve.batch batch (see __init__): one forward pass for the batch's requests (one per set of
        sampling settings), then their answers' vectors."""
        self._stats["batches"] += 1
        self._stats["largest_batch"] = max(self._stats["largest_batch"], len(requests))
        with self._gate.busy():
            # The engine runs the pass in a worker thread: the replica's event loop takes the next batch's requests.
            generations = [out.to_generation() for out in await self.engine.generate(requests)]
            if self.answer_embedder is None:
                return generations
            return await asyncio.to_thread(self._embed_answers, generations)

    def _embed_answers(self, generations: list[Generation]) -> list[Generation]:
        # One pass for the batch's distinct answers; "unknown" needs no vector (it never merges with an answer).
        if self.answer_embedder is None:
            return generations
        texts = list(dict.fromkeys(t for t in (g.text.strip() for g in generations) if not is_unknown(t)))
        if not texts:
            return generations
        cpu = time.thread_time()
        rows, hits = self.answer_embedder.embed_counted(texts)
        vectors = dict(zip(texts, rows.tolist(), strict=True))
        self._stats["embed_cache_hits"] += hits
        self._stats["embed_cpu_ms"] += round((time.thread_time() - cpu) * 1000)
        self._stats["embedded"] += len(texts)
        return [
            dataclasses.replace(g, embedding=tuple(vectors[t])) if (t := g.text.strip()) in vectors else g
            for g in generations
        ]

    async def check_health(self) -> None:
        """Serve's health check is the engine's: a wedged forward pass (past `stuck_after_s`), a model that fails
        again after a failed generation, or a dead vLLM engine core fail it."""
        await self.engine.check_health()

    def stats(self) -> dict[str, int]:
        """Counters of this replica: requests (streams among them), errors, cancelled, batches run by us and the
        largest one (0 for an engine that batches itself), answers given a vector (`embed_cache_hits` of them
        remembered, not embedded again), the CPU milliseconds its worker threads spent generating (transformers)
        and embedding answers, `running`: the requests the engine
        holds right now, and the engine's own counters (openai: attempts, retries, remote_errors)."""
        return {
            **self._stats,
            **getattr(self.base_engine, "counters", {}),
            "generate_cpu_ms": int(getattr(self.base_engine, "cpu_ms", 0)),
            "running": self.engine.num_running(),
        }

    def close(self) -> None:
        """Stop the engine's processes now (vLLM's engine core), from synchronous code."""
        close = getattr(getattr(self, "base_engine", None), "close", None)
        if close is not None:
            close()


class AsyncSpecialistServer(SpecialistServer):
    """The deployment of a member whose engine starts asynchronously (vLLM): Serve awaits this `__init__` on the
    replica's event loop, so the engine's output handler lives on the loop its requests come in on, and the
    replica is ready only once the engine is."""

    async def __init__(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[misc]
        SpecialistServer.__init__(self, *args, **kwargs)
        await self.start()

    def __del__(self) -> None:  # Serve calls it when the replica stops: no engine core left behind
        self.close()
