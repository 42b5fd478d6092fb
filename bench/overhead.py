"""What Ray Serve costs the council: council vs its members called directly vs a no-op app, in one run."""

import argparse
import asyncio
import functools
import itertools
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import bench_env  # first (sorted first, too): the environment Ray and transformers read
from overhead_cells import (  # noqa: E402  (beside this script: `python bench/overhead.py` puts bench/ on sys.path)
    SERVE_THROUGHPUT_MODE,
    STAGES,
    _load_member,
    _member_answers,
    allow_batch_outside_serve,
    ask_options,
    build_models,
    council_config,
    cpu_roles,
    cpu_seconds,
    deploy,
    early_exit_config,
    member_cpu_ms,
    pct,
    questions,
    replica_stats,
    sample,
    throughput,
    verdict,
    warm_up,
)
from ray import serve  # noqa: E402

from council.serving.specialist import SpecialistServer  # noqa: E402

# ---------------------------------------------------------------- the run


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    bench_env.add_sample_args(p, load=192)
    p.add_argument("--k", type=int, default=3, help="council members (each its own deployment)")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens each member writes")
    p.add_argument("--batch-size", type=int, default=32, help="@serve.batch max_batch_size when batching")
    p.add_argument("--batch-wait-s", type=float, default=0.01, help="@serve.batch batch_wait_timeout_s")
    p.add_argument("--port", type=int, default=8077, help="loopback HTTP port for this run's Serve")
    p.add_argument("--config", type=Path, help="take the members' checkpoints from this council YAML")
    p.add_argument("--member-layers", type=int, default=2, help="layers of each random GPT-2 member")
    p.add_argument(
        "--member-width",
        type=int,
        default=64,
        help="hidden size of each random GPT-2 member (64: 0.14M parameters; 384 x 6 layers: MiniLM's size)",
    )
    p.add_argument("--slow-member-s", type=float, default=1.0, help="delay of the slow member in the early-exit rows")
    p.add_argument(
        "--serve-throughput-optimized",
        action="store_true",
        help="start Ray with Serve's throughput mode (RAY_SERVE_THROUGHPUT_OPTIMIZED=1: gRPC between replicas, user "
        "code on the replica's loop); the driver keeps its router loop (council.Client's sync calls need it) and "
        "no ingress opens ports of its own (direct ingress off)",
    )
    p.add_argument("--quick", action="store_true", help="small samples: about two minutes")
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress lines show as they happen
    if args.quick:
        args.requests, args.warmup, args.load = 20, 3, 96
    if args.serve_throughput_optimized and any(os.environ.get(k) != v for k, v in SERVE_THROUGHPUT_MODE.items()):
        # Serve reads these when it is imported (this module imported it already) and every Ray process started
        # below inherits them: start again with them set.
        os.environ.update(SERVE_THROUGHPUT_MODE)
        os.execv(sys.executable, [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv)])
    import torch

    # One thread per member on both sides: Ray gives each fractional-CPU replica OMP_NUM_THREADS=1.
    torch.set_num_threads(1)
    allow_batch_outside_serve()
    work = Path(tempfile.mkdtemp(prefix="council-bench-"))
    models = build_models(work / "models", args.k, args.config, args.member_layers, args.member_width)
    prompts = questions(args.requests + args.warmup)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return bench_env.serve_locally(args.port, lambda: run(args, work, models, prompts))


