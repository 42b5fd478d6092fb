"""Bounded load, replica kills, overload bursts and process memory against a deployed council.

Shared by the reliability tests (tests/serve/reliability) and `bench/reliability.py`. Loopback only; every
run is bounded in requests and seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from council.serving.replicas import kill_replica, replica_actors, running_deployments

log = logging.getLogger(__name__)

QUESTIONS = [
    "What holds the planets in orbit?",
    "Who signed the treaty that ended the war?",
    "How do interest rates move bond prices?",
    "What is the energy of a photon?",
    "Which empire built the old roads?",
    "Why do banks hold reserves?",
]


@dataclass(frozen=True)
class Result:
    """One request's fate. `status` 0: no HTTP answer at all (client timeout or connection error)."""

    start_s: float
    latency_s: float
    status: int
    error_type: str | None = None
    degraded: bool = False
    failed_members: tuple[str, ...] = ()
    retry_after: str | None = None

    @property
    def end_s(self) -> float:
        return self.start_s + self.latency_s

    @property
    def answered(self) -> bool:
        return self.status == 200

    @property
    def refused(self) -> bool:
        return self.status in (429, 503)


def council_config(models: Sequence[Path], store: Path, names: Sequence[str], **router: Any) -> dict[str, Any]:
    """A council over tiny models sized for two shared cores, with fast health checks (period 1 s)."""
    deployment = {"num_cpus": 0.05, "max_batch_size": 4, "batch_wait_timeout_s": 0.01}
    deployment |= {"health_check_period_s": 1.0, "health_check_timeout_s": 3.0}
    specialists = [
        {
            "name": name,
            "model": str(models[i % len(models)]),
            "description": f"{name}: " + QUESTIONS[i % len(QUESTIONS)],
            "generation": {"max_new_tokens": 4, "stop": ["\n"]},
            "deployment": dict(deployment),
        }
        for i, name in enumerate(names)
    ]
    return {
        "specialists": specialists,
        "router": {"k": len(names), "quorum": 1, "num_cpus": 0.05, **router},
        "retrieval": {"path": str(store), "top_n": 2, "num_cpus": 0.05},
        "aggregator": {"num_cpus": 0.05, "default_budget_tokens": 48},
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100, nearest rank) of `values`; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


async def _one(client: httpx.AsyncClient, url: str, body: dict[str, Any], t0: float) -> Result:
    start = time.monotonic()
    try:
        r = await client.post(url, json=body)
    except httpx.HTTPError as e:
        log.warning("request without an HTTP answer: %s: %s", type(e).__name__, e)
        return Result(start - t0, time.monotonic() - start, 0, error_type=type(e).__name__)
    latency = time.monotonic() - start
    try:
        data = r.json()
    except ValueError:  # Serve's own refusals are plain text
        data = {}
    error = data.get("error") if isinstance(data, dict) else None
    members = data.get("members") or [] if isinstance(data, dict) else []
    return Result(
        start_s=start - t0,
        latency_s=latency,
        status=r.status_code,
        error_type=(error or {}).get("type") if isinstance(error, dict) else (None if r.is_success else "plain"),
        degraded=bool(data.get("degraded")) if isinstance(data, dict) else False,
        failed_members=tuple(m["name"] for m in members if m.get("error")),
        retry_after=r.headers.get("retry-after"),
    )


