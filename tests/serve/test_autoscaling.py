"""Serve autoscaling, shown working: a specialist scales from 1 replica up under a burst and back down after it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.serve.conftest import council_config

pytestmark = pytest.mark.load

APP = "autoscale"
MAX_REPLICAS = 3
BURST_LIMIT_S = 120.0  # the burst stops once a second replica runs, or after this long
SETTLE_LIMIT_S = 90.0
IN_FLIGHT = 32


def replicas(deployment: str) -> dict[str, int]:
    """Replica count per state (RUNNING, STARTING, STOPPING, ...) of one deployment, as `serve status` shows."""
    from ray import serve

    states = serve.status().applications[APP].deployments[deployment].replica_states
    return {str(getattr(state, "value", state)): n for state, n in states.items() if n}


def running_replicas(deployment: str) -> int:
    """RUNNING replicas of one deployment of the test app."""
    return replicas(deployment).get("RUNNING", 0)


def test_specialist_scales_up_under_a_burst_and_back_down(
    serve_url: str, tiny_models: list[Path], tmp_path: Path
) -> None:
    from ray import serve

    from council.serving.app import build_app, specialist_deployment_name

    config: dict[str, Any] = council_config(tiny_models[:1], tmp_path / "store", {"physics": "forces and energy"})
    config["specialists"][0]["deployment"]["autoscaling"] = {
        "min_replicas": 1,
        "max_replicas": MAX_REPLICAS,
        "target_ongoing_requests": 1,
        # Short delays and a fast metrics loop so that the whole cycle fits in a test.
        "upscale_delay_s": 1,
        "downscale_delay_s": 3,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 2,
    }
    serve.run(build_app({"config_dict": config}), name=APP, route_prefix=f"/{APP}")
    deployment = specialist_deployment_name("physics")
    try:
        assert running_replicas(deployment) == 1
        # The burst goes to the specialist itself: through the ingress, on a busy 2-core machine, the ingress's
        # own work (embedding each question) can be the bottleneck and the specialist would never queue.
        handle = serve.get_deployment_handle(deployment, app_name=APP)
        question, passages = "What keeps the moon in orbit?", ["Gravity keeps the moon in orbit around the earth."]

        # The burst: keep IN_FLIGHT questions outstanding until Serve has added replicas (bounded in time).
        # t_decided: Serve started a second replica; t_up: it runs (a new replica loads its model first).
        t0 = time.monotonic()
        in_flight: list[Any] = []
        peak, answered, t_decided, t_up = 1, 0, None, None
        seen: list[dict[str, int]] = []
        while time.monotonic() - t0 < BURST_LIMIT_S:
            in_flight += [handle.generate.remote(question, passages) for _ in range(IN_FLIGHT - len(in_flight))]
            in_flight.pop(0).result(timeout_s=60)
            answered += 1
            if answered % 8 == 0:
                state = replicas(deployment)
                seen.append(state)
                if t_decided is None and sum(state.values()) > 1:
                    t_decided = time.monotonic() - t0
                peak = max(peak, state.get("RUNNING", 0))
                if peak >= 2:
                    t_up = time.monotonic() - t0
                    break
        for response in in_flight:
            response.result(timeout_s=60)
        t_burst = time.monotonic() - t0
        assert t_decided is not None, f"Serve never added a replica in {t_burst:.0f}s of burst: {seen[-5:]}"
        assert t_up is not None, f"a second replica never ran within {BURST_LIMIT_S}s: {seen[-5:]}"
        assert peak <= MAX_REPLICAS

        # Quiet: back down to min_replicas.
        t1 = time.monotonic()
        while running_replicas(deployment) > 1:
            assert time.monotonic() - t1 < SETTLE_LIMIT_S, f"still {running_replicas(deployment)} replicas"
            time.sleep(0.5)
        t_down = time.monotonic() - t1
        print(
            f"serve autoscaling: scale-up decided {t_decided:.1f}s into the burst, {peak} replicas running at "
            f"{t_up:.1f}s ({answered} answers), back to 1 after {t_down:.1f}s of quiet"
        )
    finally:
        serve.delete(APP)
