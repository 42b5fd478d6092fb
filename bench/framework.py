"""What the council costs as a framework, against accelerator-like members (issue 17's restated targets).

Members on the simulated engine (`council.backends.simulated`) answer after the time a batched accelerator takes
(`base_s + per_request_s * batch`, at most `max_batch` per batch) and hold no CPU meanwhile, as a GPU member's
replica. So what the CPUs of this machine spend is the council's own work, as on a GPU cluster, and the targets
measure the framework rather than models lighter than the council's own embedder. One run, side by side:

1. added latency: council p50 - the members' own p50 <= 1.5 x (no-op floor p50 + one question embedding),
   by HTTP and by handle, k = 3;
2. throughput with members of `--member-s` per batch (max batch 32): council / the same members called directly
   (the same engines, so the same batching) >= 0.9x at 16 and 64 clients;
3. orchestration CPU per question (every Ray process, psutil) <= 2x the no-op floor app's at the same clients;
4. early exit with one member 5x slower (quorum 2 of 3): p50 <= 1.2x the fast members' own p50.

The real-model rows (target 5) are `bench/overhead.py` and `bench/engines.py`; `make bench` runs all three.
"""

import argparse
import asyncio
import functools
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bench_env  # first (sorted first, too): the environment Ray and transformers read
from overhead_cells import (  # noqa: E402  (beside this script)
    NoopIngress,
    NoopMember,
    cpu_roles,
    cpu_seconds,
    pct,
    questions,
    sample,
    throughput,
    verdict,
    warm_up,
)
from ray import serve  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "council" / "demo"
# Apps beside the default council: label -> its `aggregator` section. The one alternative the simulated members
# leave open: trimming and agreement on their own deployment. (Where answers are embedded is not: a simulated
# member loads no embedder, as a remote one, so the ingress embeds its answers with either setting; overhead.py's
# real members compare that.) The twin is the default council again: how far two identical apps land apart in
# one run, the spread every ratio below carries.
VARIANTS = {
    "AggregatorServer deployment": {"placement": "deployment"},
    "identical twin": {},
}


def simulated_config(args: argparse.Namespace, store: Path, names: Sequence[str], slow: str | None) -> dict[str, Any]:
    """k simulated members (the demo's legal-1 tokenizer for their budgets; no weights load); `slow` answers
    `--straggler` times later. Retrieval is off per request; the question is still embedded (routing)."""
    specs = []
    for name in names:
        base = args.member_s * (args.straggler if name == slow else 1)
        specs.append({
            "name": name, "model": str(DEMO / "models" / "legal-1"), "description": "member", "engine": "simulated",
            "engine_options": {"base_s": base, "max_batch": args.batch_size, "completion_tokens": args.new_tokens},
            "generation": {"max_new_tokens": args.new_tokens, "stop": []},
            "deployment": {"num_cpus": 0.1, "max_ongoing_requests": max(args.clients) * 2, "max_queued_requests": -1},
        })  # fmt: skip
    return {
        "specialists": specs,
        "router": {"k": len(specs), "quorum": 2 if slow else 1, "member_timeout_s": 120, "max_ongoing_requests": 400},
        "retrieval": {"path": str(store)},
    }


def ask_options(config: dict[str, Any], early_exit: bool = False) -> dict[str, Any]:
    return {"use_retrieval": False, "specialists": [s["name"] for s in config["specialists"]], "early_exit": early_exit}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_env.add_sample_args(p, load=384)
    p.add_argument("--k", type=int, default=3, help="council members")
    p.add_argument("--member-s", type=float, default=0.2, help="seconds one batch takes on a member")
    p.add_argument("--batch-size", type=int, default=32, help="most requests per member batch")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens each answer counts")
    p.add_argument("--straggler", type=float, default=5.0, help="how much slower the early-exit row's slow member is")
    p.add_argument("--port", type=int, default=8078, help="loopback HTTP port for this run's Serve")
    p.add_argument("--quick", action="store_true", help="small samples: a few minutes")
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if args.quick:
        args.requests, args.warmup, args.load = 20, 3, 128
    os.environ["COUNCIL_ALLOW_SIMULATED_ENGINE"] = "1"
    return bench_env.serve_locally(args.port, lambda: run(args, Path(tempfile.mkdtemp(prefix="council-framework-"))))


