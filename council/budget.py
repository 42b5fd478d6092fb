"""Context budgets, pure: each member's token budget, sentence-aware trimming and passage orderings."""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Sequence
from dataclasses import replace

from council.errors import InvalidRequest
from council.protocols import TokenCounter
from council.types import ORDERINGS, Chunk, TrimReport

# A sentence ends after . ! ? or … (optionally followed by closing quotes/brackets) when whitespace
# follows, or at a blank line (paragraph break, for headings and list items without punctuation).
# Linear time: a run of punctuation is tried once, from its first character (the lookbehind refuses the
# rest of the run at once), and possessive quantifiers never give characters back. Without them a run of
# n dots with no whitespace after it cost n tries of up to n characters (20,000 dots: over 10 s).
_SENTENCE_END = re.compile(r"""(?:(?<![.!?…])[.!?…]++["'”’)\]]*+(?=\s)|\n[ \t]*+(?=\n))""")

# Random shuffles tried when looking for distinct orderings; bounds the search when ids repeat.
_MAX_SHUFFLES = 200


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every sentence in `text`, whitespace around sentences excluded."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        spans.append((start, m.end()))
        start = m.end()
    spans.append((start, len(text)))
    out = []
    for s, e in spans:
        piece = text[s:e]
        stripped = piece.strip()
        if stripped:
            lead = len(piece) - len(piece.lstrip())
            out.append((s + lead, s + lead + len(stripped)))
    return out


def split_sentences(text: str) -> list[str]:
    """Split text into sentences with a small regex; no text is lost except whitespace between them.

    Boundaries: sentence punctuation (. ! ? …, plus closing quotes/brackets) followed by whitespace,
    and blank lines. Decimals like 3.14 stay whole; abbreviations like 'e.g.' may split (harmless for
    packing). Joining the sentences with the original whitespace gives back `text`.
    """
    return [text[s:e] for s, e in _sentence_spans(text)]


def member_budget(counter: TokenCounter, question: str, request_budget: int | None) -> int:
    """Tokens left for passages in one member's prompt.

    That is the window minus the empty prompt, the question and the room kept for the answer,
    capped by the request's budget when given. The result may be zero or negative when the question
    alone does not fit: this function does not raise; the caller decides (e.g. QuestionTooLong).
    """
    room = counter.context_window - counter.prompt_overhead() - counter.count(question) - counter.max_new_tokens
    return room if request_budget is None else min(request_budget, room)


def _order_indices(n: int, ordering: str, seed: int) -> list[int]:
    """Positions 0..n-1 (0 = most relevant) arranged by the named ordering."""
    if ordering == "relevance":
        return list(range(n))
    if ordering == "reverse":
        return list(range(n - 1, -1, -1))
    if ordering == "edges":
        # Models read the start and end of a long context best ("lost in the middle"), so the best
        # passages go to both ends: 1st, 3rd, 5th... at the front, ...6th, 4th, 2nd at the back.
        return list(range(0, n, 2)) + list(range(1, n, 2))[::-1]
    if ordering == "random":
        idx = list(range(n))
        random.Random(seed).shuffle(idx)
        return idx
    raise InvalidRequest(f"unknown ordering {ordering!r}; known: {list(ORDERINGS)}")


def order(chunks: Sequence[Chunk], ordering: str, *, seed: int = 0) -> list[Chunk]:
    """Arrange relevance-sorted chunks (best first) for the prompt.

    "relevance": as given; "reverse": best last; "edges": best at both ends; "random": a shuffle
    seeded by `seed`. An unknown ordering is an InvalidRequest listing the known ones.
    """
    return [chunks[i] for i in _order_indices(len(chunks), ordering, seed)]


