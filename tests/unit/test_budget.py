"""Budgets: sentence splitting, member budgets, orderings, trimming, and the aggregator's trim step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from council.budget import labelled_orderings, member_budget, order, select, split_sentences
from council.config import AggregatorConfig
from council.errors import InvalidRequest, UnknownSpecialist
from council.local_aggregator import LocalAggregator
from council.protocols import Embedder, TokenCounter
from council.types import ORDERINGS, Chunk, TrimReport
from tests.fakes import WordCounter


class NoEmbedder:
    """The trim step needs no embeddings; this one fails loudly if it is called."""

    dim = 4

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        raise AssertionError("trim must not embed")


def orderings(chunks: Sequence[Chunk], n: int, *, base: str = "relevance", seed: int = 0) -> list[list[Chunk]]:
    """The arrangements alone, as the aggregator uses them."""
    return [arranged for _, arranged in labelled_orderings(chunks, n, base=base, seed=seed)]


def trim(
    chunks: Sequence[Chunk],
    budget: int,
    counter: WordCounter,
    *,
    member: str,
    ordering: str = "relevance",
    seed: int = 0,
) -> tuple[list[Chunk], TrimReport]:
    """Select, then arrange: what the aggregator does for one member and one ordering."""
    order([], ordering)  # an unknown ordering fails before any work, as in the aggregator
    kept, report = select(chunks, budget, counter, member=member)
    return order(kept, ordering, seed=seed), replace(report, ordering=ordering)


def cost(c: WordCounter, text: str) -> int:
    return c.count(text) + c.passage_overhead()


def chunks_of(*texts: str) -> list[Chunk]:
    return [Chunk(id=f"c{i}", text=t, score=1.0 - i / 10) for i, t in enumerate(texts)]


def test_word_counter_implements_protocol() -> None:
    assert isinstance(WordCounter(), TokenCounter)
    assert isinstance(NoEmbedder(), Embedder)


# --- split_sentences -------------------------------------------------------------------------


def test_split_sentences_examples() -> None:
    text = 'Pi is 3.14 here. Really?! "Yes." (Quite.) e.g. this\n\nHeading\nbody line '
    assert split_sentences(text) == [
        "Pi is 3.14 here.",
        "Really?!",
        '"Yes."',
        "(Quite.)",
        "e.g.",
        "this",
        "Heading\nbody line",
    ]


def test_split_sentences_spaced_punctuation_like_the_world_data() -> None:
    assert split_sentences("the capital of zorbia is quux . it is cold !") == [
        "the capital of zorbia is quux .",
        "it is cold !",
    ]


@pytest.mark.parametrize("text", ["", "   ", "\n\n"])
def test_split_sentences_blank(text: str) -> None:
    assert split_sentences(text) == []


def test_split_sentences_no_terminator_is_one_sentence() -> None:
    assert split_sentences("  no full stop at all  ") == ["no full stop at all"]


@given(st.text(alphabet=st.sampled_from(list("ab .!?\n\t\"')…3")), max_size=60))
def test_split_sentences_loses_only_whitespace(text: str) -> None:
    sents = split_sentences(text)
    assert all(s and s == s.strip() for s in sents)
    assert "".join(text.split()) == "".join("".join(s.split()) for s in sents)
    # Sentences appear in order, without overlap.
    pos = 0
    for s in sents:
        found = text.find(s, pos)
        assert found >= 0 and text[pos:found].strip() == ""
        pos = found + len(s)
    assert text[pos:].strip() == ""


# --- member_budget ---------------------------------------------------------------------------


def test_member_budget_window_arithmetic() -> None:
    c = WordCounter(context_window=100, max_new_tokens=10, prompt=5)
    assert member_budget(c, "one two three", None) == 100 - 5 - 3 - 10
    assert member_budget(c, "one two three", 50) == 50
    assert member_budget(c, "one two three", 500) == 82


def test_member_budget_may_be_negative_when_the_question_does_not_fit() -> None:
    c = WordCounter(context_window=20, max_new_tokens=10, prompt=5)
    assert member_budget(c, " ".join(["w"] * 10), None) == -5
    assert member_budget(c, " ".join(["w"] * 10), 100) == -5


# --- order / orderings -----------------------------------------------------------------------

FIVE = chunks_of("a", "b", "c", "d", "e")


def ids(chunks: Sequence[Chunk]) -> list[str]:
    return [c.id for c in chunks]


def test_order_named() -> None:
    assert ids(order(FIVE, "relevance")) == ["c0", "c1", "c2", "c3", "c4"]
    assert ids(order(FIVE, "reverse")) == ["c4", "c3", "c2", "c1", "c0"]
    # Best at both ends: 1st, 3rd, 5th at the front; 4th, 2nd at the back.
    assert ids(order(FIVE, "edges")) == ["c0", "c2", "c4", "c3", "c1"]
    assert ids(order(FIVE[:4], "edges")) == ["c0", "c2", "c3", "c1"]


def test_order_random_is_a_seeded_permutation() -> None:
    a = order(FIVE, "random", seed=3)
    assert a == order(FIVE, "random", seed=3)
    assert sorted(ids(a)) == ids(FIVE)
    assert len({tuple(ids(order(FIVE, "random", seed=s))) for s in range(10)}) > 1


@pytest.mark.parametrize("ordering", ORDERINGS)
def test_order_empty_and_single(ordering: str) -> None:
    assert order([], ordering) == []
    assert order(FIVE[:1], ordering) == FIVE[:1]


def test_order_unknown_names_it_and_lists_known() -> None:
    with pytest.raises(InvalidRequest, match=r"'middle'.*relevance.*edges.*reverse.*random") as e:
        order(FIVE, "middle")
    assert e.value.status == 400


def test_orderings_first_is_base_and_all_distinct() -> None:
    perms = orderings(FIVE, 4, base="edges")
    assert perms[0] == order(FIVE, "edges")
    assert len({tuple(ids(p)) for p in perms}) == 4
    assert all(sorted(ids(p)) == ids(FIVE) for p in perms)


def test_orderings_deterministic_per_seed() -> None:
    assert orderings(FIVE, 8, base="random", seed=1) == orderings(FIVE, 8, base="random", seed=1)


@pytest.mark.parametrize(("m", "expected"), [(0, 1), (1, 1), (2, 2), (3, 6), (4, 8)])
def test_orderings_returns_all_distinct_when_fewer_exist(m: int, expected: int) -> None:
    perms = orderings(FIVE[:m], 8)
    assert len(perms) == expected
    assert len({tuple(ids(p)) for p in perms}) == expected


def test_orderings_count_arrangements_by_text() -> None:
    # Two chunks with the same text: swapping them would send the model the same prompt.
    twins = [Chunk("a", "same."), Chunk("b", "same."), Chunk("c", "other.")]
    assert [[c.text for c in p] for p in orderings(twins, 8)] == [
        ["same.", "same.", "other."],
        ["other.", "same.", "same."],
        ["same.", "other.", "same."],
    ]


def test_labelled_orderings_labels() -> None:
    labels = [label for label, _ in labelled_orderings(FIVE, 5, base="relevance")]
    assert labels == ["relevance", "reverse", "edges", "random", "random"]


def test_orderings_refuses_n_below_one() -> None:
    with pytest.raises(InvalidRequest, match="orderings=0"):
        orderings(FIVE, 0)


@given(st.integers(0, 7), st.integers(1, 8), st.sampled_from(ORDERINGS), st.integers(0, 1000))
def test_orderings_properties(m: int, n: int, base: str, seed: int) -> None:
    chunks = chunks_of(*"abcdefg"[:m])
    perms = orderings(chunks, n, base=base, seed=seed)
    assert len(perms) == min(n, math.factorial(m))
    assert perms[0] == order(chunks, base, seed=seed)
    assert len({tuple(ids(p)) for p in perms}) == len(perms)
    assert all(sorted(ids(p)) == ids(chunks) for p in perms)


# --- trim ------------------------------------------------------------------------------------


def test_trim_keeps_what_fits_cuts_at_sentence_and_keeps_walking() -> None:
    c = WordCounter()
    chunks = chunks_of(
        "one two three.",  # 3 + 2 = 5: whole
        "a b c. d e f. g h i j k l m n o p q r s t.",  # 22 + 2: cut to "a b c. d e f." (6 + 2 = 8)
        "x y z w v u t s r q p o n.",  # one sentence of 13 + 2: dropped
        "tiny.",  # 1 + 2 = 3: still fits after the cut
    )
    kept, report = trim(chunks, 16, c, member="m")
    assert [k.text for k in kept] == ["one two three.", "a b c. d e f.", "tiny."]
    assert report.kept == ("c0", "c3") and report.cut == ("c1",) and report.dropped == ("c2",)
    assert report.used_tokens == 5 + 8 + 3 == sum(cost(c, k.text) for k in kept)
    assert (report.member, report.budget_tokens, report.ordering) == ("m", 16, "relevance")
    assert kept[1].id == "c1" and kept[1].source == chunks[1].source  # a new Chunk, same identity fields
    assert chunks[1].text.startswith("a b c. d e f. g")  # the input is not mutated


def test_trim_arranges_after_selecting() -> None:
    c = WordCounter()
    kept, report = trim(chunks_of("a.", "b.", "c.", "d."), 9, c, member="m", ordering="reverse")
    # 3 tokens each: three fit; the arrangement applies to those three only.
    assert ids(kept) == ["c2", "c1", "c0"]
    assert report.ordering == "reverse" and report.dropped == ("c3",)


@pytest.mark.parametrize("budget", [0, -7])
def test_trim_nonpositive_budget_keeps_nothing(budget: int) -> None:
    kept, report = trim(chunks_of("a.", "b."), budget, WordCounter(), member="m")
    assert kept == [] and report.used_tokens == 0
    assert report.dropped == ("c0", "c1") and report.kept == report.cut == ()


def test_trim_empty_input() -> None:
    kept, report = trim([], 50, WordCounter(), member="m", ordering="edges")
    assert kept == [] and report.used_tokens == 0 and report.ordering == "edges"


def test_trim_one_chunk_exact_fit_and_one_over() -> None:
    c = WordCounter()
    one = chunks_of("w w w.")
    assert trim(one, 5, c, member="m")[1].kept == ("c0",)
    assert trim(one, 4, c, member="m")[1].dropped == ("c0",)


def test_trim_unknown_ordering() -> None:
    with pytest.raises(InvalidRequest, match="'sideways'"):
        trim(chunks_of("a."), 10, WordCounter(), member="m", ordering="sideways")


@st.composite
def sentence_texts(draw: st.DrawFn) -> str:
    sentences = draw(
        st.lists(
            st.lists(st.sampled_from(["w", "xy", "3.5"]), min_size=1, max_size=6).map(lambda ws: " ".join(ws) + "."),
            min_size=0,
            max_size=5,
        )
    )
    seps = draw(st.lists(st.sampled_from([" ", "  ", "\n", "\n\n"]), min_size=len(sentences), max_size=len(sentences)))
    return "".join(s + sep for s, sep in zip(sentences, seps, strict=True))


@settings(max_examples=150)
@given(
    st.lists(sentence_texts(), max_size=6),
    st.integers(-3, 60),
    st.integers(0, 3),
    st.sampled_from(ORDERINGS),
    st.integers(0, 50),
)
def test_trim_properties(texts: list[str], budget: int, overhead: int, ordering: str, seed: int) -> None:
    c = WordCounter(per_passage=overhead)
    chunks = chunks_of(*texts)
    by_id = {ch.id: ch for ch in chunks}
    kept, report = trim(chunks, budget, c, member="m", ordering=ordering, seed=seed)

    # Never over budget, and the report tells the truth about what was used.
    used = sum(cost(c, k.text) for k in kept)
    assert used == report.used_tokens and (used <= budget or not kept)
    assert used <= max(budget, 0)
    # Every input id is accounted for exactly once; what is returned is exactly kept + cut.
    accounted = [*report.kept, *report.cut, *report.dropped]
    assert sorted(accounted) == sorted(by_id)
    assert sorted(ids(kept)) == sorted([*report.kept, *report.cut])
    # The arrangement is `order` applied to the selection in relevance order.
    relevance = sorted(kept, key=lambda k: list(by_id).index(k.id))
    assert ids(kept) == ids(order(relevance, ordering, seed=seed))
    # The best chunk is kept whole whenever it fits on its own.
    if chunks and budget > 0 and cost(c, chunks[0].text) <= budget:
        assert report.kept[:1] == ("c0",) and chunks[0] in kept
    for k in kept:
        original = by_id[k.id].text
        if k.id in report.kept:
            assert k.text == original
        else:
            # A cut is a strict prefix made of the original's first whole sentences.
            assert original.startswith(k.text) and len(k.text) < len(original)
            sents = split_sentences(k.text)
            assert sents and sents == split_sentences(original)[: len(sents)]


# --- LocalAggregator.trim --------------------------------------------------------------------

PASSAGES = chunks_of("alpha one.", "beta two two.", "gamma three three three.", "delta.")


def aggregator(**counters: WordCounter) -> LocalAggregator:
    return LocalAggregator(NoEmbedder(), counters, AggregatorConfig(default_budget_tokens=12))


async def test_aggregator_trim_per_member_budget_and_orderings() -> None:
    agg = aggregator(small=WordCounter(context_window=25), big=WordCounter(context_window=1000))
    plans = await agg.trim("q q", PASSAGES, ["small", "big"], budget_tokens=None, ordering="edges", orderings=3)
    assert set(plans) == {"small", "big"}
    # small's window leaves 25 - 5 - 2 - 10 = 8 (under the default 12): c0 (4) and c3 (3) fit.
    small_texts, small_report = plans["small"][0]
    assert small_report.budget_tokens == 8 and small_report.kept == ("c0", "c3")
    assert small_report.dropped == ("c1", "c2") and small_report.member == "small"
    assert small_texts == ["alpha one.", "delta."]  # edges of two is relevance order
    assert len(plans["small"]) == 2  # only two arrangements of two passages exist
    big = plans["big"]
    assert [r.ordering for _, r in big] == ["edges", "reverse", "relevance"]
    assert big[0][1].budget_tokens == 12
    assert len({tuple(t) for t, _ in big}) == 3


async def test_aggregator_trim_request_budget_overrides_default() -> None:
    agg = aggregator(m=WordCounter(context_window=1000))
    plans = await agg.trim("q", PASSAGES, ["m"], budget_tokens=100, ordering="relevance", orderings=1)
    texts, report = plans["m"][0]
    assert texts == [c.text for c in PASSAGES] and report.budget_tokens == 100 and report.dropped == ()


async def test_aggregator_trim_question_too_long_gives_negative_budget_and_no_passages() -> None:
    agg = aggregator(m=WordCounter(context_window=16))
    plans = await agg.trim("q q q", PASSAGES, ["m"], budget_tokens=None, ordering="relevance", orderings=2)
    assert plans["m"] == [([], plans["m"][0][1])]
    assert plans["m"][0][1].budget_tokens < 0 and len(plans["m"][0][1].dropped) == 4


async def test_aggregator_trim_errors() -> None:
    agg = aggregator(m=WordCounter())
    with pytest.raises(UnknownSpecialist, match="'ghost'"):
        await agg.trim("q", PASSAGES, ["m", "ghost"], budget_tokens=None, ordering="relevance", orderings=1)
    with pytest.raises(InvalidRequest, match="'middle'"):
        await agg.trim("q", PASSAGES, ["m"], budget_tokens=None, ordering="middle", orderings=1)
    with pytest.raises(InvalidRequest, match="orderings=0"):
        await agg.trim("q", PASSAGES, ["m"], budget_tokens=None, ordering="relevance", orderings=0)
