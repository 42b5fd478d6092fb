"""The council's metrics: outcome classification and what one answer or failure records (Ray not started)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from council.errors import InvalidRequest, Overloaded, QuorumNotMet, Unauthorized
from council.serving import metrics
from council.types import CouncilAnswer, MemberAnswer, TrimReport


class _Probe:
    """Stands in for one Ray metric: remembers (value, tags) of every inc/observe."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, dict[str, str]]] = []

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.calls.append((value, dict(tags or {})))

    observe = inc


@pytest.fixture
def probed() -> metrics.CouncilMetrics:
    m = metrics.CouncilMetrics()
    for name, value in list(vars(m).items()):
        if hasattr(value, "record") or hasattr(value, "inc") or hasattr(value, "observe"):
            setattr(m, name, _Probe())
    return m


def _answer(**kw: Any) -> CouncilAnswer:
    members = (
        MemberAnswer("a", 0.4, answer="varn", latency_s=0.12),
        MemberAnswer("b", 0.3, error="member_timeout: timed out after 2s", error_code="member_timeout"),
        MemberAnswer("c", 0.2, error="member_error: the member failed (incident 0a1b2c3d4e5f)",
                     error_code="member_error", incident="0a1b2c3d4e5f"),
        MemberAnswer("d", 0.1, cancelled=True),
    )
    trims = (TrimReport("a", 64, 60, kept=("1",), cut=("2",), dropped=("3", "4"), trimmed_tokens=75),)
    fields: dict[str, Any] = dict(
        question="q", answer="varn", agreement=0.8, entropy=0.1, abstained=False, degraded=True, members=members
    )
    return CouncilAnswer(**{**fields, "trims": trims, **kw})


def test_outcomes() -> None:
    assert metrics.answer_outcome(_answer(degraded=False)) == "ok"
    assert metrics.answer_outcome(_answer()) == "degraded"
    assert metrics.answer_outcome(_answer(abstained=True)) == "abstained"
    assert metrics.failure_outcome(Overloaded("full")) == ("refused", "overloaded")
    assert metrics.failure_outcome(QuorumNotMet("0 of 3")) == ("refused", "quorum_not_met")
    assert metrics.failure_outcome(Unauthorized("no")) == ("refused", "unauthorized")
    assert metrics.failure_outcome(InvalidRequest("bad")) == ("refused", "invalid_request")
    assert metrics.failure_outcome(RuntimeError("bug")) == ("error", "internal_error")
    kinds = [metrics.member_failure(m) for m in _answer().members]
    assert kinds == [None, "timeout", "error", "cancelled"]


def test_record_answer(probed: Any) -> None:
    probed.record_answer(_answer(), 0.5)
    assert probed.requests.calls == [(1, {"outcome": "degraded", "reason": "answered"})]
    assert probed.agreement.calls == [(0.8, {})]
    assert len(probed.degraded.calls) == 1 and probed.abstentions.calls == []
    assert probed.member_latency.calls == [(0.12, {"member": "a"})]
    errors = Counter((t["member"], t["kind"]) for _, t in probed.member_errors.calls)
    assert errors == {("b", "timeout"): 1, ("c", "error"): 1}
    assert probed.member_cancelled.calls == [(1, {"member": "d"})]
    assert probed.context_tokens.calls == [(60, {"member": "a"})]
    assert sorted(probed.trimmed_chunks.calls, key=lambda c: c[1]["kind"]) == [
        (1, {"member": "a", "kind": "cut"}),
        (2, {"member": "a", "kind": "dropped"}),
    ]
    assert probed.tokens_trimmed.calls == [(75, {"member": "a"})]
    assert probed.escalations.calls == []  # escalation was off for this answer


def test_escalation_outcomes_are_counted(probed: Any) -> None:
    probed.record_answer(_answer(escalation="settled"), 0.2)
    probed.record_answer(_answer(escalation="disagreed"), 0.4)
    assert probed.escalations.calls == [(1, {"outcome": "settled"}), (1, {"outcome": "disagreed"})]


def test_quorum_failures_count_each_members_failure(probed: Any) -> None:
    members = {"a": "member_error: the member failed (incident 0a1b2c3d4e5f)",
               "b": "member_timeout: timed out after 2s", "c": "cancelled"}
    probed.record_failure(QuorumNotMet("0 of 3", details={"members": members}), 2.0)
    assert probed.requests.calls == [(1, {"outcome": "refused", "reason": "quorum_not_met"})]
    kinds = sorted((t["member"], t["kind"]) for _, t in probed.member_errors.calls)
    assert kinds == [("a", "error"), ("b", "timeout")]
    assert probed.member_cancelled.calls == [(1, {"member": "c"})]


def test_real_metrics_record_without_raising() -> None:
    """Outside a replica (and without Ray) recording is harmless: metrics never fail a request."""
    metrics.record_answer(_answer(), 0.5)
    metrics.record_failure(RuntimeError("bug"), 0.1)
    assert metrics.get_metrics() is metrics.get_metrics()
