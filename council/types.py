"""Frozen dataclasses that cross module lines: chunks, requests, member answers, the council's answer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

ORDERINGS: tuple[str, ...] = ("relevance", "edges", "reverse", "random")


@dataclass(frozen=True)
class Chunk:
    """One retrieved (or ephemeral) passage. `score` is the retrieval relevance, higher is better."""

    id: str
    text: str
    source: str = ""
    tenant: str = "public"
    domain: str | None = None
    score: float = 0.0
    ephemeral: bool = False


@dataclass(frozen=True)
class Document:
    """A caller-supplied document (ephemeral for one request, or to ingest)."""

    text: str
    source: str = "request"
    domain: str | None = None


@dataclass(frozen=True)
class Generation:
    """What a specialist's model produced for one prompt."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    # The stripped text's sentence embedding, when the member's replica computed it (see AggregatorConfig).
    embedding: tuple[float, ...] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class RouteDecision:
    """The router's scores for every specialist and the chosen top-k, best first."""

    scores: Mapping[str, float]
    chosen: tuple[str, ...]


@dataclass(frozen=True)
class TrimReport:
    """How one member's context was packed into its token budget."""

    member: str
    budget_tokens: int
    used_tokens: int
    kept: tuple[str, ...] = ()
    cut: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    ordering: str = "relevance"
    # Tokens of retrieved text that did not make it in: the cut sentences and the dropped chunks.
    trimmed_tokens: int = 0


@dataclass(frozen=True)
class MemberAnswer:
    """One specialist's contribution. A failure is data: `error` is set and `answer` is None."""

    name: str
    route_score: float
    answer: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    cancelled: bool = False
    # With several orderings: each ordering's answer, and the share that agree with the member's vote.
    ordering_answers: tuple[str, ...] = ()
    consistency: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.cancelled and self.answer is not None


@dataclass(frozen=True)
class AskRequest:
    """One question to the council with its per-request options (None means: use the config)."""

    question: str
    k: int | None = None
    tenant: str = "public"
    budget_tokens: int | None = None
    ordering: str | None = None
    orderings: int | None = None
    documents: tuple[Document, ...] = ()
    specialists: tuple[str, ...] | None = None
    early_exit: bool | None = None
    use_retrieval: bool = True


@dataclass(frozen=True)
class CouncilAnswer:
    """The council's verdict with everything needed to audit it."""

    question: str
    answer: str
    agreement: float
    entropy: float
    abstained: bool
    degraded: bool
    members: tuple[MemberAnswer, ...]
    sources: tuple[Chunk, ...] = ()
    trims: tuple[TrimReport, ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict)
    route: RouteDecision | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the HTTP API's response body)."""
        d = asdict(self)
        d["members"] = [asdict(m) for m in self.members]
        d["timings"] = dict(self.timings)
        if self.route is not None:
            d["route"] = {"scores": dict(self.route.scores), "chosen": list(self.route.chosen)}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CouncilAnswer:
        """Inverse of `to_dict` (used by the HTTP client)."""
        route = d.get("route")
        return cls(
            question=d["question"],
            answer=d["answer"],
            agreement=float(d["agreement"]),
            entropy=float(d["entropy"]),
            abstained=bool(d["abstained"]),
            degraded=bool(d["degraded"]),
            members=tuple(
                MemberAnswer(**{**m, "ordering_answers": tuple(m.get("ordering_answers") or ())})
                for m in d["members"]
            ),
            sources=tuple(Chunk(**c) for c in d.get("sources", ())),
            trims=tuple(
                TrimReport(**{**t, **{k: tuple(t.get(k) or ()) for k in ("kept", "cut", "dropped")}})
                for t in d.get("trims", ())
            ),
            timings=dict(d.get("timings", {})),
            route=RouteDecision(scores=dict(route["scores"]), chosen=tuple(route["chosen"])) if route else None,
        )
