"""SpecialistServer: one specialist on its own deployment, batching concurrent requests into forward passes.

Plain classes, no decorators: `app.py` turns them into deployments and binds them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from council.agreement import is_unknown
from council.batching import PassGate
from council.config import SpecialistConfig
from council.errors import InvalidRequest
from council.protocols import Embedder
from council.types import Generation

log = logging.getLogger(__name__)


class Fault(BaseModel):
    """Fault injection for resilience testing: make one specialist slow or failing, on purpose.

    Set through `build_app(args={"faults": {name: {...}}})` (or the Serve config's `args`); never in
    production configs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    delay_s: float = Field(default=0.0, ge=0, description="Sleep this long before answering each request.")
    error: str | None = Field(default=None, description="Fail every request with RuntimeError(error).")
    hang_s: float = Field(
        default=0.0, ge=0, description="Block the worker thread this long in each forward pass (a wedged model)."
    )


class SpecialistServer:
    """One specialist on its own deployment: batches concurrent `generate` calls into one forward pass."""

    def __init__(
        self, config: dict[str, Any], fault: dict[str, Any] | None = None, answer_embedder: str | None = None
    ) -> None:
        """`answer_embedder`: embed each answer right after generating it, with this sentence-transformers model
        ("" = the bundled MiniLM), and return the vector with the Generation; None: do not embed."""
        from council.backends.transformers import TransformersSpecialist

        self.config = SpecialistConfig.model_validate(config)
        self.fault = Fault.model_validate(fault or {})
        self.specialist = TransformersSpecialist(self.config)
        self.answer_embedder: Embedder | None = None
        if answer_embedder is not None:
            from council.backends.embeddings import get_embedder

            self.answer_embedder = get_embedder(answer_embedder or None)
            self.answer_embedder.embed(["warm up"])  # first-pass allocations at start-up, not in the first request
        # A failed forward pass makes the next health check try the model again (see check_health).
        self._suspect: str | None = None
        # Forward passes in flight (ticket -> start): one running past stuck_after_s fails the health check.
        self._running: dict[int, float] = {}
        self._running_lock = threading.Lock()
        self._tickets = itertools.count()
        self._stats = {
            "requests": 0, "errors": 0, "cancelled": 0, "batches": 0, "largest_batch": 0, "embedded": 0,
            "generate_cpu_ms": 0, "embed_cpu_ms": 0,
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
        if self.fault != Fault():
            log.warning("specialist %s runs with injected fault %s", self.config.name, self.fault)

    async def generate(self, question: str, passages: Sequence[str]) -> Generation:
        """Answer a question from its (already trimmed) passages."""
        self._stats["requests"] += 1
        self._in_generate += 1
        try:
            await self._inject_fault()
            await self._gate.wait_idle()
            # The batch wait only pays when others are on their way: a request alone in the replica runs at once.
            alone = self._in_generate == 1
            self._generate_batch.set_batch_wait_timeout_s(0.0 if alone else self.config.deployment.batch_wait_timeout_s)
            result: Generation = await self._generate_batch((question, tuple(passages)))
        except asyncio.CancelledError:
            self._stats["cancelled"] += 1
            raise
        except Exception:
            self._stats["errors"] += 1
            raise
        finally:
            self._in_generate -= 1
        return result

    async def _run_batch(self, items: list[tuple[str, tuple[str, ...]]]) -> list[Generation]:
        """One @serve.batch batch (see __init__): a single forward pass for all of `items`."""
        # A worker thread keeps the replica's event loop free to take the next batch's requests.
        self._stats["batches"] += 1
        self._stats["largest_batch"] = max(self._stats["largest_batch"], len(items))
        try:
            with self._gate.busy():
                return await asyncio.to_thread(self._forward, items)
        except InvalidRequest:  # the request's fault, not the model's
            raise
        except Exception as e:
            self._suspect = f"{type(e).__name__}: {e}"
            raise

    def _forward(self, items: list[tuple[str, tuple[str, ...]]]) -> list[Generation]:
        # Timed in the worker thread itself: a cancelled caller does not stop a thread that hangs.
        ticket = next(self._tickets)
        with self._running_lock:
            self._running[ticket] = time.monotonic()
        try:
            if self.fault.hang_s:
                time.sleep(self.fault.hang_s)
            cpu = time.thread_time()
            generations = self.specialist.generate_batch(items)
            self._stats["generate_cpu_ms"] += round((time.thread_time() - cpu) * 1000)
            return self._embed_answers(generations)
        finally:
            with self._running_lock:
                del self._running[ticket]

    def _embed_answers(self, generations: list[Generation]) -> list[Generation]:
        # One pass for the batch's distinct answers; "unknown" needs no vector (it never merges with an answer).
        if self.answer_embedder is None:
            return generations
        texts = list(dict.fromkeys(t for t in (g.text.strip() for g in generations) if not is_unknown(t)))
        if not texts:
            return generations
        cpu = time.thread_time()
        vectors = dict(zip(texts, self.answer_embedder.embed(texts).tolist(), strict=True))
        self._stats["embed_cpu_ms"] += round((time.thread_time() - cpu) * 1000)
        self._stats["embedded"] += len(texts)
        return [
            dataclasses.replace(g, embedding=tuple(vectors[t])) if (t := g.text.strip()) in vectors else g
            for g in generations
        ]

    async def _inject_fault(self) -> None:
        if self.fault.delay_s:
            await asyncio.sleep(self.fault.delay_s)
        if self.fault.error is not None:
            raise RuntimeError(self.fault.error)

    async def check_health(self) -> None:
        """Serve's health check: no forward pass may run past `stuck_after_s` (a wedged model), and after a
        failed generation the model must generate one token again."""
        with self._running_lock:
            oldest = min(self._running.values(), default=None)
        limit = self.config.deployment.stuck_after_s
        if oldest is not None and time.monotonic() - oldest > limit:
            stuck = time.monotonic() - oldest
            raise RuntimeError(f"specialist {self.config.name}: a forward pass has run {stuck:.0f}s (> {limit:g}s)")
        if self._suspect is None:
            return
        if not await asyncio.to_thread(self.specialist.healthy):
            raise RuntimeError(f"specialist {self.config.name} is not usable: {self._suspect}")
        self._suspect = None

    def stats(self) -> dict[str, int]:
        """Counters of this replica: requests, errors, cancelled, batches run, the largest batch, answers embedded,
        and the CPU milliseconds its forward-pass threads spent generating and embedding answers."""
        return dict(self._stats)
