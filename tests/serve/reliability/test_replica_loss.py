"""Replica loss under load: every request is answered (degraded when a member is lost) or refused with a clear
503, none hangs past its timeout, none is lost, and Serve brings the killed replicas back."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from council.testing import harness
from tests.serve.conftest import App
from tests.serve.reliability.conftest import write_figures

pytestmark = [pytest.mark.load, pytest.mark.timeout(600)]

MEMBER_TIMEOUT_S = harness.MEMBER_TIMEOUT_S
# Client-side limit: a request without an answer by then counts as hung. Generous: two cores are shared.
REQUEST_TIMEOUT_S = 45.0
# How far past the member timeout an answer may come on a loaded 2-core machine (route, retrieve, aggregate).
SLACK_S = 15.0
LOAD_S, KILL_EVERY_S, KILLS = 60.0, 5.0, 8  # 40 s of kills, then 20 s for the last one to recover


def _full_answer(app: App) -> requests.Response:
    r = app.post("/v1/council", {"question": harness.QUESTIONS[0]})
    assert r.status_code == 200, r.text[:500]
    return r


async def test_replica_loss_under_load(loss_app: App, tmp_path: Path) -> None:
    _full_answer(loss_app)
    figures, results = await harness.replica_loss(
        loss_app.url + "/v1/council",
        loss_app.name,
        load_s=LOAD_S,
        kill_every_s=KILL_EVERY_S,
        kills=KILLS,
        concurrency=3,
        timeout_s=REQUEST_TIMEOUT_S,
    )
    write_figures(tmp_path / "replica_loss.json", "replica loss under load", figures)

    # A tick finds nothing to kill while every specialist is still restarting from the last kills.
    assert figures["kills"] >= 3, figures
    assert figures["lost"] == 0, "a request got no HTTP answer within the client timeout"
    assert figures["other"] == 0, [r for r in results if r.status not in (200, 429, 503)][:5]
    assert figures["answered"] + figures["refused"] == figures["sent"]
    assert figures["degraded"] > 0, "killing replicas under load should have cost some answers a member"
    assert figures["max_s"] < MEMBER_TIMEOUT_S + SLACK_S, figures
    for r in results:
        if r.refused:  # a clear 503: the council's JSON error and when to retry
            assert r.error_type in ("quorum_not_met", "overloaded"), r
            assert r.retry_after is not None, r
        if r.degraded:
            assert r.failed_members, r
    assert figures["recovery_s"] is not None, "full answers did not resume after the last kill"
    live = {name.split("#")[1] for name in harness.replica_actors(loss_app.name, "Specialist_")}
    assert live == {f"Specialist_{n}" for n in harness.LOSS_SPECIALISTS}, "a specialist did not get its replica back"
