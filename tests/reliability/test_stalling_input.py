"""No input stalls a replica (issue 16, finding 3): documents are capped in total, retrieval has a deadline, and a
document of 20,000 dots is chunked while other questions go on being answered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from council.errors import InvalidRequest, RetrievalTimeout
from council.retrieval import chunk_text
from council.types import AskRequest, Chunk, Document
from council.validation import MAX_DOCUMENT_CHARS, MAX_DOCUMENTS_TOTAL_CHARS, validate
from tests.unit.test_pipeline import ScriptedSpecialist, make_config, make_council


def test_documents_over_the_total_cap_are_refused_naming_the_limit() -> None:
    config = make_config()
    full = Document("x" * MAX_DOCUMENT_CHARS)
    fits = MAX_DOCUMENTS_TOTAL_CHARS // MAX_DOCUMENT_CHARS
    validate(AskRequest("q?", documents=(full,) * fits), config)
    with pytest.raises(InvalidRequest, match=f"the limit is {MAX_DOCUMENTS_TOTAL_CHARS}") as e:
        validate(AskRequest("q?", documents=(full,) * (fits + 1)), config)
    assert e.value.status == 400 and f"{(fits + 1) * MAX_DOCUMENT_CHARS} characters" in e.value.message


class HangingRetriever:
    """A document store that never answers (a wedged replica, a lost Chroma server)."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    async def retrieve(self, question: str, **options: object) -> list[Chunk]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        raise AssertionError("unreachable")


async def test_a_hung_retrieval_fails_the_request_in_time_naming_retrieval() -> None:
    specs = [ScriptedSpecialist(f"m{i}") for i in range(3)]
    config = make_config()
    config = config.model_copy(update={"retrieval": config.retrieval.model_copy(update={"timeout_s": 0.3})})
    council = make_council(specs, config)
    council.retriever = hung = HangingRetriever()
    t0 = time.perf_counter()
    with pytest.raises(RetrievalTimeout, match=r"retrieval did not answer within 0\.3s") as e:
        await council.ask(AskRequest("what does the memo say?"))
    assert time.perf_counter() - t0 < 10  # 0.3 s and the question's embedding, never the member timeout
    assert e.value.status == 504 and e.value.type == "retrieval_timeout"
    assert hung.cancelled.is_set()  # the store's call is given up, not left running
    assert not any(s.calls for s in specs)


class ChunkingRetriever:
    """Chunks ephemeral documents in a worker thread with the store's own chunker, as ChromaRetriever does."""

    async def retrieve(self, question: str, *, documents: Sequence[Document] = (), top_n: int, **_: object):
        def chunks() -> list[Chunk]:
            texts = [t for d in documents for t in chunk_text(d.text, 600)]
            return [Chunk(f"eph{i}", t, ephemeral=True, score=1.0) for i, t in enumerate(texts)][:top_n]

        return await asyncio.to_thread(chunks)


async def test_a_document_of_dots_does_not_stall_other_questions() -> None:
    """Before the fix, splitting 20,000 dots held the GIL for 10 s and more: every other question on the
    replica waited. Now the three documents of dots and a plain question all come back within seconds."""
    specs = [ScriptedSpecialist(f"m{i}", "Paris.") for i in range(3)]
    council = make_council(specs, make_config())
    council.retriever = ChunkingRetriever()
    await council.ask(AskRequest("warm up: capital of france?"))
    dots = tuple(Document("." * MAX_DOCUMENT_CHARS) for _ in range(3))
    t0 = time.perf_counter()
    heavy = asyncio.create_task(council.ask(AskRequest("what do the dots say?", documents=dots)))
    await asyncio.sleep(0)
    plain = await council.ask(AskRequest("capital of france?"))
    plain_s = time.perf_counter() - t0
    answer = await heavy
    assert plain.answer.lower().startswith("paris") and answer.sources
    assert plain_s < 10 and time.perf_counter() - t0 < 10, (plain_s, time.perf_counter() - t0)