def run(args: argparse.Namespace, work: Path, models: list[Path], prompts: list[str]) -> int:
    import httpx

    from council.backends.embeddings import get_embedder
    from council.backends.transformers import TransformersSpecialist
    from council.client import Client
    from council.config import SpecialistConfig
    from council.serving.app import INGRESS

    url = f"http://127.0.0.1:{args.port}"
    t0 = time.perf_counter()
    config = council_config(models, args, args.batch_size, work / "chroma")
    early = early_exit_config(models[0], args, work / "chroma-early")
    deploy(config, council_config(models, args, 1, work / "chroma-unbatched"), early, args.slow_member_s, args.k)
    print(f"deployed the council (batched, unbatched), the no-op app and the slow-member council in "
          f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
    opts = ask_options(config)
    http_client, handle_client = Client(url), Client.connect("council")
    noop_http = httpx.Client(timeout=60)
    noop_handle = serve.get_app_handle("noop")
    lat: dict[str, list[float]] = {}
    stages: list[dict[str, float]] = []
    # Each council row asks its own questions: the council caches recent embeddings, and answers to questions
    # it has just seen would come from that cache (the members' outputs are deterministic).
    n = args.requests + args.warmup
    council_prompts = questions(1024)
    lat["council, HTTP"] = sample(lambda q: http_client.ask(q, **opts), council_prompts[:n], args.warmup)
    lat["council, handle"] = sample(
        lambda q: stages.append(handle_client.ask(q, **opts).timings), council_prompts[n : 2 * n], args.warmup
    )
    lat["no-op floor, HTTP"] = sample(
        lambda q: noop_http.post(f"{url}/noop/v1/council", json={"question": q}).raise_for_status(),
        prompts, args.warmup,
    )  # fmt: skip
    lat["no-op floor, handle"] = sample(
        lambda q: noop_handle.ask.remote({"question": q}).result(timeout_s=60), prompts, args.warmup
    )
    specs = [SpecialistConfig.model_validate(s) for s in config["specialists"]]
    members = [TransformersSpecialist(s) for s in specs]
    for m in members:
        lat[f"member {m.name}, direct"] = sample(lambda q, m=m: m.generate_batch([(q, ())]), prompts, args.warmup)
    # Threads in this process would queue on the GIL: each member gets its own process, as on Serve.
    spawn = multiprocessing.get_context("spawn")
    pools = [ProcessPoolExecutor(1, spawn, _load_member, (s,)) for s in config["specialists"]]
    try:
        [p.submit(_member_answers, "warm up").result(timeout=300) for p in pools]
        lat[f"all {len(pools)} members in parallel, one process each"] = sample(
            lambda q: [f.result(timeout=60) for f in [p.submit(_member_answers, q) for p in pools]],
            prompts, args.warmup,
        )  # fmt: skip
    finally:
        for p in pools:
            p.shutdown()
    embedder = get_embedder(None)
    answers = [g.text for g in members[0].generate_batch([(prompts[0], ())] * args.k)]
    lat["embed question (1 text)"] = sample(lambda q: embedder.embed([q]), prompts, args.warmup)
    lat[f"embed answers ({args.k} texts)"] = sample(lambda q: embedder.embed(answers), prompts, args.warmup)
    cancelled = early_exit_rows(lat, early, council_prompts[2 * n :], args)
    # Idle replicas still cost CPU (health checks, metrics, long polls): the load cells need neither app.
    for app in ("noop", "early"):
        serve.delete(app)
    print(f"latency rows done ({time.perf_counter() - t0:.0f} s)", flush=True)

    unbatched = Client.connect("council_unbatched")
    loaded: list[dict[str, float]] = []
    clients = {args.batch_size: handle_client, 1: unbatched}
    fresh = itertools.cycle(council_prompts[3 * n :])  # not the latency rows' questions
    configs = {args.batch_size: config, 1: council_config(models, args, 1, work / "chroma-unbatched")}
    cpu: dict[str, Any] = {}
    thr = asyncio.run(load_cells(args, fresh, clients, configs, opts, loaded, cpu))
    stats = {app: asyncio.run(replica_stats(app, config)) for app in ("council", "council_unbatched")}
    embedding = {app: s.pop(INGRESS) for app, s in stats.items()}
    batches = {(app, name): s for app, members in stats.items() for name, s in members.items()}
    report(args, lat, thr, {"sequential": stages, f"batched, {max(args.clients)} clients": loaded}, cancelled)
    report_cpu(args, cpu, thr)
    print("\nEmbeddings in the ingress, questions and answers (whole run): " + "; ".join(
        f"{app}: {s['texts']} texts, {s['cache_hits']} from cache, {s['passes']} MiniLM passes, "
        f"largest {s['largest_pass']}" for app, s in embedding.items()))  # fmt: skip
    print("Member batches (whole run, one replica each): " + "; ".join(
        f"{app}/{name}: {s['requests']} requests in {s['batches']} batches, largest {s['largest_batch']}"
        for (app, name), s in batches.items()))  # fmt: skip
    return 0


def early_exit_rows(
    lat: dict[str, list[float]], config: dict[str, Any], prompts: list[str], args: argparse.Namespace
) -> int:
    """Sequential latency of the slow-member council with and without early exit; returns how many answers
    with early exit reported the slow member cancelled."""
    from council.client import Client

    client, opts = Client.connect("early"), ask_options(config)
    n = args.requests // 2 + 2
    seen: list[Any] = []
    lat[f"one member slowed by {args.slow_member_s:g} s, early exit off"] = sample(
        lambda q: client.ask(q, **opts), prompts[:n], 2
    )
    lat[f"one member slowed by {args.slow_member_s:g} s, early exit on"] = sample(
        lambda q: seen.append(client.ask(q, **{**opts, "early_exit": True})), prompts[n : 2 * n], 2
    )
    return sum(1 for a in seen[2:] if any(m.name == "slow" and m.cancelled for m in a.members))


async def load_cells(
    args: argparse.Namespace, prompts: Iterator[str], clients: dict[int, Any], configs: dict[int, dict[str, Any]],
    opts: dict[str, Any], loaded: list[dict[str, float]], cpu: dict[str, Any],
) -> dict[tuple[str, int], float]:  # fmt: skip
    """Throughput of the council (by handle) and of its members called directly, per batch size and client count.

    "Directly" is the deployment's own class, `SpecialistServer`, built from the same config in this process:
    the same `@serve.batch` queue and settings and the same gate, without Serve or the council around it.
    `loaded` collects the council's stage timings under the heaviest batched load, `cpu` the CPU seconds each
    kind of process spent during that cell and its direct twin (see `cpu_roles`). Those two cells count exactly
    `args.load` questions each (no warm-up burst inside the measured window: the earlier cells warmed up).
    """
    out = {}
    for batch, client in clients.items():
        tag = "batched" if batch > 1 else "unbatched"
        direct = [SpecialistServer(s) for s in configs[batch]["specialists"]]

        async def members_directly(q: str, direct: list[SpecialistServer] = direct) -> Any:
            return await asyncio.gather(*(d.generate(q, ()) for d in direct))

        async def council(q: str, client: Any = client, record: list[dict[str, float]] | None = None) -> Any:
            answer = await client.aask(q, **opts)
            if record is not None:
                record.append(dict(answer.timings))
            return answer

        for c in args.clients:
            record = loaded if batch > 1 and c == max(args.clients) else None
            ask = functools.partial(council, record=record)
            if record is None:
                out[(f"council ({tag})", c)] = await throughput(ask, prompts, c, args.load)
                out[(f"members directly ({tag})", c)] = await throughput(members_directly, prompts, c, args.load)
            else:  # the heaviest batched cell: also where each side's CPU goes
                app = "council"
                await warm_up(ask, prompts, c)  # warm-ups outside the measured window
                t0, m0 = cpu_seconds(), await member_cpu_ms(app, configs[batch])
                out[(f"council ({tag})", c)] = await throughput(ask, prompts, c, args.load, warm=False)
                t1, m1 = cpu_seconds(), await member_cpu_ms(app, configs[batch])
                await warm_up(members_directly, prompts, c)
                t2 = cpu_seconds()
                out[(f"members directly ({tag})", c)] = await throughput(
                    members_directly, prompts, c, args.load, warm=False
                )
                t3 = cpu_seconds()
                cpu["council"] = cpu_roles(t0, t1, app)
                cpu["members: generating"] = (m1[0] - m0[0]) / 1000
                cpu["members: embedding answers"] = (m1[1] - m0[1]) / 1000
                cpu["direct"] = cpu_roles(t2, t3, app)
            print(f"  {tag}, {c} clients: council {out[(f'council ({tag})', c)]:.1f} q/s, directly "
                  f"{out[(f'members directly ({tag})', c)]:.1f} q/s", flush=True)  # fmt: skip
    return out


def report(
    args: argparse.Namespace, lat: dict[str, list[float]], thr: dict[tuple[str, int], float],
    stages: dict[str, list[dict[str, float]]], cancelled: int,
) -> None:  # fmt: skip
    """Print the tables (Markdown, for the README) and the targets with PASS/MISS."""
    what = (
        f"members from {args.config}"
        if args.config
        else f"random GPT-2 members ({args.member_layers} layers x {args.member_width})"
    )
    mode = "Serve throughput mode" if args.serve_throughput_optimized else "Serve defaults"
    print(f"k={args.k} {what}, {args.new_tokens} new tokens each, retrieval off, {mode}, one run, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[1]:.1f} over the last 5 minutes\n")  # fmt: skip
    print(f"| sequential latency ({args.requests} requests) | p50 ms | p95 ms |\n|---|---:|---:|")
    for name, xs in lat.items():
        print(f"| {name} | {statistics.median(xs):.1f} | {pct(xs, 95):.1f} |")
    print("\n| council by handle: p50 ms per pipeline stage (inside the ingress) | "
          + " | ".join(STAGES) + " |\n|---|" + "---:|" * len(STAGES))  # fmt: skip
    for label, rows in stages.items():
        cells = [f"{statistics.median(r.get(n, 0.0) for r in rows):.1f}" if rows else "-" for n in STAGES]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"\n| throughput, questions/s (batch {args.batch_size}) | " + " | ".join(
        f"{c} clients" for c in args.clients) + " |\n|---|" + "---:|" * len(args.clients))  # fmt: skip
    for row in dict.fromkeys(name for name, _ in thr):
        print(f"| {row} | " + " | ".join(f"{thr[(row, c)]:.1f}" for c in args.clients) + " |")
    med = {name: statistics.median(xs) for name, xs in lat.items()}
    slowest = max(v for n, v in med.items() if n.startswith("member "))
    parallel = med[f"all {args.k} members in parallel, one process each"]
    embeds = med["embed question (1 text)"] + med[f"embed answers ({args.k} texts)"]
    top = max(args.clients)
    print("\n| target | measured | goal | |\n|---|---:|---:|---|")
    for transport in ("HTTP", "handle"):
        added = med[f"council, {transport}"] - slowest
        limit = 1.5 * med[f"no-op floor, {transport}"] + embeds
        print(f"| added latency by {transport} (council p50 − slowest member p50), ms | {added:.1f} | "
              f"≤ {limit:.1f} (1.5 × floor + embeddings) | {verdict(added <= limit)} |")  # fmt: skip
        extra = med[f"council, {transport}"] - parallel
        print(f"| (for reference) council p50 − all members in parallel p50, {transport}, ms | {extra:.1f} | | |")
    off, on = (med[f"one member slowed by {args.slow_member_s:g} s, early exit {x}"] for x in ("off", "on"))
    asked = len(lat[f"one member slowed by {args.slow_member_s:g} s, early exit on"])
    print(f"| early exit with one member slowed by {args.slow_member_s:g} s: p50 saved, ms (slow member cancelled "
          f"in {cancelled} of {asked} answers) | {off - on:.1f} | | |")  # fmt: skip
    gain = thr[("council (batched)", top)] / thr[("council (unbatched)", top)]
    print(f"| batching gain at {top} clients (council batched / unbatched) | {gain:.2f}× | ≥ 3× | "
          f"{verdict(gain >= 3)} |")  # fmt: skip
    direct_gain = thr[("members directly (batched)", top)] / thr[("members directly (unbatched)", top)]
    print(f"| (for reference) batching gain of the members directly at {top} clients | {direct_gain:.2f}× | | |")
    for c in args.clients:
        r = thr[("council (batched)", c)] / thr[("members directly (batched)", c)]
        print(f"| council / members directly, batched, {c} clients | {r:.2f}× | ≥ 0.9× | {verdict(r >= 0.9)} |")


