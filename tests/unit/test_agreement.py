"""Agreement: normalising, clustering, weighted verdicts, votes, and the aggregator's aggregate step."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from council.agreement import (
    ABSTAIN_ANSWER,
    UNKNOWN_ANSWER,
    Verdict,
    cluster,
    decide,
    is_unknown,
    normalise,
    route_weight,
    vote,
)
from council.config import AggregatorConfig
from council.errors import InvalidRequest
from council.local_aggregator import LocalAggregator
from council.protocols import Aggregator, Embedder
from council.types import MemberAnswer


class HashEmbedder:
    """Embedder test double (the real MiniLM one lives in backends): a hashed, normalised bag of words.

    Answers with the same normalised words get the same vector; it counts its calls.
    """

    dim = 64

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in normalise(text).split() or ["<empty>"]:
                h = zlib.crc32(word.encode())
                out[row, h % self.dim] += 1.0 if (h >> 8) % 2 else -1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def at_angles(*degrees: float) -> np.ndarray:
    """Unit rows in the plane, so pairwise cosines are cos(angle difference)."""
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1).astype(np.float32)


def embed(*answers: str) -> np.ndarray:
    return HashEmbedder().embed(answers)


def test_hash_embedder_implements_protocol() -> None:
    assert isinstance(HashEmbedder(), Embedder)


# --- normalise / is_unknown ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The Eiffel Tower.", "eiffel tower"),
        ("  PARIS!!  ", "paris"),
        ("an apple", "apple"),
        ("paris .", "paris"),
        ("well-known", "well known"),
        ("I don't know", "i dont know"),
        ("Café\u00a0au  lait", "café au lait"),
        ("A", "a"),  # a lone article is an answer (a choice), not noise
        ("the", "the"),
        ("", ""),
        ("...", ""),
    ],
)
def test_normalise(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


@pytest.mark.parametrize(
    "answer",
    ["unknown", "Unknown.", "unknown .", "I don't know", "I do not know!", "not known", "No answer.", "", "  "],
)
def test_is_unknown_true(answer: str) -> None:
    assert is_unknown(answer)


@pytest.mark.parametrize("answer", ["Paris", "unknown soldier", "known", "no", "the answer is 42"])
def test_is_unknown_false(answer: str) -> None:
    assert not is_unknown(answer)


# --- cluster ---------------------------------------------------------------------------------


def test_cluster_empty() -> None:
    assert cluster([], np.zeros((0, 4)), 0.9) == []


def test_cluster_identical_normalised_answers_always_together() -> None:
    # Orthogonal embeddings: only the normalised text can put them together.
    answers = ["Paris.", "london", "paris", "The Paris!"]
    assert cluster(answers, np.eye(4), 0.99) == [[0, 2, 3], [1]]


def test_cluster_all_unknown_forms_together_but_never_with_a_real_answer() -> None:
    answers = ["unknown", "I don't know.", "paris", "No answer"]
    same = np.ones((4, 3))  # identical embeddings: only the unknown rule can separate them
    assert cluster(answers, same, 0.5) == [[0, 1, 3], [2]]


def test_cluster_merges_by_cosine_threshold() -> None:
    answers = ["a one", "b two", "c three"]
    emb = at_angles(0, 10, 90)  # cos 10deg = 0.985
    assert cluster(answers, emb, 0.95) == [[0, 1], [2]]
    assert cluster(answers, emb, 0.99) == [[0], [1], [2]]
    assert cluster(answers, emb, 0.0) == [[0, 1, 2]]  # average cosine to the pair is > 0


def test_cluster_members_are_listed_in_input_order_after_a_merge() -> None:
    assert cluster(["x", "y", "x"], at_angles(0, 5, 0), 0.9) == [[0, 1, 2]]


def test_cluster_average_link_does_not_chain() -> None:
    # 0-1 and 1-2 are close (cos 18.2deg = 0.95), 0-2 are not (0.80): single link would chain all three.
    answers = ["a one", "b two", "c three"]
    assert cluster(answers, at_angles(0, 18.2, 36.4), 0.9) == [[0, 1], [2]]


def test_cluster_sorted_by_size_then_first_index() -> None:
    answers = ["x", "y", "z", "y", "z"]
    assert cluster(answers, np.eye(5), 0.99) == [[1, 3], [2, 4], [0]]


def test_cluster_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="one embedding row per answer"):
        cluster(["a", "b"], np.eye(3), 0.9)


@given(st.lists(st.sampled_from(["paris", "Paris.", "london", "the london", "rome", "unknown", ""]), max_size=8))
def test_cluster_is_a_sorted_partition_keeping_identical_together(answers: list[str]) -> None:
    emb = embed(*answers) if answers else np.zeros((0, 64))
    clusters = cluster(answers, emb, 0.9)
    assert sorted(i for c in clusters for i in c) == list(range(len(answers)))
    assert [(-len(c), c[0]) for c in clusters] == sorted((-len(c), c[0]) for c in clusters)
    where = {i: n for n, c in enumerate(clusters) for i in c}
    for i, a in enumerate(answers):
        for j, b in enumerate(answers):
            if normalise(a) == normalise(b):
                assert where[i] == where[j]
    assert clusters == cluster(answers, emb, 0.9)


# --- decide ----------------------------------------------------------------------------------


def verdict(answers: Sequence[str], weights: Sequence[float], threshold: float = 0.5) -> Verdict:
    return decide(answers, weights, embed(*answers), similarity_threshold=0.9, agreement_threshold=threshold)


def test_decide_full_agreement_entropy_zero_and_medoid_by_weight() -> None:
    v = verdict(["Paris.", "paris", "The Paris"], [0.2, 0.9, 0.5])
    assert v.agreement == pytest.approx(1.0) and v.entropy == pytest.approx(0.0)
    assert not v.abstained and v.clusters == ((0, 1, 2),)
    assert v.winner == 1 and v.answer == "paris"  # equal similarity: the highest weight wins


def test_decide_two_equal_clusters_entropy_ln2() -> None:
    v = verdict(["paris", "london"], [0.5, 0.5], threshold=0.6)
    assert v.entropy == pytest.approx(math.log(2)) and v.agreement == pytest.approx(0.5)
    assert v.abstained and v.answer == ABSTAIN_ANSWER and v.winner == 0
    at_threshold = verdict(["paris", "london"], [0.5, 0.5], threshold=0.5)
    assert not at_threshold.abstained and at_threshold.answer == "paris"


def test_decide_weights_beat_head_count() -> None:
    v = verdict(["paris", "london", "london"], [0.9, 0.1, 0.1])
    assert v.answer == "paris" and v.agreement == pytest.approx(0.9 / 1.1)
    assert v.clusters == ((1, 2), (0,))


def test_decide_negative_weights_clamped_to_epsilon() -> None:
    v = verdict(["paris", "london"], [-0.5, 0.3])
    assert v.answer == "london" and v.agreement == pytest.approx(1.0, abs=1e-4)


def test_decide_all_zero_weights_count_equally() -> None:
    v = verdict(["rome", "oslo", "oslo"], [0.0, 0.0, 0.0])
    assert v.answer == "oslo" and v.agreement == pytest.approx(2 / 3)


def test_decide_unknown_winner_abstains_with_unknown_answer() -> None:
    v = verdict(["unknown", "I don't know.", "paris"], [1, 1, 1])
    assert v.abstained and v.answer == UNKNOWN_ANSWER
    assert v.agreement == pytest.approx(2 / 3) and v.winner in (0, 1)


def test_decide_low_agreement_reports_abstain_not_unknown() -> None:
    v = verdict(["unknown", "paris", "rome"], [1, 1, 1])
    assert v.abstained and v.answer == ABSTAIN_ANSWER


def test_decide_tie_prefers_a_real_answer_over_unknown() -> None:
    v = verdict(["unknown", "paris"], [0.5, 0.5])
    assert not v.abstained and v.answer == "paris" and v.winner == 1


def test_decide_no_answers() -> None:
    v = decide([], [], np.zeros((0, 8)), similarity_threshold=0.9, agreement_threshold=0.5)
    assert v == Verdict(ABSTAIN_ANSWER, 0.0, 0.0, True, (), None)


def test_decide_medoid_is_the_most_central_member() -> None:
    v = decide(
        ["a one", "b two", "c three"],
        [1.0, 0.1, 1.0],
        at_angles(0, 10, 20),
        similarity_threshold=0.9,
        agreement_threshold=0.5,
    )
    assert v.clusters == ((0, 1, 2),) and v.winner == 1 and v.answer == "b two"


def test_decide_strips_the_answer() -> None:
    assert verdict(["  Paris \n"], [1.0]).answer == "Paris"


def test_decide_length_mismatch() -> None:
    with pytest.raises(ValueError, match="2 answers but 1 weights"):
        decide(["a", "b"], [1.0], np.eye(2), similarity_threshold=0.9, agreement_threshold=0.5)


@given(
    st.lists(
        st.tuples(st.sampled_from(["paris", "london", "rome", "oslo", "unknown"]), st.floats(-1, 1)),
        min_size=1,
        max_size=7,
    ),
    st.floats(0, 1),
)
def test_decide_properties(pairs: list[tuple[str, float]], threshold: float) -> None:
    answers = [a for a, _ in pairs]
    v = verdict(answers, [w for _, w in pairs], threshold)
    k = len(v.clusters)
    assert 1 / k - 1e-9 <= v.agreement <= 1 + 1e-9
    assert -1e-12 <= v.entropy <= math.log(k) + 1e-9
    assert v.winner is not None and v.winner in next(c for c in v.clusters if v.winner in c)
    assert v.abstained == (v.answer in (ABSTAIN_ANSWER, UNKNOWN_ANSWER))
    if not v.abstained:
        assert v.agreement >= threshold - 1e-9 and v.answer == answers[v.winner]


# --- vote ------------------------------------------------------------------------------------


def test_vote_majority_and_consistency() -> None:
    answers = ["London", "paris", "Paris."]
    assert vote(answers, embed(*answers), 0.9) == (1, pytest.approx(2 / 3))


def test_vote_single_answer() -> None:
    assert vote(["x"], embed("x"), 0.9) == (0, 1.0)


def test_vote_tie_prefers_real_answer() -> None:
    answers = ["unknown", "paris"]
    assert vote(answers, embed(*answers), 0.9) == (1, 0.5)


def test_vote_no_answers() -> None:
    with pytest.raises(ValueError):
        vote([], np.zeros((0, 4)), 0.9)


# --- LocalAggregator.aggregate / vote --------------------------------------------------------


def make(embedder: HashEmbedder, **overrides: float) -> LocalAggregator:
    return LocalAggregator(embedder, {}, AggregatorConfig(**overrides))  # type: ignore[arg-type]


def test_local_aggregator_implements_protocol() -> None:
    assert isinstance(make(HashEmbedder()), Aggregator)


async def test_aggregate_uses_only_ok_members_weighted_by_route_weight_in_one_embed_call() -> None:
    emb = HashEmbedder()
    members = [
        MemberAnswer("a", 0.9, answer="Paris."),
        MemberAnswer("b", 0.8, error="TimeoutError: slow"),
        MemberAnswer("c", 0.7, answer="london", cancelled=True),
        MemberAnswer("d", -0.6, answer="london"),
        MemberAnswer("e", -0.8, answer="london"),
    ]
    v = await make(emb, agreement_threshold=0.6).aggregate(members)
    assert emb.calls == [["Paris.", "london", "london"]]
    # Weights are route_weight(score) = (score + 1) / 2: 0.95 for Paris against 0.2 + 0.1 for london.
    assert v.answer == "Paris." and v.agreement == pytest.approx(0.95 / 1.25)
    assert v.clusters == ((1, 2), (0,)) and v.winner == 0  # indices of the ok members


async def test_aggregate_abstains_below_threshold() -> None:
    members = [MemberAnswer("a", 0.5, answer="paris"), MemberAnswer("b", 0.5, answer="rome")]
    v = await make(HashEmbedder(), agreement_threshold=0.75).aggregate(members)
    assert v.abstained and v.answer == ABSTAIN_ANSWER


async def test_aggregate_nobody_answered() -> None:
    emb = HashEmbedder()
    v = await make(emb).aggregate([MemberAnswer("a", 0.5, error="boom")])
    assert v.abstained and v.winner is None and v.agreement == 0.0 and emb.calls == []


async def test_vote_embeds_once() -> None:
    emb = HashEmbedder()
    agg = make(emb)
    answers = ["unknown", "Rome.", "rome"]
    assert await agg.vote(answers) == (1, pytest.approx(2 / 3))
    assert emb.calls == [answers]


@pytest.mark.parametrize(
    ("score", "weight"), [(-1.0, 0.0), (0.0, 0.5), (1.0, 1.0), (0.2, 0.6), (7.0, 1.0), (float("nan"), 0.0)]
)
def test_route_weight_maps_cosine_onto_unit_interval(score: float, weight: float) -> None:
    assert route_weight(score) == pytest.approx(weight)


async def test_aggregate_and_vote_use_given_embeddings_and_check_their_shape() -> None:
    emb = HashEmbedder()
    agg = make(emb, agreement_threshold=0.6)
    members = [MemberAnswer("a", 0.5, answer="paris"), MemberAnswer("b", 0.5, answer="lyon")]
    # Given vectors decide: identical rows merge "paris" and "lyon" into one cluster, without embedding.
    v = await agg.aggregate(members, np.ones((2, emb.dim), dtype=np.float32))
    assert emb.calls == [] and not v.abstained and v.agreement == pytest.approx(1.0)
    assert (await agg.vote(["x", "y", "z"], np.eye(3, emb.dim, dtype=np.float32)))[1] == pytest.approx(1 / 3)
    assert emb.calls == []
    with pytest.raises(InvalidRequest, match="expected 2 embedding rows"):
        await agg.aggregate(members, np.ones((3, emb.dim), dtype=np.float32))