def run(args: argparse.Namespace, work: Path) -> int:
    import httpx

    from council.backends.embeddings import get_embedder
    from council.backends.simulated import SimulatedEngine
    from council.client import Client
    from council.config import CouncilConfig
    from council.serving.app import build_app

    names = [f"m{i}" for i in range(args.k)]
    config = simulated_config(args, work / "chroma", names, None)
    early = simulated_config(args, work / "chroma-early", ["fast0", "fast1", "slow"], "slow")
    # The same council with one choice made the other way, side by side, so each default stays measured: trimming
    # and agreement on their own deployment (the default until this benchmark measured the ingress placement at
    # 1.33-1.43x its throughput), and answers embedded by the ingress instead of each member's replica.
    variants = {}
    for i, (label, aggregator) in enumerate(VARIANTS.items()):
        variants[label] = simulated_config(args, work / f"chroma-v{i}", names, None)
        variants[label]["aggregator"] = aggregator
    member = {"max_ongoing_requests": 256, "ray_actor_options": {"num_cpus": 0.1}}
    noop_members = [serve.deployment(NoopMember, name=f"noop{i}", **member).bind() for i in range(args.k)]  # type: ignore
    noop = serve.deployment(NoopIngress, name="NoopIngress", max_ongoing_requests=400,  # type: ignore[arg-type]
                            ray_actor_options={"num_cpus": 0.1}).bind(noop_members)  # fmt: skip
    t0 = time.perf_counter()
    serve.run_many([
        serve.RunTarget(build_app({"config_dict": config}), name="council", route_prefix="/"),
        serve.RunTarget(noop, name="noop", route_prefix="/noop"),
        serve.RunTarget(build_app({"config_dict": early}), name="early", route_prefix="/early"),
        *(serve.RunTarget(build_app({"config_dict": v}), name=f"variant{i}", route_prefix=f"/variant{i}")
          for i, v in enumerate(variants.values())),
    ])  # fmt: skip
    print(f"deployed the simulated council, the no-op floor and the straggler council in "
          f"{time.perf_counter() - t0:.0f} s")  # fmt: skip

    url = f"http://127.0.0.1:{args.port}"
    http, handle, early_client = Client(url), Client.connect("council"), Client.connect("early")
    variant_http = {label: Client(f"{url}/variant{i}") for i, label in enumerate(variants)}
    variant_handle = {label: Client.connect(f"variant{i}") for i, label in enumerate(variants)}
    noop_http, noop_handle = httpx.Client(timeout=60), serve.get_app_handle("noop")
    opts = ask_options(config)
    specs = CouncilConfig.model_validate(config).specialists
    fast_specs = CouncilConfig.model_validate(early).specialists[:2]
    loop = asyncio.new_event_loop()
    direct = [SimulatedEngine(s) for s in specs]
    fast = [SimulatedEngine(s) for s in fast_specs]
    for e in (*direct, *fast):
        loop.run_until_complete(e.start())

    async def members_directly(q: str, engines: Sequence[SimulatedEngine] = direct) -> Any:
        return await asyncio.gather(*(e.generate([_request(e, q)]) for e in engines))

    n = args.requests + args.warmup
    qs = questions(1024)  # distinct questions per row: the council caches recent embeddings
    lat: dict[str, list[float]] = {}
    lat["council, HTTP"] = sample(lambda q: http.ask(q, **opts), qs[:n], args.warmup)
    lat["council, handle"] = sample(lambda q: handle.ask(q, **opts), qs[n : 2 * n], args.warmup)
    for i, label in enumerate(variants):
        lat[f"council, {label}, HTTP"] = sample(
            lambda q, c=variant_http[label]: c.ask(q, **opts), qs[(4 + 2 * i) * n : (5 + 2 * i) * n], args.warmup
        )
        lat[f"council, {label}, handle"] = sample(
            lambda q, c=variant_handle[label]: c.ask(q, **opts), qs[(5 + 2 * i) * n : (6 + 2 * i) * n], args.warmup
        )
    lat["no-op floor, HTTP"] = sample(
        lambda q: noop_http.post(f"{url}/noop/v1/council", json={"question": q}).raise_for_status(), qs[:n], args.warmup
    )
    lat["no-op floor, handle"] = sample(
        lambda q: noop_handle.ask.remote({"question": q}).result(timeout_s=60), qs[:n], args.warmup
    )
    lat[f"the {args.k} members directly (in parallel)"] = sample(
        lambda q: loop.run_until_complete(members_directly(q)), qs[:n], args.warmup
    )
    embedder = get_embedder(None)
    lat["embed question (1 text)"] = sample(lambda q: embedder.embed([q]), qs[2 * n : 3 * n], args.warmup)
    cancelled: list[bool] = []
    early_opts = ask_options(early, early_exit=True)
    lat[f"straggler council ({args.straggler:g}x slower member), early exit on"] = sample(
        lambda q: cancelled.append(any(m.cancelled for m in early_client.ask(q, **early_opts).members)),
        qs[3 * n : 4 * n], args.warmup,
    )  # fmt: skip
    lat["the 2 fast members directly"] = sample(
        lambda q: loop.run_until_complete(members_directly(q, fast)), qs[3 * n : 4 * n], args.warmup
    )
    serve.delete("early")  # idle replicas still cost CPU (health checks, metrics): the load cells need none
    print("latency rows done", flush=True)

    fresh = itertools.cycle(qs[(4 + 2 * len(variants)) * n :])
    thr: dict[tuple[str, int], float] = {}
    cpu: dict[tuple[str, int], dict[str, float]] = {}

    async def council(q: str) -> Any:
        return await handle.aask(q, **opts)

    async def floor(q: str) -> Any:
        return await noop_handle.ask.remote({"question": q})

    for c in args.clients:
        cells = (
            ("council", council, "council"),
            *((f"council, {label}", functools.partial(variant_handle[label].aask, **opts), f"variant{i}")
              for i, label in enumerate(variants)),
            ("members directly", members_directly, "noop"),
            ("no-op floor", floor, "noop"),
        )
        for label, ask, app in cells:
            loop.run_until_complete(warm_up(ask, fresh, c))
            before = cpu_seconds()
            thr[(label, c)] = loop.run_until_complete(throughput(ask, fresh, c, args.load, warm=False))
            cpu[(label, c)] = cpu_roles(before, cpu_seconds(), app)
        print(f"  {c} clients: " + ", ".join(f"{label} {thr[(label, c)]:.1f} q/s" for label, _ in thr if _ == c))
    for e in (*direct, *fast):
        loop.run_until_complete(e.shutdown())
    report(args, lat, thr, cpu, sum(cancelled[args.warmup :]))
    return 0


