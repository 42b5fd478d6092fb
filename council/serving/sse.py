"""Server-sent events for the HTTP layer: a deliberation opened before its response begins, its events as
`data:` lines, and a member's raw text passed on as its stripped answer."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from council.errors import CouncilError
from council.pipeline import Event

Events = AsyncGenerator[Event, None]


def finite(value: Any) -> Any:
    """JSON has no NaN/Infinity: they become null rather than a 500 from the encoder."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


async def opened(events: Events) -> Events:
    """The deliberation, started: its first event (the route) is awaited here, before the response begins, so
    that a bad request is still a 4xx/503 with its status rather than an error inside a 200 stream."""
    try:
        first = await anext(events)
    except StopAsyncIteration:  # pragma: no cover - a deliberation always ends with its answer
        raise CouncilError("the deliberation ended before it began") from None

    async def resumed() -> Events:
        try:
            yield first
            async for event in events:
                yield event
        finally:
            await events.aclose()  # the client went away: the members' requests are cancelled

    return resumed()


def sse(lines: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def encoded() -> AsyncIterator[str]:
        async for body in lines:
            yield f"data: {json.dumps(finite(body))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(encoded(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


class Trimmed:
    """Pieces of a member's raw text, passed on so that together they are its stripped answer: leading
    whitespace dropped, trailing whitespace held back until more text follows it."""

    def __init__(self) -> None:
        self.sent = ""
        self._held = ""

    def feed(self, piece: str) -> str:
        text = self._held + piece
        if not self.sent:
            text = text.lstrip()
        body = text.rstrip()
        self._held = text[len(body) :]
        self.sent += body
        return body