def labelled_orderings(
    chunks: Sequence[Chunk], n: int, *, base: str = "relevance", seed: int = 0
) -> list[tuple[str, list[Chunk]]]:
    """Up to `n` distinct arrangements of `chunks`, each with the ordering name that produced it.

    The first is `order(chunks, base, seed=seed)`; then the other named orderings (reverse, edges,
    relevance), then seeded shuffles, all labelled "random". Fewer than `n` come back when fewer
    distinct arrangements exist (one chunk, or chunks with the same text, have exactly one).
    Deterministic for a given seed.
    """
    if n < 1:
        raise InvalidRequest(f"orderings={n} is out of range: must be at least 1")
    m = len(chunks)
    out: list[tuple[str, list[Chunk]]] = []
    seen: set[tuple[str, ...]] = set()

    def offer(label: str, idx: Sequence[int]) -> None:
        arranged = [chunks[i] for i in idx]
        # Distinct as the model sees them: swapping two chunks with the same text changes nothing.
        key = tuple(c.text for c in arranged)
        if len(out) < n and key not in seen:
            seen.add(key)
            out.append((label, arranged))

    offer(base, _order_indices(m, base, seed))
    for name in ("reverse", "edges", "relevance"):
        offer(name, _order_indices(m, name, seed))
    for i in range(1, _MAX_SHUFFLES + 1):
        if len(out) >= min(n, math.factorial(min(m, 12))):
            break
        offer("random", _order_indices(m, "random", seed + i))
    # Shuffles rarely miss, but to be sure of finding every arrangement when few exist, list them
    # in order; with unique ids this skips only those already taken, and the bound covers repeats.
    for perm in itertools.islice(itertools.permutations(range(m)), _MAX_SHUFFLES):
        if len(out) >= n:
            break
        offer("random", perm)
    return out


def _cost(counter: TokenCounter, text: str) -> int:
    return counter.count(text) + counter.passage_overhead()


def _cut(chunk: Chunk, room: int, counter: TokenCounter) -> Chunk | None:
    """The chunk shortened to its longest prefix of whole sentences that fits `room`, or None."""
    ends = [e for _, e in _sentence_spans(chunk.text)]
    # Binary search on the number of sentences: token counts grow with the prefix, and every
    # candidate is counted for real, so the result fits even if a tokenizer is not quite monotone.
    # The whole-sentences prefix may still fit where the text did not: it drops trailing whitespace.
    lo, hi, best = 1, len(ends), 0
    while lo <= hi:
        mid = (lo + hi) // 2
        if _cost(counter, chunk.text[: ends[mid - 1]]) <= room:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return replace(chunk, text=chunk.text[: ends[best - 1]]) if best else None


def select(
    chunks: Sequence[Chunk], budget: int, counter: TokenCounter, *, member: str
) -> tuple[list[Chunk], TrimReport]:
    """Choose what fits the budget, in relevance order (the input order, best first).

    Each chunk costs `count(text) + passage_overhead()`. Walking best first: a chunk that fits whole
    is kept; one that does not is cut to its longest prefix of whole sentences that fits (a new
    Chunk), or dropped if not even its first sentence fits; then the walk goes on, so a smaller
    later chunk can still use the room left (a budget is better spent than left empty).
    The report's ordering is "relevance"; `trim` sets the final one; its `trimmed_tokens` counts the
    text tokens left out (cut sentences and dropped chunks).
    """
    kept: list[Chunk] = []
    whole: list[str] = []
    cut: list[str] = []
    dropped: list[str] = []
    used = trimmed = 0
    for chunk in chunks:
        room = budget - used
        cost = _cost(counter, chunk.text)
        if room > 0 and cost <= room:
            kept.append(chunk)
            whole.append(chunk.id)
            used += cost
            continue
        short = _cut(chunk, room, counter) if room > 0 else None
        if short is None:
            dropped.append(chunk.id)
            trimmed += cost - counter.passage_overhead()
            continue
        kept.append(short)
        cut.append(chunk.id)
        short_cost = _cost(counter, short.text)
        used += short_cost
        trimmed += cost - short_cost
    report = TrimReport(member, budget, used, tuple(whole), tuple(cut), tuple(dropped), "relevance", trimmed)
    return kept, report
