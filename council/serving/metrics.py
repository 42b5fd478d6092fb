"""The council's Prometheus metrics, defined through `ray.serve.metrics` and exported by Ray's metrics agent."""

from __future__ import annotations

import logging
import threading
from typing import Any

from council.errors import MEMBER_TIMEOUT, CouncilError
from council.types import CouncilAnswer, MemberAnswer

log = logging.getLogger(__name__)

# Prometheus names, as Ray exports them: `ray_` in front, `_total` after a counter's name.
REQUESTS = "council_requests"
REQUEST_LATENCY = "council_request_latency_s"
AGREEMENT = "council_agreement"
ABSTENTIONS = "council_abstentions"
DEGRADED = "council_degraded"
MEMBER_LATENCY = "council_member_latency_s"
MEMBER_ERRORS = "council_member_errors"
MEMBER_CANCELLED = "council_member_cancelled"
CONTEXT_TOKENS = "council_context_tokens"
TRIMMED_CHUNKS = "council_trimmed_chunks"
TOKENS_TRIMMED = "council_tokens_trimmed"
ESCALATIONS = "council_escalations"

_LATENCY_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
_AGREEMENT = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0]
_TOKENS = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]


def answer_outcome(answer: CouncilAnswer) -> str:
    """`abstained`, `degraded` (a member failed or timed out) or `ok` for an answered request.

    An abstention counts as `abstained` even when a member was also lost: the caller got no answer, and
    `council_degraded` counts the loss on its own.
    """
    if answer.abstained:
        return "abstained"
    return "degraded" if answer.degraded else "ok"


def failure_outcome(error: BaseException) -> tuple[str, str]:
    """(`refused`, error type) when the council said no on purpose — bad input, auth, overload, quorum —
    else (`error`, `internal_error`): a bug or an unexpected failure (the caller saw a 500)."""
    if isinstance(error, CouncilError) and error.status != 500:
        return "refused", error.type
    return "error", "internal_error"


def member_failure(member: MemberAnswer) -> str | None:
    """`timeout`, `error` or `cancelled` (early exit) for a member that gave no answer, else None."""
    if member.error is not None:
        return "timeout" if member.error_code == MEMBER_TIMEOUT else "error"
    return "cancelled" if member.cancelled else None


