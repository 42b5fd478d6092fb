"""Adapters that make Serve deployment handles look like the pipeline's protocols."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from council.errors import Overloaded
from council.types import Chunk, Document, Generation, MemberAnswer, TrimReport

if TYPE_CHECKING:
    import numpy as np
    from ray.serve.handle import DeploymentHandle

    from council.agreement import Verdict


def unwrap(error: BaseException) -> BaseException:
    """The exception a deployment really raised: Ray wraps it in a RayTaskError whose `.cause` is the original.

    Serve's BackPressureError (a member's queue is full) becomes Overloaded, which knows its Retry-After.
    """
    seen = 0
    while type(error).__name__.startswith("RayTaskError") and getattr(error, "cause", None) is not None:
        error = error.cause  # type: ignore[attr-defined]
        seen += 1
        if seen > 8:
            break
    if type(error).__name__ == "BackPressureError":
        retry = getattr(error, "retry_after_s", None) or 1.0
        return Overloaded(f"the council is at capacity: {getattr(error, 'message', error)}", retry_after_s=retry)
    return error


async def call(handle: DeploymentHandle, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call `method` on a deployment and await it, as if it were local.

    Cancelling the awaiting task cancels the remote request too (Serve does not do that by itself: the
    replica would otherwise keep working on a request nobody waits for). Errors come back unwrapped.
    """
    response = getattr(handle, method).remote(*args, **kwargs)
    try:
        return await response
    except asyncio.CancelledError:
        response.cancel()
        raise
    except Exception as e:
        cause = unwrap(e)
        if cause is e:
            raise
        raise cause from None


class HandleSpecialist:
    """`Specialist` over a SpecialistServer deployment."""

    def __init__(self, name: str, handle: DeploymentHandle) -> None:
        self.name = name
        self.handle = handle

    async def generate(self, question: str, passages: Sequence[str]) -> Generation:
        """One answer, batched with concurrent requests on the replica."""
        result: Generation = await call(self.handle, "generate", question, list(passages))
        return result

    async def generate_text(self, prompt: str, max_new_tokens: int | None = None) -> Generation:
        """A completion for an already-rendered prompt."""
        result: Generation = await call(self.handle, "generate_text", prompt, max_new_tokens)
        return result


class HandleRetriever:
    """`Retriever` over a RetrievalServer deployment (the tenant filter is applied there, server-side)."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def retrieve(
        self,
        question: str,
        *,
        tenant: str,
        top_n: int,
        query_embedding: Sequence[float] | None = None,
        documents: Sequence[Document] = (),
    ) -> list[Chunk]:
        """The tenant's most relevant chunks (plus this request's ephemeral documents)."""
        result: list[Chunk] = await call(
            self.handle,
            "retrieve",
            question,
            tenant=tenant,
            top_n=top_n,
            query_embedding=list(query_embedding) if query_embedding is not None else None,
            documents=list(documents),
        )
        return result

    async def count(self, tenant: str | None = None) -> int:
        """Chunks in the store (of one tenant, or all)."""
        return int(await call(self.handle, "count", tenant))


class HandleAggregator:
    """`Aggregator` over an AggregatorServer deployment."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def trim(
        self,
        question: str,
        chunks: Sequence[Chunk],
        members: Sequence[str],
        *,
        budget_tokens: int | None,
        ordering: str,
        orderings: int,
    ) -> dict[str, list[tuple[list[str], TrimReport]]]:
        """Each member's passages in prompt order with its TrimReport, per ordering."""
        result: dict[str, list[tuple[list[str], TrimReport]]] = await call(
            self.handle,
            "trim",
            question,
            list(chunks),
            list(members),
            budget_tokens=budget_tokens,
            ordering=ordering,
            orderings=orderings,
        )
        return result

    async def aggregate(self, members: Sequence[MemberAnswer], embeddings: np.ndarray | None = None) -> Verdict:
        """The council's verdict over the members that answered."""
        result: Verdict = await call(self.handle, "aggregate", list(members), embeddings)
        return result

    async def vote(self, answers: Sequence[str], embeddings: np.ndarray | None = None) -> tuple[int, float]:
        """One member's answers across orderings -> (winner index, consistency)."""
        winner, consistency = await call(self.handle, "vote", list(answers), embeddings)
        return int(winner), float(consistency)
