"""Retrieval, pure: tenant names, chunking, content addresses, lexical overlap, score fusion, relevance filters.

The store (`backends/chroma.py`) finds candidates; what a chunk is and how candidates are ranked is decided here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import replace

from council.budget import split_sentences
from council.config import NAME_RE
from council.errors import InvalidRequest
from council.types import Chunk

PUBLIC = "public"  # always known: a fresh store answers public questions with no passages, not an error
_STOPWORDS = frozenset(
    """a an and are as at be by did do does for from had has have he her his how i in is it its of on or our
    she that the their them they this to was were what when where which who whom whose why will with you your
    about after before into over under than then there these those can could would should may might""".split()
)
_WORD = re.compile(r"\w+")


def is_tenant_name(tenant: object) -> bool:
    """True for a valid tenant name: a letter or digit, then up to 63 of letters, digits, `_.-`.

    >>> is_tenant_name("acme-eu.1"), is_tenant_name("../etc"), is_tenant_name(3)
    (True, False, False)
    """
    return isinstance(tenant, str) and NAME_RE.match(tenant) is not None


def check_tenant(tenant: str) -> str:
    """`tenant` if it is a valid tenant name, else InvalidRequest (the one rule every caller applies)."""
    if not is_tenant_name(tenant):
        raise InvalidRequest(f"invalid tenant name {tenant!r}: must match {NAME_RE.pattern}")
    return tenant


def chunk_id(tenant: str, text: str) -> str:
    """Content address of a chunk within a tenant: re-ingesting the same text adds nothing.

    >>> chunk_id("acme", "x") == chunk_id("acme", "x") != chunk_id("beta", "x")
    True
    """
    return hashlib.sha256(f"{tenant}\0{text}".encode()).hexdigest()


def chunk_text(text: str, max_chars: int, overlap_sentences: int = 0) -> list[str]:
    """Pack whole sentences into chunks of at most `max_chars`, repeating `overlap_sentences` between them.

    >>> chunk_text("One. Two. Three.", 10)
    ['One. Two.', 'Three.']
    >>> chunk_text("One. Two. Three.", 14, overlap_sentences=1)
    ['One. Two.', 'Two. Three.']
    >>> chunk_text("abcdefghij klm", 4)  # a sentence longer than a chunk is split at spaces, a word cut hard
    ['abcd', 'efgh', 'ij', 'klm']
    """
    sentences = [piece for s in split_sentences(text) for piece in _split_long(s, max_chars)]
    chunks: list[str] = []
    current: list[str] = []
    for sentence in sentences:
        if current and _joined_len(current + [sentence]) > max_chars:
            chunks.append(" ".join(current))
            current = current[-overlap_sentences:] if overlap_sentences else []
            while current and _joined_len(current + [sentence]) > max_chars:
                current.pop(0)
        current.append(sentence)
    if current:
        chunks.append(" ".join(current))
    return chunks


def _joined_len(parts: list[str]) -> int:
    return sum(len(p) for p in parts) + len(parts) - 1


def _split_long(sentence: str, max_chars: int) -> list[str]:
    """A sentence longer than `max_chars` split at spaces (a single overlong word is cut hard)."""
    pieces: list[str] = []
    for word in sentence.split():
        while len(word) > max_chars:
            pieces.append(word[:max_chars])
            word = word[max_chars:]
        if pieces and len(pieces[-1]) + 1 + len(word) <= max_chars:
            pieces[-1] += " " + word
        elif word:
            pieces.append(word)
    return pieces


def content_words(text: str) -> list[str]:
    """The distinct non-stopword words of `text`, as written, in order.

    >>> content_words("What does Zorvex treat, and what does zorvex cost?")
    ['Zorvex', 'treat', 'cost']
    """
    seen: dict[str, str] = {}
    for word in _WORD.findall(text):
        if word.lower() not in _STOPWORDS:
            seen.setdefault(word.lower(), word)
    return list(seen.values())


_SUFFIXES = ("ies", "s", "ed", "ing")


def stem(word: str) -> str:
    """`word` lower-case without one inflectional suffix, so a question's "treat" meets a passage's "treats".

    A crude suffix strip (no dictionary: the stores hold made-up names too), applied alike to both sides;
    a stem keeps at least 3 letters, and a word ending in "ss" keeps it.

    >>> [stem(w) for w in ["Treats", "treated", "treat", "companies", "doses", "dose", "bus", "class"]]
    ['treat', 'treat', 'treat', 'company', 'dose', 'dose', 'bus', 'class']
    """
    w = word.lower()
    for suffix in _SUFFIXES:
        if w.endswith(suffix) and len(w) - len(suffix) >= 3 and not (suffix == "s" and w.endswith("ss")):
            return w[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return w


def lexical_score(words: Sequence[str], text: str) -> float:
    """Fraction of `words` whose stem (`stem`) is the stem of a word in `text`.

    >>> lexical_score(["Zorvex", "migraine"], "zorvex treats headaches")
    0.5
    >>> lexical_score(["Zorvex", "treat"], "zorvex treats headaches")
    1.0
    """
    if not words:
        return 0.0
    present = {stem(w) for w in _WORD.findall(text)}
    return sum(stem(w) in present for w in words) / len(words)


def probe_words(words: Sequence[str], n: int) -> list[str]:
    """The spellings to search for verbatim: the `n` longest words of 3+ letters, as written, lower-case and
    capitalised (a store's substring search is case-sensitive).

    >>> probe_words(["Zorvex", "of", "treat"], 1)
    ['Zorvex', 'zorvex']
    """
    longest = sorted((w for w in words if len(w) >= 3), key=len, reverse=True)[:n]
    return sorted({v for w in longest for v in (w, w.lower(), w.capitalize())})


def fuse(candidates: Sequence[Chunk], words: Sequence[str], lexical_weight: float, top_n: int) -> list[Chunk]:
    """The `top_n` best candidates by (1-w)*dense score + w*lexical overlap, best first (ties by id).

    >>> a, b = Chunk("a", "zorvex treats migraine", score=0.5), Chunk("b", "kavo is a fine", score=0.6)
    >>> [(c.id, c.score) for c in fuse([a, b], ["zorvex"], 0.5, 2)]
    [('a', 0.75), ('b', 0.3)]
    """
    w = lexical_weight
    fused = [replace(c, score=(1 - w) * c.score + w * lexical_score(words, c.text)) for c in candidates]
    fused.sort(key=lambda c: (-c.score, c.id))
    return fused[:top_n]


def relevant(ranked: Sequence[Chunk], *, min_score: float | None, score_margin: float | None) -> list[Chunk]:
    """The relevance filters over a best-first ranking: chunks under `min_score` go, then with
    `score_margin` only those within that margin of the best stay (so fewer, even none, may remain).

    >>> ranked = [Chunk("a", "", score=0.9), Chunk("b", "", score=0.7), Chunk("c", "", score=0.3)]
    >>> [c.id for c in relevant(ranked, min_score=0.5, score_margin=None)]
    ['a', 'b']
    >>> [c.id for c in relevant(ranked, min_score=None, score_margin=0.1)]
    ['a']
    """
    kept = list(ranked) if min_score is None else [c for c in ranked if c.score >= min_score]
    if score_margin is not None and kept:
        kept = [c for c in kept if c.score >= kept[0].score - score_margin]
    return kept
