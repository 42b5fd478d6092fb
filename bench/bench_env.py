"""What the Serve benchmarks here set before Ray, Serve or transformers load (import this module first), and the
sample-size options they share."""

import argparse
import os
from collections.abc import Callable

# Ray starts its workers at nice 15; the direct side runs in the benchmark's process at nice 0. Same priority for
# both, or any other load on the machine starves the council's replicas and not its members called directly.
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_raylet_start_wait_time_s": "120",  # a busy 2-core machine starts Ray slowly
    "RAY_worker_niceness": "0",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}.items():
    os.environ.setdefault(key, value)


def add_sample_args(p: argparse.ArgumentParser, load: int) -> None:
    """--requests, --warmup, --load (`load` questions per throughput cell by default) and --clients."""
    p.add_argument("--requests", type=int, default=40, help="sequential requests per latency row")
    p.add_argument("--warmup", type=int, default=5, help="untimed requests before each latency row")
    p.add_argument("--load", type=int, default=load, help="questions per throughput cell")
    p.add_argument("--clients", type=int, nargs="+", default=[16, 64], help="concurrent callers")


def serve_locally(port: int, run: Callable[[], int]) -> int:
    """`run()` on a fresh local Ray (never a stale cluster) with Serve's HTTP proxy on loopback `port`, shut down
    after. Logical CPUs only place replicas (several apps of fractional-CPU replicas); each runs one thread."""
    import logging

    import ray
    from ray import serve

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    ray.init(
        address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
        logging_level=logging.WARNING,
    )  # fmt: skip
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        return run()
    finally:
        serve.shutdown()
        ray.shutdown()
