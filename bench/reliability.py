"""Reliability figures in one run: replica loss under steady load, and an overload burst against tight bounds.

    python bench/reliability.py [--load-s 60] [--kills 8] [--rounds 3] [--json figures.json]

Starts a fresh local Ray (loopback only) with tiny random specialists, deploys the two scenario apps of
council/testing/harness.py one after the other, and prints what happened to every request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from council.testing import harness  # noqa: E402  (after the environment: it is read at import)
from council.testing.tiny import build_tiny_gpt2  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _deploy(name: str, config: dict[str, Any], url: str, **args: Any) -> str:
    from ray import serve

    from council.serving.app import build_app

    serve.run(build_app({"config_dict": config, **args}), name=name, route_prefix=f"/{name}")
    return f"{url}/{name}/v1/council"


async def _scenarios(url: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from ray import serve

    models = [build_tiny_gpt2(work / f"gpt2-{seed}", seed=seed) for seed in range(3)]
    figures: dict[str, Any] = {}

    ask = _deploy("rel_loss", harness.loss_config(models, work / "loss-store"), url)
    await harness.burst(ask, n=1, timeout_s=120)
    figures["replica_loss"], _ = await harness.replica_loss(
        ask,
        "rel_loss",
        load_s=args.load_s,
        kill_every_s=args.kill_every_s,
        kills=args.kills,
        concurrency=args.concurrency,
        timeout_s=45.0,
    )
    serve.delete("rel_loss")

    config, faults = harness.backpressure_config(models, work / "bp-store")
    ask = _deploy("rel_bp", config, url, faults=faults)
    burst_n = args.overload * (harness.INGRESS_ONGOING + harness.INGRESS_QUEUED)
    figures["backpressure"], _ = await harness.overload(ask, "rel_bp", burst_n=burst_n, rounds=args.rounds)
    serve.delete("rel_bp")
    return figures


def _print(figures: dict[str, Any]) -> None:
    loss, bp = figures["replica_loss"], figures["backpressure"]
    print(
        f"replica loss: {loss['kills']} specialist replicas killed during {loss['sent']} requests: "
        f"{loss['answered']} answered ({loss['degraded']} degraded), {loss['refused']} refused (503), "
        f"{loss['lost']} lost, {loss['other']} other; latency p50 {loss['p50_s']} s, p99 {loss['p99_s']} s, "
        f"max {loss['max_s']} s; "
        + (
            f"full answers {loss['recovery_s']} s after the last kill"
            if loss["recovery_s"] is not None
            else f"no full answer within {harness.RECOVERY_LIMIT_S:g} s of the last kill"
        )
    )
    print(
        f"backpressure: {bp['rounds']} bursts of {bp['burst']} against an ingress that admits {bp['capacity']}: "
        f"{bp['answered']} answered, {bp['refused']} refused (Retry-After {bp['retry_after']}), {bp['other']} other; "
        f"refusal p50 {bp['refusal_p50_ms']} ms, p95 {bp['refusal_p95_ms']} ms "
        f"vs answers p50 {bp['answer_p50_ms']} ms; "
        f"RSS of {bp['replicas']} replicas {bp['rss_before_mb']} -> {bp['rss_after_mb']} MiB"
    )


def main() -> None:
    """Run both scenarios on a fresh local Ray and print (and optionally save) the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load-s", type=float, default=60.0, help="Seconds of steady load while killing replicas.")
    parser.add_argument("--kill-every-s", type=float, default=5.0, help="Seconds between replica kills.")
    parser.add_argument("--kills", type=int, default=8, help="Replicas killed (then the rest of the load recovers).")
    parser.add_argument("--concurrency", type=int, default=3, help="Closed-loop clients of the steady load.")
    parser.add_argument("--overload", type=int, default=6, help="Burst size as a multiple of the ingress capacity.")
    parser.add_argument("--rounds", type=int, default=3, help="Overload bursts.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures to this JSON file.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import ray
    from ray import serve

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        with tempfile.TemporaryDirectory(prefix="council-reliability-") as tmp:
            figures = asyncio.run(_scenarios(f"http://127.0.0.1:{port}", Path(tmp), args))
    finally:
        serve.shutdown()
        ray.shutdown()
    _print(figures)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
