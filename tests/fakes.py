"""The test doubles every tier shares: no Ray where it is forbidden, a word-counting TokenCounter, a fake ingress."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from council.config import CouncilConfig
from council.pipeline import validate
from council.types import AskRequest, CouncilAnswer, Document, MemberAnswer, MemberDelta, RouteDecision


@pytest.fixture(autouse=True)
def forbid_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Autouse in the Ray-free tiers (import it into their conftest.py): ray.init raises there, the way Ray
    Serve's own unit tests forbid it."""
    import ray

    def _refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("this tier must not start Ray; Ray-backed tests live in tests/serve or tests/jobs")

    monkeypatch.setattr(ray, "init", _refuse)


@dataclass
class WordCounter:
    """TokenCounter test double: one token per whitespace-separated word."""

    context_window: int = 100
    max_new_tokens: int = 10
    prompt: int = 5
    per_passage: int = 2

    def count(self, text: str) -> int:
        return len(text.split())

    def prompt_overhead(self) -> int:
        return self.prompt

    def passage_overhead(self) -> int:
        return self.per_passage


class FakeIngress:
    """`council.serving.http.Ingress` without a council: answers "forty two" (or echoes the question, after the
    council's own validation), or raises `fail`; `guard` makes every call past the HTTP layer a test failure."""

    def __init__(
        self, fail: BaseException | None = None, *, agreement: float = 1.0, echo: bool = False, guard: bool = False
    ) -> None:
        self.config = CouncilConfig.from_dict({"specialists": [{"name": "solo", "model": "m"}]})
        self.fail, self.agreement, self.echo, self.guard = fail, agreement, echo, guard
        self.asked: list[AskRequest] = []  # every request that reached it, in order
        # `deliberate` raises `fail` after its first event when this is set (an error inside a begun stream).
        self.fail_midway = False

    def _reached(self) -> None:
        if self.guard:
            raise AssertionError("reached the ingress without a valid token")

    async def answer(self, request: AskRequest) -> CouncilAnswer:
        self._reached()
        self.asked.append(request)
        if self.fail is not None:
            raise self.fail
        if self.echo:
            request = validate(request, self.config)
            member = MemberAnswer("solo", 0.5, answer=request.question)
            return CouncilAnswer(request.question, request.question, 1.0, 0.0, False, False, (member,))
        member = MemberAnswer("solo", 0.5, answer="forty two", prompt_tokens=3, completion_tokens=2)
        return CouncilAnswer(request.question, "forty two", self.agreement, 0.0, False, False, (member,))

    async def deliberate(self, request: AskRequest, *, tokens: bool) -> AsyncIterator[Any]:
        """The answer's events as Council.deliberate yields them: with `tokens`, the member's raw text in
        pieces (" forty", " two", " ", as an engine streams it, spaces and all)."""
        if self.fail is not None and not self.fail_midway:
            self._reached()
            raise self.fail
        yield RouteDecision({"solo": 0.5}, ("solo",))
        if self.fail_midway and self.fail is not None:
            raise self.fail
        answer = await self.answer(request)
        if tokens:
            for piece in (" forty", " two", " "):
                yield MemberDelta("solo", piece)
        yield answer.members[0]
        yield answer

    async def add_documents(self, tenant: str, documents: Sequence[Document]) -> dict[str, Any]:
        self._reached()
        return {"tenant": tenant, "documents": len(documents), "added": 0, "skipped": 0, "chunks": 0}

    def models(self) -> list[str]:
        self._reached()
        return ["council", "solo"]

    async def status(self, grant: Any) -> dict[str, Any]:
        self._reached()
        return {"app": "fake", "status": "RUNNING", "specialists": ["solo"], "deployments": {}, "chunks": 0}

    async def tenants(self) -> list[str]:
        self._reached()
        return ["acme", "public"]


async def until(condition: Callable[[], bool], what: str, limit_s: float = 30.0) -> None:
    """Wait (polling the event loop) until `condition()` holds; fail naming `what` after `limit_s`."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(poll(), limit_s)
    except TimeoutError:
        pytest.fail(f"never happened: {what}")