def report_cpu(args: argparse.Namespace, cpu: dict[str, Any], thr: dict[tuple[str, int], float]) -> None:
    """Where the CPU went in the heaviest batched cell, per question: on a saturated machine throughput is
    cores / CPU per question, so this says what bounds the council's throughput against its members'."""
    n, top = args.load, max(args.clients)
    council, direct = cpu["council"], cpu["direct"]
    gen, emb = cpu["members: generating"], cpu["members: embedding answers"]
    members = council.get("member replicas", 0.0)
    rows = [
        ("member replicas: generating (forward threads)", gen),
        ("member replicas: embedding their answers (forward threads)", emb),
        ("member replicas: the rest (Serve, batching, asyncio)", members - gen - emb),
        *((role, t) for role, t in sorted(council.items(), key=lambda kv: -kv[1]) if role != "member replicas"),
    ]
    total = sum(council.values())
    mine = direct.get("callers (this process)", 0.0)
    print(f"\n| CPU per question, batched, {top} clients ({n} questions each side) | ms | share |\n|---|---:|---:|")
    for role, t in rows:
        print(f"| council: {role} | {t / n * 1000:.1f} | {t / total:.0%} |")
    print(f"| **council, all processes** | **{total / n * 1000:.1f}** | |")
    print(f"| members directly (this process: generating only) | {mine / n * 1000:.1f} | |")
    print(f"| members directly, everything else on the machine (Ray idle) | "
          f"{(sum(direct.values()) - mine) / n * 1000:.1f} | |")  # fmt: skip
    if total > 0 and mine > 0:
        cores = os.cpu_count() or 1
        cap = cores * n / total
        got, direct_q = thr[("council (batched)", top)], thr[("members directly (batched)", top)]
        print(
            f"\nThe council spends {total / mine:.1f}× the members' CPU per question. On {cores} cores that caps it at "
            f"{cap:.1f} q/s (measured {got:.1f}), {cap / direct_q:.2f}× the members directly ({direct_q:.1f} q/s); "
            f"embedding the answers alone costs {emb / n * 1000:.1f} ms per question, the generating "
            f"{gen / n * 1000:.1f} ms."
        )


if __name__ == "__main__":
    raise SystemExit(main())