def _client(concurrency: int, timeout_s: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(timeout=timeout_s, limits=limits, trust_env=False)


async def steady_load(
    url: str,
    *,
    duration_s: float,
    concurrency: int,
    timeout_s: float,
    max_requests: int,
    body: Callable[[int], dict[str, Any]] | None = None,
    t0: float | None = None,
) -> list[Result]:
    """`concurrency` closed-loop clients POSTing to `url` until `duration_s` or `max_requests` (each sent once).

    `start_s` of each result is measured from `t0` (default: now), on the `time.monotonic` clock.
    """
    make = body or (lambda i: {"question": QUESTIONS[i % len(QUESTIONS)]})
    counter = itertools.count()
    results: list[Result] = []
    t0 = time.monotonic() if t0 is None else t0
    async with _client(concurrency, timeout_s) as client:

        async def worker() -> None:
            while time.monotonic() - t0 < duration_s:
                i = next(counter)
                if i >= max_requests:
                    return
                results.append(await _one(client, url, make(i), t0))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sorted(results, key=lambda r: r.start_s)


async def burst(url: str, *, n: int, timeout_s: float, body: dict[str, Any] | None = None) -> list[Result]:
    """`n` requests sent at once (an overload), each on its own connection."""
    t0 = time.monotonic()
    async with _client(n, timeout_s) as client:
        payload = body or {"question": QUESTIONS[0]}
        return list(await asyncio.gather(*(_one(client, url, payload, t0) for _ in range(n))))


# ---- replicas ---------------------------------------------------------------------------------


Kill = tuple[float, str]  # (monotonic time, deployment) of one replica kill


async def kill_every(app: str, *, interval_s: float, count: int, prefix: str = "Specialist_") -> list[Kill]:
    """Every `interval_s`, kill one serving replica of `app` (rotating over its deployments), `count` ticks.

    Only a deployment whose replicas are all RUNNING loses one: killing a replica that is still starting
    is a crash loop, which Serve answers with restart backoff — another test. Returns (monotonic time,
    deployment) of each kill.
    """
    kills: list[Kill] = []
    for i in range(count):
        await asyncio.sleep(interval_s)
        running = await asyncio.to_thread(running_deployments, app, prefix)
        live = await asyncio.to_thread(replica_actors, app, prefix)
        by_deployment = {name.split("#")[1]: name for name in live if name.split("#")[1] in running}
        if not by_deployment:
            log.info("tick %d: no deployment of %s is fully running; nothing killed", i, app)
            continue
        deployments = sorted(by_deployment)
        target = deployments[i % len(deployments)]
        await asyncio.to_thread(kill_replica, by_deployment[target])
        kills.append((time.monotonic(), target))
        log.info("killed %s", by_deployment[target])
    return kills


def replica_pids(app: str, deployment_prefix: str = "") -> dict[str, int]:
    """PID of each live replica process of `app` (found by Ray's process title), by deployment name."""
    import psutil

    marker = f"ServeReplica:{app}:{deployment_prefix}"
    found: dict[str, int] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if cmd.startswith("ray::") and marker in cmd:
            found[cmd.split(":")[-1].strip()] = proc.info["pid"]
    return found


def rss_mb(pids: Sequence[int]) -> float:
    """Resident memory of these processes together, in MiB (gone processes count 0)."""
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


# ---- figures ----------------------------------------------------------------------------------


def loss_figures(results: Sequence[Result], kills: Sequence[Kill], t0: float) -> dict[str, Any]:
    """Sent/answered/degraded/refused/lost, latencies, and recovery: from the last kill to the first full answer."""
    last_kill = max((k - t0 for k, _ in kills), default=0.0)
    full_after = [r.end_s for r in results if r.start_s > last_kill and r.answered and not r.degraded]
    return {
        "sent": len(results),
        "answered": sum(r.answered for r in results),
        "degraded": sum(r.answered and r.degraded for r in results),
        "refused": sum(r.refused for r in results),
        "lost": sum(r.status == 0 for r in results),
        "other": sum(r.status not in (0, 200, 429, 503) for r in results),
        "kills": len(kills),
        "p50_s": round(percentile([r.latency_s for r in results], 50), 3),
        "p99_s": round(percentile([r.latency_s for r in results], 99), 3),
        "max_s": round(max((r.latency_s for r in results), default=math.nan), 3),
        "recovery_s": round(min(full_after) - last_kill, 2) if full_after else None,
    }


def burst_figures(results: Sequence[Result]) -> dict[str, Any]:
    """Admitted vs refused requests of a burst and how fast each kind was answered."""
    refused = [r.latency_s for r in results if r.refused]
    admitted = [r.latency_s for r in results if r.answered]
    return {
        "sent": len(results),
        "answered": len(admitted),
        "refused": len(refused),
        "other": sum(not (r.answered or r.refused) for r in results),
        "refusal_p50_ms": round(1000 * percentile(refused, 50), 1),
        "refusal_p95_ms": round(1000 * percentile(refused, 95), 1),
        "answer_p50_ms": round(1000 * percentile(admitted, 50), 1),
        "retry_after": sorted({r.retry_after or "" for r in results if r.refused}),
    }


def as_dicts(results: Sequence[Result]) -> list[dict[str, Any]]:
    """Results as JSON-ready dicts (for the figures file)."""
    return [asdict(r) for r in results]


# ---- scenarios (the tests assert on them, bench/reliability.py prints them) -------------------

LOSS_SPECIALISTS = ("alpha", "beta", "gamma")
MEMBER_TIMEOUT_S = 4.0
RECOVERY_LIMIT_S = 180.0  # after the last kill, how long full answers may take to come back
# Backpressure app: every admitted request waits DELAY_S on the specialist (an injected sleep, no CPU). Long
# enough that "refused before an admitted request could finish" holds with a margin on a loaded 2-core box: a
# burst of 72 refusals measured a p95 of 3.4 s there once (the client's and the proxy's share of the 2 cores).
DELAY_S = 5.0
INGRESS_ONGOING, INGRESS_QUEUED = 2, 2
SPECIALIST_ONGOING, SPECIALIST_QUEUED = 1, 1


def loss_config(models: Sequence[Path], store: Path) -> dict[str, Any]:
    """Three specialists with one replica each, fast health checks, a 4 s member timeout."""
    return council_config(models, store, LOSS_SPECIALISTS, member_timeout_s=MEMBER_TIMEOUT_S)


def backpressure_config(models: Sequence[Path], store: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config, build_app faults): a tightly bounded ingress over one slow specialist with its own bounds."""
    config = council_config(
        models,
        store,
        ["slow"],
        member_timeout_s=30.0,
        max_ongoing_requests=INGRESS_ONGOING,
        max_queued_requests=INGRESS_QUEUED,
    )
    spec = config["specialists"][0]["deployment"]
    spec |= {"max_ongoing_requests": SPECIALIST_ONGOING, "max_queued_requests": SPECIALIST_QUEUED}
    spec["max_batch_size"] = 1
    return config, {"slow": {"delay_s": DELAY_S}}


async def replica_loss(
    url: str, app: str, *, load_s: float, kill_every_s: float, kills: int, concurrency: int, timeout_s: float
) -> tuple[dict[str, Any], list[Result]]:
    """Steady load on `url` while one specialist replica of `app` is killed every `kill_every_s`."""
    t0 = time.monotonic()
    load = asyncio.create_task(
        steady_load(
            url, duration_s=load_s, concurrency=concurrency, timeout_s=timeout_s, max_requests=20 * int(load_s), t0=t0
        )
    )
    done = await kill_every(app, interval_s=kill_every_s, count=kills)
    results = await load
    figures = loss_figures(results, done, t0)
    if figures["recovery_s"] is None and done:
        # Not back within the run: probe once a second for the first full answer. A replica's restart
        # (a new process importing torch and loading its model) takes minutes on a saturated machine.
        last = max(k for k, _ in done)
        async with _client(1, timeout_s) as client:
            while time.monotonic() - last < RECOVERY_LIMIT_S:
                r = await _one(client, url, {"question": QUESTIONS[1]}, t0)
                if r.answered and not r.degraded:
                    figures["recovery_s"] = round(r.end_s - (last - t0), 2)
                    break
                await asyncio.sleep(1.0)
    return figures, results


async def overload(url: str, app: str, *, burst_n: int, rounds: int) -> tuple[dict[str, Any], list[Result]]:
    """`rounds` bursts of `burst_n` requests at once; memory of `app`'s replica processes before and after."""
    await burst(url, n=2, timeout_s=60)  # warm: every replica has served once
    pids = list(replica_pids(app).values())
    before = rss_mb(pids)
    results: list[Result] = []
    for _ in range(rounds):
        results += await burst(url, n=burst_n, timeout_s=60)
        await asyncio.sleep(DELAY_S)  # let the admitted ones finish
    figures = burst_figures(results)
    figures |= {"capacity": INGRESS_ONGOING + INGRESS_QUEUED, "burst": burst_n, "rounds": rounds}
    figures |= {"replicas": len(pids), "rss_before_mb": round(before), "rss_after_mb": round(rss_mb(pids))}
    return figures, results


def wedge_config(models: Sequence[Path], store: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config, faults): `steady`; `stuck`, whose forward pass hangs (its health check fails after 2 s of it);
    `frozen`, healthy until a test stops its process."""
    config = council_config(models, store, ["steady", "stuck", "frozen"], member_timeout_s=MEMBER_TIMEOUT_S)
    config["specialists"][1]["deployment"]["stuck_after_s"] = 2.0
    return config, {"stuck": {"hang_s": 3600.0}}
