"""Timeouts and wedged replicas: a stuck specialist never holds a request past the member timeout, and Serve
replaces a wedged replica — one whose forward pass hangs (our check_health fails) and one whose process is
stopped outright (the health check itself times out)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from council.testing import harness
from tests.serve.conftest import App
from tests.serve.reliability.conftest import deploy, undeploy, write_figures

pytestmark = [pytest.mark.load, pytest.mark.timeout(420)]

MEMBER_TIMEOUT_S = harness.MEMBER_TIMEOUT_S
SLACK_S = 15.0  # route, retrieve and aggregate on a loaded 2-core machine
REPLACE_WITHIN_S = 120.0


@pytest.fixture(scope="module")
def wedge_app(serve_url: str, tiny_models: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    config, faults = harness.wedge_config(tiny_models, tmp_path_factory.mktemp("rel-wedge") / "store")
    app = deploy("rel_wedge", config, serve_url, faults=faults)
    yield app
    undeploy(app.name)


def _ask(app: App, member: str) -> tuple[dict, float]:
    start = time.monotonic()
    r = app.post("/v1/council", {"question": harness.QUESTIONS[0], "specialists": ["steady", member]})
    elapsed = time.monotonic() - start
    assert r.status_code == 200, r.text[:500]
    return r.json(), elapsed


def _assert_timed_out(app: App, member: str) -> None:
    body, elapsed = _ask(app, member)
    members = {m["name"]: m for m in body["members"]}
    assert body["degraded"] is True and members["steady"]["error"] is None
    assert "timed out" in (members[member]["error"] or ""), members[member]
    assert MEMBER_TIMEOUT_S <= elapsed < MEMBER_TIMEOUT_S + SLACK_S, elapsed


def _replaced(app: App, deployment: str, before: list[str], t0: float) -> float:
    """Seconds from t0 until `deployment` has a live replica that is not one of `before`."""
    while time.monotonic() - t0 < REPLACE_WITHIN_S:
        now = harness.replica_actors(app.name, deployment)
        if now and set(now) - set(before):
            return time.monotonic() - t0
        time.sleep(0.5)
    raise AssertionError(f"Serve did not replace {deployment} within {REPLACE_WITHIN_S:g} s")


def test_hung_forward_pass_times_out_and_fails_the_health_check(wedge_app: App, tmp_path: Path) -> None:
    before = harness.replica_actors(wedge_app.name, "Specialist_stuck")
    assert len(before) == 1
    t0 = time.monotonic()
    _assert_timed_out(wedge_app, "stuck")  # the hung pass keeps running in its thread after the timeout
    replaced_s = _replaced(wedge_app, "Specialist_stuck", before, t0)
    write_figures(tmp_path / "hung.json", "hung forward pass", {"replaced_after_s": round(replaced_s, 1)})


def test_stopped_process_times_out_then_is_replaced(wedge_app: App, tmp_path: Path) -> None:
    """SIGSTOP the replica process: its loop never runs again, so even the health check cannot answer."""
    body, _ = _ask(wedge_app, "frozen")
    assert not body["degraded"]
    before = harness.replica_actors(wedge_app.name, "Specialist_frozen")
    pid = harness.replica_pids(wedge_app.name, "Specialist_frozen")["Specialist_frozen"]
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        _assert_timed_out(wedge_app, "frozen")
        replaced_s = _replaced(wedge_app, "Specialist_frozen", before, t0)
        full_s = None
        while time.monotonic() - t0 < REPLACE_WITHIN_S + 60:
            body, _ = _ask(wedge_app, "frozen")
            if not body["degraded"]:
                full_s = time.monotonic() - t0
                break
            time.sleep(1.0)
        assert full_s is not None, "full answers did not resume after the replacement"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)  # if Serve has not killed it yet, let it shut down normally
    figures = {"replaced_after_s": round(replaced_s, 1), "full_answers_after_s": round(full_s, 1)}
    write_figures(tmp_path / "stopped.json", "stopped replica process", figures)
