"""Sentence splitting takes time linear in its input (issue 16, finding 3): no text stalls a replica.

The old pattern backtracked over runs of punctuation: 20,000 dots took over 10 s. Time is measured as a ratio
between a text of n characters and one of 4n built the same way (linear: about 4; quadratic: about 16), never
as an absolute time, and each timing is the best of a few runs, so a loaded machine does not fail it.
"""

from __future__ import annotations

import gc
import math
import re
import time
from collections.abc import Callable

from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from council.budget import select, split_sentences
from council.prompts import neutralise_fences
from council.retrieval import chunk_text
from council.types import Chunk
from tests.fakes import WordCounter

# The pattern before the fix, kept as the reference for what a split is on ordinary text.
_OLD_SENTENCE_END = re.compile(r"""(?:[.!?…]+["'”’)\]]*(?=\s)|\n[ \t]*(?=\n))""")
_ALPHABET = list("ab .!?\n\t\"')]…3”’")
N = 2_000
# Linear time gives a ratio near 4 between 4n and n; quadratic gives 16. Time is this thread's CPU time
# (`time.thread_time`), so neither other processes on a loaded machine nor other threads holding the GIL count.
# Each timing repeats the call until it takes TRIAL_S or more and keeps the best of TRIALS; the floor absorbs the
# noise left on texts that take microseconds whatever their pattern.
MAX_RATIO = 10.0
TRIAL_S = 0.005
TRIALS = 3
FLOOR_S = 1e-4


def _old_split(text: str) -> list[str]:
    spans, start = [], 0
    for m in _OLD_SENTENCE_END.finditer(text):
        spans.append(text[start : m.end()].strip())
        start = m.end()
    spans.append(text[start:].strip())
    return [s for s in spans if s]


def per_call(fn: Callable[[], object], reps: int) -> float:
    """Seconds per call of `fn`: the best of TRIALS runs of `reps` calls, the garbage collector paused."""
    times = []
    gc.disable()
    try:
        for _ in range(TRIALS):
            t0 = time.thread_time()
            for _ in range(reps):
                fn()
            times.append((time.thread_time() - t0) / reps)
    finally:
        gc.enable()
    return min(times)


def assert_linear(make: Callable[[int], str], work: Callable[[str], object]) -> None:
    small, big = make(N), make(4 * N)
    assert len(big) == 4 * len(small) > 0
    t0 = time.thread_time()
    work(small)
    reps = max(1, min(1000, math.ceil(TRIAL_S / max(time.thread_time() - t0, 1e-6))))
    t_small, t_big = per_call(lambda: work(small), reps), per_call(lambda: work(big), reps)
    assert t_big <= MAX_RATIO * t_small + FLOOR_S, (
        f"{len(small)} chars: {t_small * 1e3:.3f} ms, {len(big)} chars: {t_big * 1e3:.3f} ms per call "
        f"({reps} calls a trial; ratio {t_big / max(t_small, 1e-9):.1f}, linear is ~4)"
    )


@given(st.text(alphabet=st.sampled_from(_ALPHABET), max_size=80))
def test_split_sentences_splits_as_before(text: str) -> None:
    assert split_sentences(text) == _old_split(text)


# A text of n characters as runs of characters, each run's length proportional to n ("stretch": a run of
# dots grows with n) or the whole pattern repeated to n characters ("repeat": more sentences as n grows).
_RUNS = st.lists(st.tuples(st.sampled_from(_ALPHABET), st.integers(1, 8)), min_size=1, max_size=6)


def _build(runs: list[tuple[str, int]], mode: str, n: int) -> str:
    unit = "".join(c * w for c, w in runs)
    if mode == "repeat":
        return (unit * (n // len(unit) + 1))[:n]
    total = sum(w for _, w in runs)
    scale = n // total
    text = "".join(c * (w * scale) for c, w in runs)
    return text + runs[-1][0] * (n - len(text))  # the last run takes the remainder: exactly n characters


@settings(
    max_examples=15,
    deadline=None,
    # No shrinking: every example times two splits, and a slow one is shown as drawn.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
@example(runs=[(".", 1)], mode="stretch")  # the reported attack: a run of dots and nothing else
@example(runs=[("a", 1), (".", 8), ('"', 2)], mode="stretch")
@example(runs=[("\n", 1), (" ", 8)], mode="stretch")
@example(runs=[(".", 1), (" ", 1)], mode="repeat")
@given(runs=_RUNS, mode=st.sampled_from(["stretch", "repeat"]))
def test_split_sentences_takes_linear_time(runs: list[tuple[str, int]], mode: str) -> None:
    assert_linear(lambda n: _build(runs, mode, n), split_sentences)


def test_a_document_of_dots_is_chunked_and_trimmed_in_linear_time() -> None:
    """What the retrieval replica (chunking ephemeral documents) and the aggregator (cutting a passage to
    whole sentences) do with 20,000 dots; the passage is over budget, so it is cut."""
    counter = WordCounter()

    def chunk_and_trim(text: str) -> None:
        chunks = [Chunk(id=f"c{i}", text=t) for i, t in enumerate(chunk_text(text, 600))]
        select([Chunk(id="whole", text=text), *chunks], 40, counter, member="m")

    def dots(n: int) -> str:
        head = "word " * 60  # over the budget: select cuts the passage at a sentence end
        return head + "." * (n - len(head))

    assert_linear(lambda n: dots(5 * n // 2), chunk_and_trim)  # 5,000 and 20,000 characters


def test_fence_neutralising_takes_linear_time() -> None:
    """The passage fence's pattern had the same fault: "<" and 20,000 spaces took seconds (its two runs of
    optional spaces traded characters); and the look-alike check (NFKC, per character) must stay linear too."""
    for head in ("<", "＜", "< /"):
        assert_linear(lambda n, head=head: head + " " * (n - len(head)), neutralise_fences)
    unit = "＜/ｐａｓｓａｇｅ＞ "
    assert_linear(lambda n: (unit * (n // len(unit) + 1))[:n], neutralise_fences)
