"""Backpressure: queue bounds come from the config, an overload is refused fast with 503 + Retry-After instead
of queued without bound, and the replicas' memory stays flat."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from council.testing import harness
from tests.serve.conftest import App
from tests.serve.reliability.conftest import deploy, undeploy, write_figures

pytestmark = [pytest.mark.load, pytest.mark.timeout(300)]

BURST = 6 * (harness.INGRESS_ONGOING + harness.INGRESS_QUEUED)  # six times what the ingress admits
ROUNDS = 3


@pytest.fixture(scope="module")
def bp_app(serve_url: str, tiny_models: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    config, faults = harness.backpressure_config(tiny_models, tmp_path_factory.mktemp("rel-bp") / "store")
    app = deploy("rel_bp", config, serve_url, faults=faults)
    yield app
    undeploy(app.name)


async def test_overload_is_refused_fast_and_memory_stays_flat(bp_app: App, tmp_path: Path) -> None:
    figures, results = await harness.overload(bp_app.url + "/v1/council", bp_app.name, burst_n=BURST, rounds=ROUNDS)
    write_figures(tmp_path / "backpressure.json", "backpressure", figures)

    assert figures["replicas"] == 3, figures  # ingress (trimming and agreement in it), retrieval, one specialist
    assert figures["other"] == 0, [r for r in results if not (r.answered or r.refused)][:5]
    capacity = figures["capacity"]
    # At most the admitted ones (plus those that found a slot freed during the burst) are answered.
    assert figures["refused"] >= ROUNDS * (BURST - 2 * capacity), figures
    assert figures["answered"] >= ROUNDS * harness.INGRESS_ONGOING, figures
    refused = [r for r in results if r.refused]
    assert all(r.retry_after is not None and int(r.retry_after) >= 1 for r in refused), refused[:3]
    # Refused without waiting for a slot: far faster than any admitted request could finish.
    assert figures["refusal_p95_ms"] < 1000 * harness.DELAY_S, figures
    assert min(r.latency_s for r in results if r.answered) >= harness.DELAY_S
    assert figures["rss_after_mb"] - figures["rss_before_mb"] < 64, figures


def test_a_specialist_refuses_beyond_its_own_bounds(bp_app: App) -> None:
    """A caller of the specialist deployment (here: the test) gets BackPressureError past ongoing + queued."""
    from ray import serve
    from ray.serve.exceptions import BackPressureError

    handle = serve.get_deployment_handle("Specialist_slow", app_name=bp_app.name)
    responses = [handle.generate.remote("q", []) for _ in range(8)]
    refused = 0
    for response in responses:
        try:
            response.result(timeout_s=60)
        except BackPressureError:
            refused += 1
    assert refused >= 8 - (harness.SPECIALIST_ONGOING + harness.SPECIALIST_QUEUED) - 1, refused
