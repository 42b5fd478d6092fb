"""BaseServer: the one deployment of a base model whose members are LoRA adapters of it.

The replica holds the base once, with its members' adapters over it (unmerged); each request runs under its
member's adapter: the transformers engine runs a batch mixing adapters as one pass (PEFT's mixed-batch
inference), vLLM batches requests for different adapters together (one `LoRARequest` per member). Each member
keeps its own prompt template, window and decoding (`EngineSpecialist(engine, member)`).

With more members than `deployment.max_adapters_per_replica`, the replica loads adapters on demand through
Serve's model multiplexing: the ingress sends each request with `multiplexed_model_id=<member>`, Serve's router
prefers a replica that has it, and the replica loads it on first use, evicting its least recently used one
(once no request of it is in flight).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from ray import serve

from council.backends.engine import Engine, EngineSpecialist
from council.bases import multiplexed
from council.config import SpecialistConfig
from council.errors import InvalidRequest
from council.serving.specialist import SpecialistServer

log = logging.getLogger(__name__)


def host_config(name: str, members: list[SpecialistConfig]) -> dict[str, Any]:
    """The config the base's engine runs on: the first member's settings over the bare base (no adapter)."""
    lead = members[0]
    return lead.model_copy(update={"name": name, "adapter": None, "base": None}).model_dump(mode="json")


class _Loaded:
    """What the multiplexer keeps per loaded adapter; Serve calls `__del__` when it evicts it (LRU)."""

    def __init__(self, server: BaseServer, member: str) -> None:
        self.server = server
        self.member = member
        self._released = False

    def __del__(self) -> None:  # Serve runs it in a worker thread; the garbage collector may run it again
        if not self._released:
            self._released = True
            self.server._evicted(self.member)


class BaseServer(SpecialistServer):
    """A base's deployment: `generate(..., member=<name>)` answers as that member, under its adapter."""

    def __init__(
        self,
        name: str,
        members: list[dict[str, Any]],
        fault: dict[str, Any] | None = None,
        answer_embedder: str | None = None,
    ) -> None:
        self.member_configs = [SpecialistConfig.model_validate(m) for m in members]
        if not self.member_configs:
            raise InvalidRequest(f"base {name}: no members")
        limit = self.member_configs[0].deployment.max_adapters_per_replica
        self.multiplexed = multiplexed(limit, len(self.member_configs))
        self._limit = limit
        super().__init__(host_config(name, self.member_configs), fault, answer_embedder)
        self.members = {m.name: EngineSpecialist(self.engine, m) for m in self.member_configs}
        self._holder: Any = self.base_engine  # the engine holding the base and its adapters (under any fault wrapper)
        self._in_use: Counter[str] = Counter()
        self._pending: set[str] = set()  # evicted while in use: unloaded when its last request ends
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats.update(adapter_loads=0, adapter_evictions=0)
        self._load: Any = None
        if limit is not None and self.multiplexed:

            async def load(member: str) -> _Loaded:  # a plain function: Serve keeps its LRU on it, per instance
                return await self._load_adapter(member)

            self._load = serve.multiplexed(max_num_models_per_replica=limit)(load)

    def _build_engine(self) -> Engine:
        from council.backends.engines import build_engine

        adapters = {m.name: m.adapter for m in self.member_configs if m.adapter}
        c = self.config
        return build_engine(
            c, c.engine, c.engine_options, adapters, load_adapters=not self.multiplexed, slots=self._limit
        )

    def _member(self, member: str | None) -> EngineSpecialist:
        if member not in self.members:
            raise InvalidRequest(f"base {self.config.name}: no member {member!r}; its members: {list(self.members)}")
        return self.members[member]

    async def _enter(self, member: str | None) -> None:
        if not self.multiplexed or member is None:
            return
        self._loop = asyncio.get_running_loop()
        wanted = serve.get_multiplexed_model_id() or member
        if wanted != member:
            raise InvalidRequest(f"base {self.config.name}: request for {member!r} sent as model id {wanted!r}")
        await self._load(member)
        self._in_use[member] += 1

    def _exit(self, member: str | None) -> None:
        if not self.multiplexed or member is None:
            return
        self._in_use[member] -= 1
        if self._in_use[member] <= 0 and member in self._pending:
            self._pending.discard(member)
            asyncio.get_running_loop().create_task(self._unload(member))

    async def _load_adapter(self, member: str) -> _Loaded:
        self._pending.discard(member)  # evicted, never unloaded (it was in use), wanted again
        await self._holder.add_adapter(member)
        self._stats["adapter_loads"] += 1
        log.info("base %s: adapter %s loaded (%s)", self.config.name, member, self.adapters())
        return _Loaded(self, member)

    def _evicted(self, member: str) -> None:
        """Serve's LRU let go of `member`: unload it now, or once its requests in flight are done."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if _in_loop(loop):
            loop.create_task(self._evict(member))  # the garbage collector, on the loop: do not wait
            return
        asyncio.run_coroutine_threadsafe(self._evict(member), loop).result()

    async def _evict(self, member: str) -> None:
        self._stats["adapter_evictions"] += 1
        if self._in_use[member] > 0:
            self._pending.add(member)
            return
        await self._unload(member)

    async def _unload(self, member: str) -> None:
        await self._holder.remove_adapter(member)
        log.info("base %s: adapter %s unloaded (%s)", self.config.name, member, self.adapters())

    def adapters(self) -> list[str]:
        """The members whose adapters this replica holds right now."""
        return list(getattr(self.base_engine, "adapters", []))


def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class AsyncBaseServer(BaseServer):
    """A base's deployment on an engine that starts asynchronously (vLLM), as AsyncSpecialistServer."""

    async def __init__(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[misc]
        BaseServer.__init__(self, *args, **kwargs)
        await self.start()

    def __del__(self) -> None:
        self.close()