def _request(engine: Any, question: str) -> Any:
    """The request a member's replica would hand its engine for this question (no passages)."""
    from council.backends.engine import EngineRequest

    return EngineRequest(engine.tokens.render_prompt(question, []), engine.default_sampling)


def _council_cpu(roles: dict[str, float]) -> float:
    """CPU seconds of every process the app's questions touch: its replicas, Ray's and Serve's own processes and
    the callers; not other apps' idle replicas."""
    return sum(t for role, t in roles.items() if not role.startswith("other apps"))


def report(
    args: argparse.Namespace, lat: dict[str, list[float]], thr: dict[tuple[str, int], float],
    cpu: dict[tuple[str, int], dict[str, float]], cancelled: int,
) -> None:  # fmt: skip
    print(f"\nk={args.k} simulated members ({args.member_s * 1000:.0f} ms per batch, max batch {args.batch_size}), "
          f"retrieval off, Serve defaults, one run, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[1]:.1f} over the last 5 minutes\n")  # fmt: skip
    print(f"| sequential latency ({args.requests} requests) | p50 ms | p95 ms |\n|---|---:|---:|")
    for name, xs in lat.items():
        print(f"| {name} | {statistics.median(xs):.1f} | {pct(xs, 95):.1f} |")
    print("\n| throughput, questions/s | " + " | ".join(f"{c} clients" for c in args.clients)
          + " |\n|---|" + "---:|" * len(args.clients))  # fmt: skip
    for row in dict.fromkeys(label for label, _ in thr):
        print(f"| {row} | " + " | ".join(f"{thr[(row, c)]:.1f}" for c in args.clients) + " |")
    print("\n| CPU per question, ms (all processes) | " + " | ".join(f"{c} clients" for c in args.clients)
          + " |\n|---|" + "---:|" * len(args.clients))  # fmt: skip
    per_q = {key: _council_cpu(roles) / args.load * 1000 for key, roles in cpu.items()}
    for row in dict.fromkeys(label for label, _ in cpu):
        print(f"| {row} | " + " | ".join(f"{per_q[(row, c)]:.1f}" for c in args.clients) + " |")
    top = max(args.clients)
    print(f"\nwhere the council's CPU went at {top} clients (ms per question): " + "; ".join(
        f"{role} {t / args.load * 1000:.1f}" for role, t in sorted(cpu[("council", top)].items(), key=lambda kv: -kv[1])
    ))  # fmt: skip

    med = {name: statistics.median(xs) for name, xs in lat.items()}
    members = med[f"the {args.k} members directly (in parallel)"]
    embed = med["embed question (1 text)"]
    print("\n| target | measured | goal | |\n|---|---:|---:|---|")
    for transport in ("HTTP", "handle"):
        added = med[f"council, {transport}"] - members
        limit = 1.5 * (med[f"no-op floor, {transport}"] + embed)
        print(f"| 1. added latency by {transport} (council p50 − members' p50), ms | {added:.1f} | ≤ {limit:.1f} "
              f"(1.5 × (floor + question embedding)) | {verdict(added <= limit)} |")  # fmt: skip
    for c in args.clients:
        r = thr[("council", c)] / thr[("members directly", c)]
        print(f"| 2. throughput, council / members directly, {c} clients | {r:.2f}× | ≥ 0.9× | {verdict(r >= 0.9)} |")
    for c in args.clients:
        r = per_q[("council", c)] / per_q[("no-op floor", c)]
        print(f"| 3. CPU per question, council / no-op floor, {c} clients | {r:.2f}× | ≤ 2× | {verdict(r <= 2)} |")
    for label in VARIANTS:
        for transport in ("HTTP", "handle"):
            r = med[f"council, {transport}"] / med[f"council, {label}, {transport}"]
            print(f"| (default vs {label}) p50 by {transport}, default / {label} | {r:.2f}× | | |")
        for c in args.clients:
            r = thr[("council", c)] / thr[(f"council, {label}", c)]
            q = per_q[("council", c)] / per_q[(f"council, {label}", c)]
            print(f"| (default vs {label}) {c} clients: throughput, default / {label} | {r:.2f}× "
                  f"(CPU per question {q:.2f}×) | | |")  # fmt: skip
    straggler = med[f"straggler council ({args.straggler:g}x slower member), early exit on"]
    r = straggler / med["the 2 fast members directly"]
    print(f"| 4. early exit, one member {args.straggler:g}× slower: p50 / the fast members' p50 (slow member "
          f"cancelled in {cancelled} of {args.requests}) | {r:.2f}× | ≤ 1.2× | {verdict(r <= 1.2)} |")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
