"""`TrimReport.trimmed_tokens`: the text tokens a member's budget left out (feeds the tokens-trimmed metric)."""

from __future__ import annotations

from council.budget import select
from tests.fakes import WordCounter
from tests.unit.test_budget import chunks_of


def test_trimmed_tokens_count_cut_sentences_and_dropped_chunks() -> None:
    c = WordCounter(per_passage=2)
    chunks = chunks_of("one two three.", "four five. six seven eight.", "nine ten eleven twelve.")
    # 5 (3 words + 2) fits whole; then room 4: the second is cut to "four five." (2 + 2), "six seven eight." (3)
    # is left out; the third (4 words) no longer fits at all.
    kept, report = select(chunks, 9, c, member="m")
    assert [k.text for k in kept] == ["one two three.", "four five."]
    assert (report.kept, report.cut, report.dropped) == (("c0",), ("c1",), ("c2",))
    assert report.used_tokens == 9
    assert report.trimmed_tokens == 3 + 4


def test_nothing_trimmed_when_everything_fits() -> None:
    _, report = select(chunks_of("a b.", "c d."), 100, WordCounter(), member="m")
    assert report.trimmed_tokens == 0
