"""Adapters that make Serve deployment handles look like the pipeline's protocols."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from council.errors import MemberUnavailable
from council.serving.ray_errors import Failure, failure, unwrap
from council.types import Chunk, Conversation, Document, Generation, MemberAnswer, TrimReport

if TYPE_CHECKING:
    import numpy as np
    from ray.serve.handle import DeploymentHandle

    from council.agreement import Verdict


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


def _member_lost(name: str, error: BaseException) -> MemberUnavailable | None:
    """A member's replica that died or is not there, as MemberUnavailable (Ray's own message, which names node
    addresses and PIDs, stays on the chained cause: logged under an incident id, never sent to callers)."""
    kind = failure(error)
    if kind in (Failure.REPLICA_LOST, Failure.UNAVAILABLE):
        assert kind is not None
        return MemberUnavailable(f"member {name}'s replica is unavailable ({kind.value})")
    return None


class HandleSpecialist:
    """`Specialist` (and `ChatSpecialist`, `Chairman`) over a SpecialistServer deployment, or over the BaseServer
    deployment of a base it shares (`on_base`: each call names the member; `multiplexed`: and goes by Serve's model
    multiplexing to a replica that holds its adapter)."""

    def __init__(
        self, name: str, handle: DeploymentHandle, *, on_base: bool = False, multiplexed: bool = False
    ) -> None:
        self.name = name
        self.handle = handle.options(multiplexed_model_id=name) if multiplexed else handle
        self._member: dict[str, str] = {"member": name} if on_base else {}

    async def generate(
        self, question: str, passages: Sequence[str], conversation: Conversation | None = None
    ) -> Generation:
        """One answer, batched with concurrent requests on the replica (after a chat's history, with its
        decoding settings, when `conversation` is given)."""
        if conversation is None:
            return await self._generate(question, list(passages))
        sampling, history = dict(conversation.sampling), list(conversation.history)
        return await self._generate(question, list(passages), sampling, history)

    async def _generate(self, *args: Any) -> Generation:
        try:
            result: Generation = await call(self.handle, "generate", *args, **self._member)
        except Exception as e:
            lost = _member_lost(self.name, e)
            if lost is None:
                raise
            raise lost from e
        return result

    async def synthesise(
        self,
        question: str,
        passages: Sequence[str],
        answers: Sequence[str],
        conversation: Conversation | None = None,
    ) -> Generation:
        """This member's synthesis as the council's chairman, from the members' answers (anonymised, in order)."""
        conv = conversation or Conversation()
        return await self._generate(question, list(passages), dict(conv.sampling), list(conv.history), list(answers))

    def stream(
        self, question: str, passages: Sequence[str], conversation: Conversation | None = None
    ) -> AsyncIterator[tuple[str, Generation | None]]:
        """The answer as the member's engine produces it: ("piece", None) for each piece of text, then
        ("", Generation) with the whole (stripped) answer and its token counts. Closing the iterator, or
        cancelling its consumer, cancels the replica's stream and so the engine request."""
        return self._stream(question, passages, conversation, None)

    def stream_synthesis(
        self,
        question: str,
        passages: Sequence[str],
        answers: Sequence[str],
        conversation: Conversation | None = None,
    ) -> AsyncIterator[tuple[str, Generation | None]]:
        """`synthesise`, streamed as `stream` streams an answer."""
        return self._stream(question, passages, conversation, list(answers))

    async def _stream(
        self,
        question: str,
        passages: Sequence[str],
        conversation: Conversation | None,
        answers: list[str] | None,
    ) -> AsyncIterator[tuple[str, Generation | None]]:
        conv = conversation or Conversation()
        responses: Any = self.handle.options(stream=True).stream.remote(
            question, list(passages), dict(conv.sampling), list(conv.history), answers, **self._member
        )
        t0 = time.perf_counter()
        pieces: list[str] = []
        try:
            async for delta in responses:
                if delta.text:
                    pieces.append(delta.text)
                    yield delta.text, None
                if delta.finished:
                    text = "".join(pieces).strip()
                    done = Generation(
                        text=text,
                        prompt_tokens=delta.prompt_tokens or 0,
                        completion_tokens=delta.completion_tokens,
                        latency_s=time.perf_counter() - t0,
                        finish_reason=delta.finish_reason or "stop",
                    )
                    yield "", done
                    return
        except Exception as e:
            lost = _member_lost(self.name, e)
            if lost is not None:
                raise lost from e
            cause = unwrap(e)
            if cause is e:
                raise
            raise cause from None
        finally:
            responses.cancel()  # no-op once the stream has ended
        raise RuntimeError(f"specialist {self.name}: its stream ended without a final piece")


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
