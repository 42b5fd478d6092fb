"""The council's Prometheus metrics, scraped from Ray's metrics agent after real requests."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from council.serving import metrics as m
from tests.serve.conftest import App

pytestmark = [pytest.mark.timeout(300)]

Samples = dict[str, list[tuple[dict[str, str], float]]]


def metrics_url() -> str:
    """Ray's Prometheus endpoint on this (only) node: the metrics agent's export port, on loopback."""
    import ray

    [node] = [n for n in ray.nodes() if n["Alive"]]
    return f"http://127.0.0.1:{node['MetricsExportPort']}/metrics"


def scrape(url: str) -> Samples:
    """Every `ray_council_*` sample by name, with its labels."""
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(requests.get(url, timeout=30).text):
        for s in family.samples:
            if s.name.startswith("ray_council_"):
                samples[s.name].append((s.labels, s.value))
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def test_council_metrics_are_exported(council_app: App, guarded_app: App) -> None:
    for _ in range(2):
        assert council_app.post("/v1/council", {"question": "What is energy?", "k": 2}).status_code == 200
    r = guarded_app.post("/v1/council", {"question": "What is energy?", "specialists": ["steady", "broken", "sleepy"]})
    assert r.status_code == 200 and r.json()["degraded"]
    r = guarded_app.post("/v1/council", {"question": "What is energy?", "specialists": ["broken"]})
    assert r.status_code == 503
    r = requests.get(guarded_app.url + "/v1/models", headers={"Authorization": "Bearer wrong"}, timeout=30)
    assert r.status_code == 401

    url = metrics_url()
    council = {"application": "council"}
    guarded = {"application": "council_guarded"}
    expected = [
        (f"ray_{m.REQUESTS}_total", {**council, "outcome": "ok"}, 2),
        (f"ray_{m.REQUESTS}_total", {**guarded, "outcome": "degraded"}, 1),
        (f"ray_{m.REQUESTS}_total", {**guarded, "outcome": "refused", "reason": "quorum_not_met"}, 1),
        (f"ray_{m.REQUESTS}_total", {**guarded, "outcome": "refused", "reason": "unauthorized"}, 1),
        (f"ray_{m.DEGRADED}_total", guarded, 1),
        (f"ray_{m.AGREEMENT}_count", council, 2),
        (f"ray_{m.REQUEST_LATENCY}_count", council, 2),
        (f"ray_{m.MEMBER_LATENCY}_count", {**guarded, "member": "steady"}, 1),
        (f"ray_{m.MEMBER_ERRORS}_total", {**guarded, "member": "broken", "kind": "error"}, 2),
        (f"ray_{m.MEMBER_ERRORS}_total", {**guarded, "member": "sleepy", "kind": "timeout"}, 1),
        (f"ray_{m.CONTEXT_TOKENS}_count", council, 2),
    ]
    # Ray exports what replicas recorded every few seconds: poll.
    deadline = time.monotonic() + 90
    while True:
        samples = scrape(url)
        missing = [(name, labels, n) for name, labels, n in expected if total(samples, name, **labels) < n]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not missing, f"missing from {url}: {missing}; have {sorted(samples)}"
    # Serve tags each sample with its deployment and replica.
    assert all(lab.get("deployment") == "RouterIngress" for lab, _ in samples[f"ray_{m.REQUESTS}_total"])
