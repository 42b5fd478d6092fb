"""Routing: profiles, cosine scores and the top-k choice."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from council.errors import InvalidRequest, UnknownSpecialist
from council.routing import choose, cosine_scores, profile_vector


def test_profile_vector_is_unit_mean_of_normalised_rows() -> None:
    # A long row must not outweigh a short one: both count once after normalising.
    rows = np.array([[10.0, 0.0], [0.0, 1.0]])
    p = profile_vector(rows)
    assert p.dtype == np.float32
    np.testing.assert_allclose(p, [math.sqrt(0.5), math.sqrt(0.5)], rtol=1e-6)


def test_profile_vector_one_row_and_1d_input() -> None:
    np.testing.assert_allclose(profile_vector(np.array([3.0, 4.0])), [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(profile_vector(np.array([[3.0, 4.0]])), [0.6, 0.8], rtol=1e-6)


def test_profile_vector_ignores_zero_rows() -> None:
    np.testing.assert_allclose(profile_vector(np.array([[0.0, 0.0], [0.0, 2.0]])), [0.0, 1.0])


@pytest.mark.parametrize(
    "rows", [np.zeros((0, 3)), np.zeros((2, 3)), np.array([[1.0, 0.0], [-1.0, 0.0]])], ids=["empty", "zero", "cancel"]
)
def test_profile_vector_refuses_directionless_input(rows: np.ndarray) -> None:
    with pytest.raises(ValueError):
        profile_vector(rows)


def test_cosine_scores_values() -> None:
    profiles = {"math": np.array([1.0, 0.0]), "bio": np.array([0.0, 2.0]), "anti": np.array([-1.0, 0.0])}
    scores = cosine_scores(np.array([2.0, 0.0]), profiles)
    assert scores == pytest.approx({"math": 1.0, "bio": 0.0, "anti": -1.0})
    assert all(type(v) is float for v in scores.values())


def test_cosine_scores_zero_vectors_score_zero_not_nan() -> None:
    assert cosine_scores(np.zeros(2), {"a": np.array([1.0, 0.0])}) == {"a": 0.0}
    assert cosine_scores(np.array([1.0, 0.0]), {"a": np.zeros(2)}) == {"a": 0.0}


def test_cosine_scores_dimension_mismatch_names_specialist() -> None:
    with pytest.raises(ValueError, match="'bio'"):
        cosine_scores(np.ones(3), {"bio": np.ones(2)})


def test_cosine_scores_empty_profiles() -> None:
    assert cosine_scores(np.ones(3), {}) == {}


@given(st.lists(st.floats(-5, 5), min_size=3, max_size=3), st.lists(st.floats(-5, 5), min_size=3, max_size=3))
def test_cosine_scores_bounded(q: list[float], p: list[float]) -> None:
    s = cosine_scores(np.array(q), {"x": np.array(p)})["x"]
    assert -1.0 <= s <= 1.0


SCORES = {"law": 0.2, "math": 0.9, "bio": 0.5, "chem": 0.5}


def test_choose_top_k_best_first_and_keeps_all_scores() -> None:
    d = choose(SCORES, 2)
    assert d.chosen == ("math", "bio")
    assert dict(d.scores) == SCORES


def test_choose_ties_break_by_name_regardless_of_dict_order() -> None:
    reordered = dict(reversed(list(SCORES.items())))
    assert choose(SCORES, 3).chosen == choose(reordered, 3).chosen == ("math", "bio", "chem")


def test_choose_k_equal_to_all() -> None:
    assert choose(SCORES, 4).chosen == ("math", "bio", "chem", "law")


@pytest.mark.parametrize("k", [0, -1, 5])
def test_choose_k_out_of_range_names_k_and_range(k: int) -> None:
    with pytest.raises(InvalidRequest, match=rf"k={k}.*1\.\.4"):
        choose(SCORES, k)


def test_choose_no_specialists() -> None:
    with pytest.raises(InvalidRequest):
        choose({}, 1)


def test_choose_min_score_drops_low_scorers() -> None:
    assert choose(SCORES, 4, min_score=0.5).chosen == ("math", "bio", "chem")
    assert choose(SCORES, 4, min_score=0.6).chosen == ("math",)


def test_choose_min_score_leaving_nobody_names_best_score() -> None:
    with pytest.raises(InvalidRequest, match=r"min_score=0\.95.*'math'.*0\.9000"):
        choose(SCORES, 2, min_score=0.95)


def test_choose_nan_scores_sort_last_and_fail_min_score() -> None:
    d = choose({"a": float("nan"), "b": -0.5}, 2)
    assert d.chosen == ("b",)


def test_choose_forced_picks_exactly_those_ignoring_k_and_min_score() -> None:
    d = choose(SCORES, 1, min_score=0.95, forced=["law", "bio"])
    assert d.chosen == ("bio", "law")  # best first, like a routed choice
    assert dict(d.scores) == SCORES


def test_choose_forced_unknown_names_it() -> None:
    with pytest.raises(UnknownSpecialist, match="'physics'") as e:
        choose(SCORES, 1, forced=["math", "physics"])
    assert e.value.status == 404


def test_choose_forced_empty_or_duplicate() -> None:
    with pytest.raises(InvalidRequest):
        choose(SCORES, 1, forced=[])
    with pytest.raises(InvalidRequest, match="'bio'"):
        choose(SCORES, 1, forced=["bio", "math", "bio"])


@given(
    st.dictionaries(st.text("abcdef", min_size=1, max_size=3), st.floats(-1, 1), min_size=1, max_size=8),
    st.data(),
)
def test_choose_properties(scores: dict[str, float], data: st.DataObject) -> None:
    k = data.draw(st.integers(1, len(scores)))
    chosen = choose(scores, k).chosen
    assert len(chosen) == k and len(set(chosen)) == k
    # Nobody left out scores strictly better than anybody chosen.
    worst = min(scores[n] for n in chosen)
    assert all(scores[n] <= worst for n in scores if n not in chosen)
    assert [scores[n] for n in chosen] == sorted((scores[n] for n in chosen), reverse=True)
