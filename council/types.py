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
    # Why decoding ended: "stop" (end of sequence or a stop string), "length" (max_tokens), "abort".
    finish_reason: str = "stop"
    # The model's own confidence in the text: its tokens' geometric-mean probability (None: the engine gave none).
    confidence: float | None = None


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
class MemberDelta:
    """A piece of one member's answer as its engine produces it (a streamed deliberation's token events)."""

    name: str
    text: str


@dataclass(frozen=True)
class SynthesisDelta:
    """A piece of the chairman's synthesis as its engine produces it (a streamed deliberation's last tokens)."""

    chairman: str
    text: str


@dataclass(frozen=True)
class MemberAnswer:
    """One specialist's contribution. A failure is data: `error` is set and `answer` is None. `error` is what a
    caller may see ("code: reason (incident id)", never an exception's text); `error_code` is its stable code and
    `incident` the id under which the ingress logged the detail."""

    name: str
    route_score: float
    answer: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    cancelled: bool = False
    error_code: str | None = None
    incident: str | None = None
    # With several orderings: each ordering's answer, and the share that agree with the member's vote.
    ordering_answers: tuple[str, ...] = ()
    consistency: float | None = None
    # Why the member's decoding ended ("stop", "length"); None when it did not answer.
    finish_reason: str | None = None
    # The member's own confidence in its answer (its tokens' geometric-mean probability, `Generation.confidence`);
    # None when its engine gives none.
    confidence: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.cancelled and self.answer is not None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MemberAnswer:
        """Inverse of `dataclasses.asdict` (the HTTP client, stream events)."""
        return cls(**{**d, "ordering_answers": tuple(d.get("ordering_answers") or ())})


# The decoding settings a request may set for its members (OpenAI chat fields of the same names).
SAMPLING_FIELDS: tuple[str, ...] = ("max_tokens", "temperature", "top_p", "seed", "stop")
CHAT_ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class Conversation:
    """What a chat request adds to its question, for every member it reaches: the messages before the last user
    message (system messages and earlier turns, as (role, text), in order) and decoding settings
    (`SAMPLING_FIELDS`; absent: the member's configured `generation`)."""

    history: tuple[tuple[str, str], ...] = ()
    sampling: Mapping[str, Any] = field(default_factory=dict)

    def for_member(self, max_new_tokens: int) -> Conversation:
        """This conversation for a member whose configured limit is `max_new_tokens`: max_tokens capped to it."""
        asked = self.sampling.get("max_tokens")
        if asked is None or asked <= max_new_tokens:
            return self
        return Conversation(self.history, {**self.sampling, "max_tokens": max_new_tokens})


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
    # Ask the top members first and the rest of the top-k only when they do not settle it (router.escalation; True
    # with none configured: its defaults); False: ask all k at once.
    escalation: bool | None = None
    use_retrieval: bool = True
    # A chat request's history and decoding settings (the OpenAI route); None: a plain question.
    conversation: Conversation | None = None
    # Let the configured chairman (aggregator.chairman) write the answer; False: the voted answer.
    synthesis: bool = True


@dataclass(frozen=True)
class Synthesis:
    """The chairman's final answer, written from the members' answers (anonymised and shuffled).

    `labels` maps each label the chairman saw to the member it stands for (for audit: the chairman saw only the
    labels); `voted_answer` is what the council's vote chose; `failures` are the chairmen tried before this one.
    """

    text: str
    chairman: str
    latency_s: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    voted_answer: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    failures: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Synthesis:
        return cls(**{**d, "labels": dict(d.get("labels") or {}), "failures": tuple(d.get("failures") or ())})


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
    # The chairman's answer when one is configured and wrote it (`answer` is then its text, unless the council
    # abstained); else, when every chairman failed, why: `answer` is then the voted answer.
    synthesis: Synthesis | None = None
    synthesis_failed: str | None = None
    # The members whose answers fell together (by name), the cluster the council's answer came from first.
    clusters: tuple[tuple[str, ...], ...] = ()
    # With escalation: "settled" (the first members' answers decided it; `members` holds only them), else why more
    # of the top-k were asked: "unanswered", "abstained", "disagreed" or "unsure". None: every chosen member asked
    # at once.
    escalation: str | None = None

    @property
    def escalated(self) -> bool:
        """The first members did not settle the question, so the rest of the top-k were asked too."""
        return self.escalation not in (None, "settled")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the HTTP API's response body)."""
        d = asdict(self)
        d["members"] = [asdict(m) for m in self.members]
        d["timings"] = dict(self.timings)
        d["clusters"] = [list(c) for c in self.clusters]
        if self.route is not None:
            d["route"] = {"scores": dict(self.route.scores), "chosen": list(self.route.chosen)}
        if self.synthesis is not None:
            d["synthesis"] = {**asdict(self.synthesis), "labels": dict(self.synthesis.labels)}
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
            members=tuple(MemberAnswer.from_dict(m) for m in d["members"]),
            sources=tuple(Chunk(**c) for c in d.get("sources", ())),
            trims=tuple(
                TrimReport(**{**t, **{k: tuple(t.get(k) or ()) for k in ("kept", "cut", "dropped")}})
                for t in d.get("trims", ())
            ),
            timings=dict(d.get("timings", {})),
            route=RouteDecision(scores=dict(route["scores"]), chosen=tuple(route["chosen"])) if route else None,
            synthesis=Synthesis.from_dict(d["synthesis"]) if d.get("synthesis") else None,
            synthesis_failed=d.get("synthesis_failed"),
            clusters=tuple(tuple(c) for c in d.get("clusters") or ()),
            escalation=d.get("escalation"),
        )


# What a deliberation yields as it happens (council.pipeline.Council.deliberate, Client.astream): the route
# chosen, pieces of a member's answer or of the chairman's synthesis, each member's answer as it lands, and last the
# council's answer.
DeliberationEvent = RouteDecision | MemberDelta | MemberAnswer | SynthesisDelta | CouncilAnswer
