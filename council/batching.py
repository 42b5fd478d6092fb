"""An embedder that coalesces concurrent requests into one forward pass and remembers recent texts.

Under load a council embeds one question and `k` answers per request. Done one request at a time, those
MiniLM passes (not the specialists, not Serve) set the council's throughput; batched, 64 questions cost
little more than one. Short answers also repeat ("unknown", "5 years"), so recent vectors are cached.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from council.protocols import Embedder


class BatchedEmbedder:
    """`Embedder` plus `embed_async`: calls awaiting together share one `embed` call of the wrapped model.

    One batch runs at a time (in a worker thread, so the event loop stays free); texts that arrive while
    it runs form the next batch. `wait_s` holds the first text of an idle queue that long so that
    callers arriving together share its pass. Identical texts in flight are embedded once.
    """

    def __init__(
        self, base: Embedder, *, max_batch: int = 128, wait_s: float = 0.002, cache_size: int = 4096
    ) -> None:
        if max_batch < 1 or wait_s < 0 or cache_size < 0:
            raise ValueError(f"max_batch={max_batch} must be >= 1, wait_s={wait_s} and cache_size={cache_size} >= 0")
        self.base = base
        self.dim = base.dim
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.cache_size = cache_size
        self.stats = {"texts": 0, "cache_hits": 0, "passes": 0, "largest_pass": 0}
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[str, asyncio.Future[np.ndarray]] = {}
        self._worker: asyncio.Task[None] | None = None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Blocking: cached rows plus one pass of the wrapped embedder for the rest."""
        return self.embed_counted(texts)[0]

    def embed_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """`embed`, and how many of `texts` came from the cache."""
        texts = list(texts)
        rows = self._cached(texts)
        hits = sum(r is not None for r in rows)
        missing = list(dict.fromkeys(t for t, r in zip(texts, rows, strict=True) if r is None))
        if missing:
            found = dict(zip(missing, self._pass(missing), strict=True))
            rows = [found[t] if r is None else r for t, r in zip(texts, rows, strict=True)]
        return self._stack(rows), hits

    async def embed_async(self, texts: Sequence[str]) -> np.ndarray:
        """Like `embed`, but batched with every other caller awaiting on this event loop."""
        texts = list(texts)
        rows = self._cached(texts)
        if all(r is not None for r in rows):
            return self._stack(rows)
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests run several): nothing pending on the old one survives
            self._loop, self._waiting, self._worker = loop, {}, None
        futures = {}
        for text, row in zip(texts, rows, strict=True):
            if row is None and text not in futures:
                if text not in self._waiting:
                    self._waiting[text] = loop.create_future()
                futures[text] = self._waiting[text]
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        # shield: one caller giving up must not cancel a future other callers share.
        found = {t: await asyncio.shield(f) for t, f in futures.items()}
        return self._stack([found[t] if r is None else r for t, r in zip(texts, rows, strict=True)])

    async def _drain(self) -> None:
        if self.wait_s:
            await asyncio.sleep(self.wait_s)
        while self._waiting:
            batch = list(self._waiting)[: self.max_batch]
            futures = [self._waiting[t] for t in batch]
            try:
                vectors = await asyncio.to_thread(self._pass, batch)
            except Exception as e:  # every caller of this batch hears the failure; the next batch still runs
                for t, f in zip(batch, futures, strict=True):
                    self._waiting.pop(t, None)
                    if not f.done():
                        f.set_exception(e)
                continue
            for t, f, v in zip(batch, futures, vectors, strict=True):
                self._waiting.pop(t, None)
                if not f.done():
                    f.set_result(v)

    def _pass(self, texts: list[str]) -> np.ndarray:
        vectors = np.asarray(self.base.embed(texts), dtype=np.float32)
        with self._lock:
            self.stats["passes"] += 1
            self.stats["largest_pass"] = max(self.stats["largest_pass"], len(texts))
            if self.cache_size:
                for t, v in zip(texts, vectors, strict=True):
                    self._cache[t] = v
                    self._cache.move_to_end(t)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return vectors

    def _cached(self, texts: list[str]) -> list[np.ndarray | None]:
        with self._lock:
            rows = [self._cache.get(t) for t in texts]
            for t, r in zip(texts, rows, strict=True):
                if r is not None:
                    self._cache.move_to_end(t)
            self.stats["texts"] += len(texts)
            self.stats["cache_hits"] += sum(r is not None for r in rows)
        return rows

    def _stack(self, rows: Sequence[np.ndarray | None]) -> np.ndarray:
        if not rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([r for r in rows if r is not None]).astype(np.float32, copy=False)


async def embed_async(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    """Embed without blocking the event loop: batched when the embedder can, else in a worker thread."""
    batched = getattr(embedder, "embed_async", None)
    if batched is not None:
        return np.asarray(await batched(texts))
    return np.asarray(await asyncio.to_thread(embedder.embed, list(texts)))



class PassGate:
    """Holds new requests while a forward pass runs, so that all who arrived during it join the next pass.

    `@serve.batch` seals a batch `batch_wait_timeout_s` after its first request, even while the model is
    still busy with the previous batch; a busy model therefore runs a string of small batches, each sealed
    long before the model could take it. Behind this gate a request enters the batch queue only when no
    pass is running: a lone request waits for nothing, and under load a batch is as large as the queue
    that built up during the last pass (up to the batch size). Use one gate per event loop.
    """

    def __init__(self) -> None:
        self.running = 0
        self._idle: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _event(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._idle is None or loop is not self._loop:
            self._idle, self._loop = asyncio.Event(), loop
            if not self.running:
                self._idle.set()
        return self._idle

    async def wait_idle(self) -> None:
        """Return once no pass is running (at once when none is)."""
        idle = self._event()
        while self.running:
            await idle.wait()

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Mark a forward pass as running for the duration of the block (call on the event loop)."""
        idle = self._event()
        self.running += 1
        idle.clear()
        try:
            yield
        finally:
            self.running -= 1
            if not self.running:
                idle.set()
