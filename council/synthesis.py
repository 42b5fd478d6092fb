"""The chairman's synthesis: after the members answered and their agreement is computed, one member writes the
council's final answer from their answers — anonymised (labels, no names) and shuffled — the question and the
passages it has room for.

The council's trust comes from the members: agreement and abstention are computed on their own answers before
the chairman is asked, and a chairman never turns an abstention into an answer. A chairman that fails, times out
or writes nothing hands over to the next fallback; when none is left the council keeps its voted answer and says
why (`synthesis_failed`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from council.agreement import is_unknown
from council.config import ChairmanConfig
from council.errors import ConfigError, QuestionTooLong, incident
from council.prompts import CHAIRMAN_SYSTEM, answer_labels
from council.protocols import Aggregator, Chairman, Specialist
from council.types import Chunk, Conversation, Generation, MemberAnswer, Synthesis, SynthesisDelta

log = logging.getLogger(__name__)

EmitPiece = Callable[[SynthesisDelta], None]


@dataclass(frozen=True)
class Ballot:
    """The members' answers as a chairman sees them: in a shuffled order, under labels A, B, ... only."""

    answers: tuple[str, ...]
    labels: Mapping[str, str]  # label -> member name: for the report, never for the chairman

    @classmethod
    def of(cls, members: Sequence[MemberAnswer], rng: random.Random) -> Ballot:
        order = list(range(len(members)))
        rng.shuffle(order)
        labels = answer_labels(len(order))
        return cls(
            answers=tuple(members[i].answer or "" for i in order),
            labels={label: members[i].name for label, i in zip(labels, order, strict=True)},
        )


async def synthesise(
    chair: ChairmanConfig,
    specialists: Mapping[str, Specialist],
    aggregator: Aggregator,
    *,
    question: str,
    chunks: Sequence[Chunk],
    members: Sequence[MemberAnswer],
    voted_answer: str,
    agreed: bool,
    timeout_s: float,
    budget_tokens: int | None,
    ordering: str,
    conversation: Callable[[str], Conversation | None] = lambda name: None,
    emit: EmitPiece | None = None,
    rng: random.Random | None = None,
) -> tuple[Synthesis | None, str | None]:
    """The synthesis of the first chairman (`chair.member`, then each fallback) that writes one, and None; or None
    and why every one failed. `members`: the answers agreement was computed on; `conversation(name)`: a chat's
    history and decoding for that chairman; `emit`: stream the synthesis's pieces as they come. `agreed`: the
    members agreed on a real answer (a synthesis that says "unknown" then contradicts them and counts as failed)."""
    ballot = Ballot.of(members, rng or random.Random())
    failures: list[str] = []
    for name in [chair.member, *chair.fallback]:
        t0 = time.perf_counter()
        try:
            generation = await _ask_chairman(
                name, specialists.get(name), aggregator, ballot, question, chunks, timeout_s, budget_tokens,
                ordering, conversation(name), emit,
            )  # fmt: skip
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            failures.append(f"{name}: timed out after {timeout_s:g}s")
        except Exception as e:  # a chairman's failure is data, like a member's
            failures.append(f"{name}: {incident(e, f'chairman {name}')}")
        else:
            text = generation.text.strip()
            if text and not (agreed and is_unknown(text)):
                return Synthesis(
                    text=text,
                    chairman=name,
                    latency_s=round(time.perf_counter() - t0, 4),
                    prompt_tokens=generation.prompt_tokens,
                    completion_tokens=generation.completion_tokens,
                    voted_answer=voted_answer,
                    labels=dict(ballot.labels),
                    failures=tuple(failures),
                ), None
            failures.append(f"{name}: wrote nothing" if not text else f"{name}: wrote {text!r} over an agreed answer")
        log.warning("chairman %s", failures[-1])
    return None, "; ".join(failures)


async def _ask_chairman(
    name: str,
    spec: Specialist | None,
    aggregator: Aggregator,
    ballot: Ballot,
    question: str,
    chunks: Sequence[Chunk],
    timeout_s: float,
    budget_tokens: int | None,
    ordering: str,
    conversation: Conversation | None,
    emit: EmitPiece | None,
) -> Generation:
    if not isinstance(spec, Chairman):
        raise ConfigError("this member cannot write a synthesis (it takes plain questions only)")
    # Trimmed with the instruction and the answers counted as part of the question: passages get the room left.
    context = "\n".join([question, CHAIRMAN_SYSTEM, *ballot.answers])
    plans = await aggregator.trim(context, chunks, [name], budget_tokens=budget_tokens, ordering=ordering, orderings=1)
    [(passages, report)] = plans[name]
    if report.budget_tokens < 0:
        raise QuestionTooLong("the members' answers do not fit its context window")
    return await asyncio.wait_for(_generate(spec, question, passages, ballot.answers, conversation, emit), timeout_s)


async def _generate(
    spec: Chairman,
    question: str,
    passages: Sequence[str],
    answers: Sequence[str],
    conversation: Conversation | None,
    emit: EmitPiece | None,
) -> Generation:
    if emit is None:
        return await spec.synthesise(question, passages, answers, conversation)
    pieces = spec.stream_synthesis(question, passages, answers, conversation)
    try:
        async for piece, done in pieces:
            if done is not None:
                return done
            emit(SynthesisDelta(spec.name, piece))
    finally:
        await pieces.aclose()  # type: ignore[attr-defined]
    raise RuntimeError("its stream ended without an answer")
