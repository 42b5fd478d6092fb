"""Where the CPU goes while concurrent clients load the council: CPU seconds per process over one load cell.

    .venv/bin/python bench/cpu_profile.py                    # 64 clients, 128 questions, batch 32, wait 0.01 s
    .venv/bin/python bench/cpu_profile.py --batch-wait-s 0.1 # the members' batch wait raised

Deploys the same council as `overhead.py` (k tiny random GPT-2 members, retrieval off), warms it, then reads
every process's user+system CPU time from /proc before and after the cell (Linux only), and prints each
member replica's batch counters and the aggregator's embedding counters.
"""

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402  (sets Ray's environment first)
from ray import serve  # noqa: E402


def cpu_seconds() -> dict[int, tuple[float, str]]:
    """user + system CPU seconds and the command line of every process."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
        except OSError:
            continue
        out[int(pid)] = ((int(fields[11]) + int(fields[12])) / tick, cmd[:70])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--questions", type=int, default=128)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batch-wait-s", type=float, default=0.01)
    p.add_argument("--port", type=int, default=8078)
    args = p.parse_args()
    import ray

    from council.client import Client
    from council.serving.app import build_app

    work = Path(tempfile.mkdtemp(prefix="council-cpu-"))
    models = overhead.build_models(work / "models", args.k, None)
    cfg_args = argparse.Namespace(
        clients=[args.clients], new_tokens=args.new_tokens, batch_wait_s=args.batch_wait_s, k=args.k
    )
    config = overhead.council_config(models, cfg_args, args.batch_size, work / "chroma")
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(build_app({"config_dict": config}), name="council", route_prefix="/")
        client = Client.connect("council")
        opts = overhead.ask_options(config)
        prompts = itertools.cycle(overhead.questions(1024))

        async def cell(n: int) -> float:
            return await overhead.throughput(lambda q: client.aask(q, **opts), prompts, args.clients, n)

        asyncio.run(cell(min(32, args.questions)))  # warm
        before, t0 = cpu_seconds(), time.perf_counter()
        qps = asyncio.run(cell(args.questions))
        wall, after = time.perf_counter() - t0, cpu_seconds()
        used = sorted(((after[p][0] - before[p][0], after[p][1]) for p in after if p in before), reverse=True)
        print(f"{args.questions} questions, {args.clients} clients: {qps:.2f} q/s in {wall:.1f} s")
        print("| CPU s | ms per question | process |\n|---:|---:|---|")
        for seconds, cmd in used[:12]:
            print(f"| {seconds:.2f} | {1000 * seconds / args.questions:.0f} | {cmd} |")
        for name, stats in overhead.replica_stats("council", config).items():
            print(name, stats)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
