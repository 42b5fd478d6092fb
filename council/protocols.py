"""The interfaces the pipeline is written against; backends and Serve handles implement them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from council.types import Chunk, Conversation, Document, Generation, MemberAnswer

if TYPE_CHECKING:
    import numpy as np

    from council.agreement import Verdict
    from council.types import TrimReport


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised vectors (rows of a float32 array)."""

    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class TokenCounter(Protocol):
    """One specialist's own tokenizer view: how many tokens a text costs and how much room it has."""

    context_window: int
    max_new_tokens: int

    def count(self, text: str) -> int: ...

    def prompt_overhead(self) -> int:
        """Tokens the prompt costs with an empty question and no passages."""
        ...

    def passage_overhead(self) -> int:
        """Tokens the template adds around each passage."""
        ...


@runtime_checkable
class Specialist(Protocol):
    """A member of the council: answers a question from the given passages (already trimmed)."""

    name: str

    async def generate(self, question: str, passages: Sequence[str]) -> Generation: ...


@runtime_checkable
class ChatSpecialist(Specialist, Protocol):
    """A member that also takes a chat's history and decoding settings, and streams its answer (a Serve
    deployment's handle, `HandleSpecialist`)."""

    async def generate(  # type: ignore[override]
        self, question: str, passages: Sequence[str], conversation: Conversation | None = None
    ) -> Generation: ...

    def stream(
        self, question: str, passages: Sequence[str], conversation: Conversation | None = None
    ) -> AsyncIterator[tuple[str, Generation | None]]:
        """("piece", None) per piece of the answer as it is produced, then ("", the whole Generation)."""
        ...


@runtime_checkable
class Chairman(Protocol):
    """A member that can write the council's synthesis (a Serve deployment's handle, `HandleSpecialist`): the
    question, its passages and the members' answers, anonymised (no names) and in the order to show them."""

    name: str

    async def synthesise(
        self,
        question: str,
        passages: Sequence[str],
        answers: Sequence[str],
        conversation: Conversation | None = None,
    ) -> Generation: ...

    def stream_synthesis(
        self,
        question: str,
        passages: Sequence[str],
        answers: Sequence[str],
        conversation: Conversation | None = None,
    ) -> AsyncIterator[tuple[str, Generation | None]]:
        """("piece", None) per piece of the synthesis as it is produced, then ("", the whole Generation)."""
        ...


@runtime_checkable
class Retriever(Protocol):
    """Finds the caller's tenant's chunks for a question; never another tenant's."""

    async def retrieve(
        self,
        question: str,
        *,
        tenant: str,
        top_n: int,
        query_embedding: Sequence[float] | None = None,
        documents: Sequence[Document] = (),
    ) -> list[Chunk]: ...


@runtime_checkable
class Aggregator(Protocol):
    """Trims context per member and turns member answers into the council's verdict."""

    async def trim(
        self,
        question: str,
        chunks: Sequence[Chunk],
        members: Sequence[str],
        *,
        budget_tokens: int | None,
        ordering: str,
        orderings: int,
    ) -> dict[str, list[tuple[list[str], TrimReport]]]: ...

    async def aggregate(self, members: Sequence[MemberAnswer], embeddings: np.ndarray | None = None) -> Verdict:
        """The verdict over the `.ok` members; `embeddings` (one row per `.ok` answer) spares embedding them."""
        ...

    async def vote(self, answers: Sequence[str], embeddings: np.ndarray | None = None) -> tuple[int, float]:
        """One member's answers across orderings -> (index of the winning answer, consistency)."""
        ...
