"""Routing, pure: specialist profiles, cosine scores against a question, and the top-k choice."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from council.errors import InvalidRequest, UnknownSpecialist
from council.types import RouteDecision


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero (they carry no direction)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def profile_vector(vectors: np.ndarray) -> np.ndarray:
    """A specialist's routing profile: the renormalised mean of its L2-normalised embedding rows.

    Rows are normalised first so a long description does not outweigh the example questions.
    A 1-D input is one row. Raises ValueError for no rows or only all-zero rows.
    """
    m = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    if m.ndim != 2 or m.shape[0] == 0:
        raise ValueError(f"profile_vector needs at least one row, got shape {np.shape(vectors)}")
    mean = _unit_rows(m).mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if norm == 0.0:
        raise ValueError("profile_vector: the rows are all zero or cancel out; no direction to route by")
    return (mean / norm).astype(np.float32)


def cosine_scores(query: np.ndarray, profiles: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Cosine similarity of the query to every profile, as plain floats in [-1, 1].

    A zero vector (query or profile) scores 0.0 rather than NaN, so it sorts as 'unrelated'.
    """
    q = np.asarray(query, dtype=np.float64).reshape(-1)
    qn = float(np.linalg.norm(q))
    scores: dict[str, float] = {}
    for name, profile in profiles.items():
        p = np.asarray(profile, dtype=np.float64).reshape(-1)
        if p.shape != q.shape:
            raise ValueError(f"profile of {name!r} has dimension {p.shape[0]}, the query has {q.shape[0]}")
        pn = float(np.linalg.norm(p))
        cos = float(q @ p) / (qn * pn) if qn > 0 and pn > 0 else 0.0
        scores[name] = min(1.0, max(-1.0, cos))
    return scores


def _rank_key(item: tuple[str, float]) -> tuple[float, str]:
    # Best score first; equal scores fall back to the name so the choice never depends on dict order.
    name, score = item
    return (-score if not math.isnan(score) else math.inf, name)


def _forced(scores: Mapping[str, float], forced: Sequence[str]) -> tuple[str, ...]:
    """Validate a caller's explicit list of specialists; returned best first like a routed choice."""
    if len(forced) == 0:
        raise InvalidRequest("specialists must name at least one specialist when given")
    dupes = sorted(n for n, times in Counter(forced).items() if times > 1)
    if dupes:
        raise InvalidRequest(f"specialists lists {dupes} more than once")
    for name in forced:
        if name not in scores:
            raise UnknownSpecialist(
                f"unknown specialist {name!r}; known: {sorted(scores)}", details={"specialist": name}
            )
    return tuple(n for n, _ in sorted(((n, scores[n]) for n in forced), key=_rank_key))


def choose(
    scores: Mapping[str, float],
    k: int,
    *,
    min_score: float = -1.0,
    forced: Sequence[str] | None = None,
) -> RouteDecision:
    """Pick the top-k specialists by score (ties broken by name), dropping those below `min_score`.

    `forced` overrides routing: exactly those names are chosen, whatever their scores, and `k` and
    `min_score` are ignored (the caller asked for them by name). Errors are InvalidRequest
    (bad k, empty or repeated `forced`, nobody reaching `min_score`) or UnknownSpecialist.
    """
    if forced is not None:
        return RouteDecision(scores=dict(scores), chosen=_forced(scores, forced))
    if not scores:
        raise InvalidRequest("there are no specialists to choose from")
    if k < 1 or k > len(scores):
        raise InvalidRequest(f"k={k} is out of range: allowed 1..{len(scores)} (the number of specialists)")
    ranked = sorted(scores.items(), key=_rank_key)
    chosen = tuple(n for n, s in ranked[:k] if s >= min_score)
    if not chosen:
        best_name, best = ranked[0]
        raise InvalidRequest(
            f"no specialist scored above min_score={min_score}; the best was {best_name!r} with {best:.4f}"
        )
    return RouteDecision(scores=dict(scores), chosen=chosen)
