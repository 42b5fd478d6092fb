"""Fault injection as an engine wrapper: a member made slow, failing or wedged on purpose (tests, benchmarks).

`FaultyEngine(inner, Faults(...))` is an `Engine` that behaves like `inner` except for the faults; it replaces
the fault code inside `SpecialistServer` (its `Fault` model has the same fields: `delay_s`, `error`, `hang_s`).
Never in production configs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from council.backends.engine import Engine, EngineDead, EngineDelta, EngineOutput, EngineRequest, Sampling

if TYPE_CHECKING:
    from council.backends.tokens import TokenizerCounter

log = logging.getLogger(__name__)

__all__ = ["FaultyEngine", "Faults"]


class Faults(BaseModel):
    """What to break. The defaults break nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    delay_s: float = Field(0.0, ge=0, description="Sleep this long (in the event loop) before each request.")
    error: str | None = Field(None, description="Fail every request with RuntimeError(error).")
    hang_s: float = Field(
        0.0, ge=0, description="Block a worker thread this long in each request, as a wedged forward pass does."
    )
    stuck_after_s: float = Field(
        300.0, gt=0, description="check_health fails while a hang has lasted longer than this (a wedged model)."
    )
    unhealthy: bool = Field(False, description="check_health always fails (a dead engine that still answers).")


class FaultyEngine:
    """`Engine` wrapper: `inner` with the `faults` applied; everything else is passed through."""

    def __init__(
        self, inner: Engine, faults: Faults | Mapping[str, Any] | None = None, *, admitted_by_caller: bool = False
    ) -> None:
        """`admitted_by_caller`: the caller calls `admit()` for each request itself, before it batches them (the
        transformers server: a delay or error meets each request on arrival, as a slow or failing member would,
        not once per batch); `generate` and `stream` then apply only the hang."""
        self.inner = inner
        self.admitted_by_caller = admitted_by_caller
        self.faults = faults if isinstance(faults, Faults) else Faults.model_validate(dict(faults or {}))
        self.name = inner.name
        self.kind = f"faulty({inner.kind})"
        self.batches_itself = inner.batches_itself
        self._hangs: dict[int, float] = {}  # hangs in progress: ticket -> start (monotonic)
        self._hangs_lock = threading.Lock()
        self._tickets = itertools.count()
        self.injected = {"delayed": 0, "failed": 0, "hung": 0}
        if self.faults != Faults():
            log.warning("engine %s runs with injected faults %s", self.name, self.faults)

    # -- the faults ---------------------------------------------------------------------------------------------

    async def admit(self, requests: int = 1) -> None:
        """The faults a request meets before it reaches the model: the delay, then the error."""
        f = self.faults
        if f.delay_s:
            self.injected["delayed"] += requests
            await asyncio.sleep(f.delay_s)
        if f.error is not None:
            self.injected["failed"] += requests
            raise RuntimeError(f.error)

    async def _before(self, requests: int) -> None:
        if not self.admitted_by_caller:
            await self.admit(requests)
        if self.faults.hang_s:
            self.injected["hung"] += requests
            await asyncio.to_thread(self._hang)

    def _hang(self) -> None:
        ticket = next(self._tickets)
        with self._hangs_lock:
            self._hangs[ticket] = time.monotonic()
        try:
            time.sleep(self.faults.hang_s)
        finally:
            with self._hangs_lock:
                del self._hangs[ticket]

    # -- the Engine protocol ----------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.inner.ready

    @property
    def tokens(self) -> TokenizerCounter:
        return self.inner.tokens

    @property
    def context_window(self) -> int:
        return self.inner.context_window

    @property
    def default_sampling(self) -> Sampling:
        return self.inner.default_sampling

    async def start(self) -> None:
        await self.inner.start()

    async def generate(self, requests: Sequence[EngineRequest]) -> list[EngineOutput]:
        await self._before(len(requests))
        return await self.inner.generate(requests)

    async def stream(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        await self._before(1)
        async for delta in self.inner.stream(request):
            yield delta

    async def abort(self, request_id: str) -> None:
        await self.inner.abort(request_id)

    def num_running(self) -> int:
        return self.inner.num_running()

    async def check_health(self) -> None:
        if self.faults.unhealthy:
            raise EngineDead(f"engine {self.name}: injected fault: unhealthy")
        with self._hangs_lock:
            oldest = min(self._hangs.values(), default=None)
        limit = self.faults.stuck_after_s
        if oldest is not None and (stuck := time.monotonic() - oldest) > limit:
            raise EngineDead(f"engine {self.name}: a forward pass has run {stuck:.0f}s (> {limit:g}s)")
        await self.inner.check_health()

    async def shutdown(self) -> None:
        await self.inner.shutdown()

    def info(self) -> dict[str, Any]:
        return {**self.inner.info(), "engine": self.kind, "faults": self.faults.model_dump(exclude_defaults=True)}


if TYPE_CHECKING:  # mypy checks that the class implements the Engine protocol

    def _implements_engine(engine: FaultyEngine) -> Engine:
        return engine