class CouncilMetrics:
    """The council's metrics in one process (Ray registers each name once per process: use `get_metrics`).

    Serve adds the deployment, replica and application tags itself when this runs inside a replica.
    """

    def __init__(self) -> None:
        from ray.serve import metrics

        # Typed as Any: Ray annotates tag_keys as a one-element tuple.
        Counter: Any = metrics.Counter
        Histogram: Any = metrics.Histogram
        self.requests = Counter(REQUESTS, "Council requests by outcome and reason.", tag_keys=("outcome", "reason"))
        self.latency = Histogram(REQUEST_LATENCY, "Seconds per request.", _LATENCY_S, tag_keys=("outcome",))
        self.agreement = Histogram(AGREEMENT, "Weighted agreement of answered requests.", _AGREEMENT)
        self.abstentions = Counter(ABSTENTIONS, "Requests where the council abstained.")
        self.degraded = Counter(DEGRADED, "Answers given while a member failed or timed out.")
        self.member_latency = Histogram(MEMBER_LATENCY, "Seconds per member answer.", _LATENCY_S, tag_keys=("member",))
        self.member_errors = Counter(MEMBER_ERRORS, "Member failures by kind.", tag_keys=("member", "kind"))
        self.member_cancelled = Counter(MEMBER_CANCELLED, "Members cancelled by early exit.", tag_keys=("member",))
        self.context_tokens = Histogram(
            CONTEXT_TOKENS, "Context tokens a member got after trimming.", _TOKENS, tag_keys=("member",)
        )
        self.trimmed_chunks = Counter(
            TRIMMED_CHUNKS, "Retrieved chunks cut or dropped to fit a member's budget.", tag_keys=("member", "kind")
        )
        self.tokens_trimmed = Counter(
            TOKENS_TRIMMED, "Context tokens removed to fit a member's budget.", tag_keys=("member",)
        )
        self.escalations = Counter(
            ESCALATIONS,
            "Answered requests run with escalation, by outcome: settled (the first members alone) or why the rest "
            "were asked (unanswered, abstained, disagreed, unsure).",
            tag_keys=("outcome",),
        )

    def record_answer(self, answer: CouncilAnswer, elapsed_s: float) -> None:
        """Count one answered request: outcome, agreement, each member's latency or failure, the trims."""
        outcome = answer_outcome(answer)
        self.requests.inc(1, tags={"outcome": outcome, "reason": "answered"})
        self.latency.observe(elapsed_s, tags={"outcome": outcome})
        self.agreement.observe(float(answer.agreement))
        if answer.abstained:
            self.abstentions.inc(1)
        if answer.degraded:
            self.degraded.inc(1)
        if answer.escalation is not None:
            self.escalations.inc(1, tags={"outcome": answer.escalation})
        for m in answer.members:
            kind = member_failure(m)
            if kind is None:
                self.member_latency.observe(float(m.latency_s), tags={"member": m.name})
            elif kind == "cancelled":
                self.member_cancelled.inc(1, tags={"member": m.name})
            else:
                self.member_errors.inc(1, tags={"member": m.name, "kind": kind})
        for t in answer.trims:
            self.context_tokens.observe(max(0, t.used_tokens), tags={"member": t.member})
            for kind, ids in (("cut", t.cut), ("dropped", t.dropped)):
                if ids:
                    self.trimmed_chunks.inc(len(ids), tags={"member": t.member, "kind": kind})
            if t.trimmed_tokens > 0:
                self.tokens_trimmed.inc(t.trimmed_tokens, tags={"member": t.member})

    def record_failure(self, error: BaseException, elapsed_s: float, cause: BaseException | None = None) -> None:
        """Count one request that got no answer. Each request is counted once, where it entered the council:
        the HTTP app for HTTP requests, RouterIngress's handle methods for handle calls.

        `cause` is what `error` means to the caller when it differs (a Ray wrapper's council error).
        """
        meaning = cause if cause is not None else error
        outcome, reason = failure_outcome(meaning)
        self.requests.inc(1, tags={"outcome": outcome, "reason": reason})
        self.latency.observe(elapsed_s, tags={"outcome": outcome})
        # Under quorum, the members' failures travel in the error's details: count them too.
        failed = meaning.details.get("members") if isinstance(meaning, CouncilError) else None
        for name, why in failed.items() if isinstance(failed, dict) else ():
            kind = "timeout" if str(why).startswith(MEMBER_TIMEOUT) else "cancelled" if why == "cancelled" else "error"
            counter = self.member_cancelled if kind == "cancelled" else self.member_errors
            counter.inc(1, tags={"member": str(name)} | ({} if kind == "cancelled" else {"kind": kind}))


_instance: CouncilMetrics | None = None
_lock = threading.Lock()


def get_metrics() -> CouncilMetrics | None:
    """This process's CouncilMetrics, created on first use; None when metrics cannot be set up here."""
    global _instance
    with _lock:
        if _instance is None:
            try:
                _instance = CouncilMetrics()
            except Exception as e:  # metrics must never stop the council from answering
                log.warning("council metrics are off: %s: %s", type(e).__name__, e)
                return None
        return _instance


def record_answer(answer: CouncilAnswer, elapsed_s: float) -> None:
    """Count an answered request in this process's metrics; a metrics fault is logged, never raised."""
    _record("record_answer", answer, elapsed_s)


def record_failure(error: BaseException, elapsed_s: float, cause: BaseException | None = None) -> None:
    """Count a request that got no answer (refused or failed); a metrics fault is logged, never raised."""
    _record("record_failure", error, elapsed_s, cause)


def _record(method: str, *args: Any) -> None:
    metrics = get_metrics()
    if metrics is None:
        return
    try:
        getattr(metrics, method)(*args)
    except Exception as e:
        log.warning("recording a council metric failed: %s: %s", type(e).__name__, e)
