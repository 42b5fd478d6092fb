"""BatchedEmbedder (shared passes, cache, failures reach every caller) and PassGate (batches fill while a pass runs)."""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from collections.abc import Sequence

import numpy as np
import pytest

from council.batching import BatchedEmbedder, PassGate, embed_async


class SlowEmbedder:
    """A deterministic embedder whose passes take `delay` seconds (like a model) and are recorded."""

    dim = 8

    def __init__(self, delay: float = 0.02, fail_on: str | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.calls: list[list[str]] = []
        self.threads: set[int] = set()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.threads.add(threading.get_ident())
        time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError(f"cannot embed {self.fail_on!r}")
        rng = [np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim) for t in texts]
        return np.asarray(rng, dtype=np.float32).reshape(len(texts), self.dim)


def expected(texts: Sequence[str]) -> np.ndarray:
    return SlowEmbedder(delay=0).embed(texts)


async def test_concurrent_callers_share_a_few_passes_and_get_their_own_rows() -> None:
    base = SlowEmbedder()
    emb = BatchedEmbedder(base)
    texts = [f"question {i}" for i in range(40)]
    rows = await asyncio.gather(*(emb.embed_async([t]) for t in texts))
    for t, r in zip(texts, rows, strict=True):
        np.testing.assert_allclose(r, expected([t]))
    # 40 callers one at a time would be 40 passes; together they fit in one (two if the first left early).
    assert len(base.calls) <= 2 and sum(len(c) for c in base.calls) == 40
    assert emb.stats["largest_pass"] >= 20
    assert threading.get_ident() not in base.threads  # the model ran off the event loop


async def test_event_loop_stays_free_while_a_pass_runs() -> None:
    emb = BatchedEmbedder(SlowEmbedder(delay=0.3))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await emb.embed_async(["a"])
    task.cancel()
    assert ticks >= 10


async def test_cache_answers_repeats_without_a_pass_and_evicts_the_oldest() -> None:
    base = SlowEmbedder(delay=0)
    emb = BatchedEmbedder(base, cache_size=2)
    first = await emb.embed_async(["unknown", "5 years", "unknown"])
    assert base.calls == [["unknown", "5 years"]]  # duplicates in one call are embedded once
    np.testing.assert_allclose(first, expected(["unknown", "5 years", "unknown"]))
    np.testing.assert_allclose(await emb.embed_async(["5 years"]), expected(["5 years"]))
    assert len(base.calls) == 1 and emb.stats["cache_hits"] >= 1
    await emb.embed_async(["paris"])  # cache of 2: "unknown" (least recently used) goes
    await emb.embed_async(["unknown"])
    assert base.calls[-1] == ["unknown"]
    np.testing.assert_allclose(emb.embed(["paris", "new"]), expected(["paris", "new"]))  # the blocking path too
    assert base.calls[-1] == ["new"]


async def test_no_cache_still_batches() -> None:
    base = SlowEmbedder(delay=0)
    emb = BatchedEmbedder(base, cache_size=0)
    await emb.embed_async(["x"])
    await emb.embed_async(["x"])
    assert base.calls == [["x"], ["x"]]


async def test_max_batch_splits_passes() -> None:
    base = SlowEmbedder(delay=0.01)
    emb = BatchedEmbedder(base, max_batch=4)
    await asyncio.gather(*(emb.embed_async([f"t{i}"]) for i in range(10)))
    assert max(len(c) for c in base.calls) <= 4 and sum(len(c) for c in base.calls) == 10


async def test_a_failed_pass_reaches_its_callers_and_the_next_pass_works() -> None:
    base = SlowEmbedder(fail_on="bad")
    emb = BatchedEmbedder(base)
    results = await asyncio.gather(emb.embed_async(["bad"]), emb.embed_async(["good"]), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "bad" in str(r) for r in results)
    np.testing.assert_allclose(await emb.embed_async(["good"]), expected(["good"]))


async def test_one_caller_giving_up_does_not_cancel_the_others() -> None:
    emb = BatchedEmbedder(SlowEmbedder(delay=0.2))
    quitter = asyncio.create_task(emb.embed_async(["shared"]))
    stayer = asyncio.create_task(emb.embed_async(["shared"]))
    await asyncio.sleep(0.05)
    quitter.cancel()
    np.testing.assert_allclose(await asyncio.wait_for(stayer, 5), expected(["shared"]))
    with pytest.raises(asyncio.CancelledError):
        await quitter


def test_works_across_event_loops_and_with_plain_embedders() -> None:
    emb = BatchedEmbedder(SlowEmbedder(delay=0), cache_size=0)
    for _ in range(2):  # asyncio.run makes a new loop each time
        assert asyncio.run(emb.embed_async(["a", "b"])).shape == (2, 8)
    plain = SlowEmbedder(delay=0)
    np.testing.assert_allclose(asyncio.run(embed_async(plain, ["z"])), expected(["z"]))
    assert asyncio.run(emb.embed_async([])).shape == (0, 8)


@pytest.mark.parametrize("kwargs", [{"max_batch": 0}, {"wait_s": -1}, {"cache_size": -1}])
def test_bad_settings_are_named(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        BatchedEmbedder(SlowEmbedder(), **kwargs)  # type: ignore[arg-type]


async def test_pass_gate_lets_a_lone_request_through_and_holds_others_until_the_pass_ends() -> None:
    gate = PassGate()
    await asyncio.wait_for(gate.wait_idle(), 0.1)  # nothing running: no wait
    entered: list[str] = []

    async def request(name: str) -> None:
        await gate.wait_idle()
        entered.append(name)

    with gate.busy():
        waiting = [asyncio.create_task(request(f"r{i}")) for i in range(3)]
        await asyncio.sleep(0.05)
        assert entered == [] and gate.running == 1  # held while the pass runs
    await asyncio.wait_for(asyncio.gather(*waiting), 1)
    assert entered == ["r0", "r1", "r2"] and gate.running == 0
