"""Agreement, pure: normalising and clustering answers, weighted agreement, entropy, vote, abstention."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from council.prompts import UNKNOWN

ABSTAIN_ANSWER = "The council could not agree on an answer."
UNKNOWN_ANSWER = "The council does not know."

_ARTICLES = frozenset({"a", "an", "the"})
_APOSTROPHES = str.maketrans("", "", "'’‘`")
# Weight given to a member whose router score is negative, zero or NaN: it still counts, barely.
_EPSILON = 1e-6
# Float noise must not decide a tie or a threshold: shares are sums of floats, and cosines of
# float32 embeddings carry about 1e-7 of rounding, so similarities are compared more coarsely.
_TOL = 1e-9
_SIM_TOL = 1e-6


def normalise(answer: str) -> str:
    """Canonical form for comparing answers: case-folded, punctuation and extra spaces removed,
    a leading article (a/an/the) dropped unless it is the whole answer ("A" can be a choice)."""
    text = unicodedata.normalize("NFKC", answer).casefold().translate(_APOSTROPHES)
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    words = text.split()
    if len(words) > 1 and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(words)


_UNKNOWN_FORMS = frozenset(
    normalise(s) for s in (UNKNOWN, "i don't know", "i do not know", "not known", "no answer", "")
)


def is_unknown(answer: str) -> bool:
    """Whether the answer means "I don't know" (the prompt's `unknown`, its paraphrases, or nothing)."""
    return normalise(answer) in _UNKNOWN_FORMS


def _similarity(embeddings: np.ndarray, n: int) -> np.ndarray:
    """The n x n cosine matrix; rows are renormalised in float64 so a row with itself is 1."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] != n:
        raise ValueError(f"expected one embedding row per answer ({n}), got shape {e.shape}")
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    unit = np.divide(e, norms, out=np.zeros_like(e), where=norms > 0)
    return unit @ unit.T


def _exact_groups(answers: Sequence[str]) -> list[list[int]]:
    """Indices grouped by normalised answer, first-seen order; every "unknown" form is one group."""
    groups: dict[str, list[int]] = {}
    for i, a in enumerate(answers):
        key = "\0unknown" if is_unknown(a) else normalise(a)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def cluster(answers: Sequence[str], embeddings: np.ndarray, threshold: float) -> list[list[int]]:
    """Group answers that say the same thing; returns index lists, largest first, then by first index.

    Identical normalised answers (and all "unknown" forms) always share a cluster. Beyond that,
    average-link agglomeration: repeatedly merge the two clusters with the highest mean pairwise
    cosine while it is >= `threshold`. Average link rather than single link, so a chain of
    near-paraphrases cannot join two different answers. "Unknown" never merges with a real answer.
    """
    n = len(answers)
    if n == 0:
        return []
    sim = _similarity(embeddings, n)
    groups = _exact_groups(answers)
    unknown = [is_unknown(answers[g[0]]) for g in groups]
    while True:
        best: tuple[float, int, int] | None = None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                if unknown[a] or unknown[b]:
                    continue
                s = float(sim[np.ix_(groups[a], groups[b])].mean())
                if s >= threshold - _SIM_TOL and (best is None or s > best[0] + _SIM_TOL):
                    best = (s, a, b)
        if best is None:
            break
        _, a, b = best
        groups[a] = sorted(groups[a] + groups[b])
        del groups[b], unknown[b]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


@dataclass(frozen=True)
class Verdict:
    """The council's decision over its members' answers (indices refer to the answers given)."""

    answer: str
    agreement: float
    entropy: float
    abstained: bool
    clusters: tuple[tuple[int, ...], ...]
    winner: int | None


def route_weight(score: float) -> float:
    """A member's say in the vote from its router cosine: mapped from [-1, 1] onto [0, 1].

    Raw cosines of small embedders sit close to 0 and may be negative; using them as weights directly
    would hand one barely-positive member the whole vote. The affine map keeps the ranking and the
    relative preference for better-routed members while every chosen member keeps a real say.
    """
    s = float(score) if math.isfinite(score) else -1.0
    return (min(1.0, max(-1.0, s)) + 1.0) / 2.0


def share_weight(score: float) -> float:
    """`route_weight` kept above zero, for a share of every chosen member's weight (early exit, escalation): a
    member routed at -1 still counts, so the members not heard from yet can never weigh nothing."""
    return max(route_weight(score), 1e-6)


def _weights(weights: Sequence[float]) -> list[float]:
    # Router scores are cosines and may be <= 0; a member that answered still gets a tiny say,
    # and if every score is <= 0 they all get the same epsilon, i.e. equal weights.
    return [w if math.isfinite(w) and w > _EPSILON else _EPSILON for w in (float(x) for x in weights)]


def _medoid(members: Sequence[int], sim: np.ndarray, weights: Sequence[float]) -> int:
    """The member most similar on average to the rest of its cluster; ties: higher weight, then first."""
    if len(members) == 1:
        return members[0]

    def key(i: int) -> tuple[float, float, int]:
        others = [j for j in members if j != i]
        return (round(float(sim[i, others].mean()) / _SIM_TOL), weights[i], -i)

    return max(members, key=key)


def _pick(clusters: Sequence[Sequence[int]], mass: Sequence[float], answers: Sequence[str]) -> int:
    """Index of the winning cluster: most mass; on a tie prefer a real answer, then the earlier one."""
    return max(
        range(len(clusters)),
        key=lambda j: (round(mass[j], 9), not is_unknown(answers[clusters[j][0]]), -j),
    )


def decide(
    answers: Sequence[str],
    weights: Sequence[float],
    embeddings: np.ndarray,
    *,
    similarity_threshold: float,
    agreement_threshold: float,
) -> Verdict:
    """Cluster the answers, weigh clusters by router score and pick the council's answer or abstain.

    agreement = the winning cluster's share of the weight; entropy = -sum p ln p over cluster shares.
    The answer is the winning cluster's medoid. Abstains with ABSTAIN_ANSWER when agreement is below
    `agreement_threshold`, and with UNKNOWN_ANSWER when the winning answer is "unknown".
    """
    n = len(answers)
    if len(weights) != n:
        raise ValueError(f"got {n} answers but {len(weights)} weights")
    if n == 0:
        return Verdict(ABSTAIN_ANSWER, 0.0, 0.0, True, (), None)
    w = _weights(weights)
    clusters = cluster(answers, embeddings, similarity_threshold)
    total = sum(w)
    shares = [sum(w[i] for i in c) / total for c in clusters]
    win = _pick(clusters, shares, answers)
    entropy = max(0.0, -sum(p * math.log(p) for p in shares if p > 0))
    winner = _medoid(clusters[win], _similarity(embeddings, n), w)
    agreement = shares[win]
    frozen = tuple(tuple(c) for c in clusters)
    if agreement < agreement_threshold - _TOL:
        return Verdict(ABSTAIN_ANSWER, agreement, entropy, True, frozen, winner)
    if is_unknown(answers[winner]):
        return Verdict(UNKNOWN_ANSWER, agreement, entropy, True, frozen, winner)
    return Verdict(answers[winner].strip(), agreement, entropy, False, frozen, winner)


def vote(answers: Sequence[str], embeddings: np.ndarray, threshold: float) -> tuple[int, float]:
    """One member's answers across passage orderings -> (index of its voted answer, consistency).

    The vote is the medoid of the largest cluster; consistency = that cluster's size / len(answers).
    Between equally large clusters a real answer beats "unknown": an ordering that buried the passage
    is the likelier reason for "unknown" than a real answer made up. Raises ValueError for no answers.
    """
    n = len(answers)
    if n == 0:
        raise ValueError("vote needs at least one answer")
    clusters = cluster(answers, embeddings, threshold)
    sizes = [float(len(c)) for c in clusters]
    best = clusters[_pick(clusters, sizes, answers)]
    return _medoid(best, _similarity(embeddings, n), [1.0] * n), len(best) / n
