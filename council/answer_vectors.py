"""The answers' embeddings for agreement, gathered while a question's members answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from council.agreement import is_unknown
from council.batching import embed_async
from council.protocols import Embedder

__all__ = ["AnswerVectors"]


class AnswerVectors:
    """Each answer's embedding: the one its member's replica sent with it, else started here the moment its
    member answers, so that embedding the early answers overlaps the members still generating.

    "Unknown" answers get a zero row: they never merge with another answer, so their vector is never read.
    """

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self._tasks: dict[str, asyncio.Future[np.ndarray]] = {}

    def put(self, answer: str, embedding: Sequence[float] | None) -> None:
        """Take the vector a member computed for its answer (None: nothing given)."""
        if embedding is not None and answer not in self._tasks:
            done: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
            done.set_result(np.asarray(embedding, dtype=np.float32))
            self._tasks[answer] = done

    def start(self, answers: Sequence[str]) -> None:
        fresh = list(dict.fromkeys(a for a in answers if a not in self._tasks and not is_unknown(a)))
        if fresh:
            task = asyncio.ensure_future(embed_async(self.embedder, fresh))
            for i, a in enumerate(fresh):
                self._tasks[a] = asyncio.ensure_future(_row(task, i))

    async def matrix(self, answers: Sequence[str]) -> np.ndarray:
        """One row per answer (in order), embedding any not started yet."""
        self.start(answers)
        rows = [await self._tasks[a] if a in self._tasks else None for a in answers]
        dim = next((r.shape[0] for r in rows if r is not None), self.embedder.dim)
        return np.stack([np.zeros(dim, np.float32) if r is None else r for r in rows]) if rows else np.zeros((0, dim))

    def cancel(self) -> None:
        for task in self._tasks.values():
            task.cancel()


async def _row(task: asyncio.Future[np.ndarray], i: int) -> np.ndarray:
    return (await asyncio.shield(task))[i]
