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
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
# Ray starts its workers at nice 15; the direct side runs in this process at nice 0. Same priority for both,
# or any other load on the machine starves the council's replicas and not its members called directly.
os.environ.setdefault("RAY_worker_niceness", "0")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # a busy 2-core machine starts Ray slowly
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.tiny builds the tiny models

from fastapi import FastAPI, Request  # noqa: E402
from ray import serve  # noqa: E402

from council.serving.deployments import SpecialistServer  # noqa: E402

SERVE_THROUGHPUT_MODE = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
}

noop_api = FastAPI()


@serve.ingress(noop_api)
class NoopIngress:
    """The framework floor: the council's shape (ingress fanning out to k members), with no work anywhere."""

    def __init__(self, members: list[Any]) -> None:
        self.members = members

    @noop_api.post("/v1/council")
    async def http_ask(self, request: Request) -> dict[str, Any]:
        return await self.ask(await request.json())

    async def ask(self, payload: dict[str, Any]) -> dict[str, Any]:
        answers = await asyncio.gather(*(m.generate.remote(payload["question"], []) for m in self.members))
        return {"question": payload["question"], "members": answers}


class NoopMember:
    """A member that answers at once."""

    async def generate(self, question: str, passages: list[str]) -> dict[str, Any]:
        return {"text": "", "prompt_tokens": 0, "completion_tokens": 0, "latency_s": 0.0}


def allow_batch_outside_serve() -> None:
    """`@serve.batch` works in any asyncio loop, but its queue asks the replica context for a warning; skip it."""
    from ray.serve import batching

    batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests = lambda self: None  # type: ignore


_member: Any = None  # in a worker process of the "members in parallel" row: that process's one member


def _load_member(spec: dict[str, Any]) -> None:
    global _member
    import torch

    from council.backends.transformers import TransformersSpecialist
    from council.config import SpecialistConfig

    torch.set_num_threads(1)  # like a fractional-CPU replica
    _member = TransformersSpecialist(SpecialistConfig.model_validate(spec))


def _member_answers(question: str) -> str:
    return str(_member.generate_batch([(question, ())])[0].text)


# ---------------------------------------------------------------- set-up


def council_config(models: Sequence[Path], args: argparse.Namespace, batch: int, store: Path) -> dict[str, Any]:
    """k members that always write `max_new_tokens` (no stop strings); retrieval off per request."""
    deployment = {
        "num_cpus": 0.1,
        "max_ongoing_requests": max(args.clients) * 2,
        "max_queued_requests": -1,
        "max_batch_size": batch,
        "batch_wait_timeout_s": args.batch_wait_s,
    }
    specs = [
        {"name": f"m{i}", "model": str(p), "description": f"member {i}", "deployment": deployment,
         "generation": {"max_new_tokens": args.new_tokens, "stop": []}}
        for i, p in enumerate(models)
    ]  # fmt: skip
    return {
        "specialists": specs,
        "router": {"k": len(specs), "quorum": 1, "member_timeout_s": 120, "max_ongoing_requests": 400},
        "retrieval": {"path": str(store)},
    }


def early_exit_config(model: Path, args: argparse.Namespace, store: Path) -> dict[str, Any]:
    """Three copies of one member (so the two fast ones agree), the third slowed by fault injection; quorum 2."""
    config = council_config([model] * 3, args, args.batch_size, store)
    for spec, name in zip(config["specialists"], ("fast0", "fast1", "slow"), strict=True):
        spec["name"], spec["description"] = name, "member"  # equal route weights
    config["router"]["quorum"] = 2
    return config


def build_models(folder: Path, k: int, config: Path | None, layers: int = 2, width: int = 64) -> list[Path]:
    """The first k members' checkpoints of a council config, else k random GPT-2s (tests/tiny.py)."""
    if config is not None:
        from council.config import CouncilConfig

        specs = CouncilConfig.from_yaml(config).specialists
        if len(specs) < k:
            raise SystemExit(f"{config} has {len(specs)} specialists; --k {k} needs that many")
        return [Path(s.model) for s in specs[:k]]
    from tests.tiny import build_tiny_gpt2

    return [build_tiny_gpt2(folder / f"m{i}", seed=i, n_layer=layers, n_embd=width) for i in range(k)]


def questions(n: int) -> list[str]:
    """n questions of the demo world, distinct while n <= 1,024 (the council caches recent embeddings:
    repeated questions would flatter it)."""
    from council.world.generator import build_world

    qs = [q.question for q in build_world(0).questions("trained", held_out=None)]
    return [qs[(i * 7) % len(qs)] for i in range(n)]


def ask_options(config: dict[str, Any]) -> dict[str, Any]:
    """What every benchmarked question asks: all k members, no retrieval, no early exit."""
    return {"use_retrieval": False, "specialists": [s["name"] for s in config["specialists"]], "early_exit": False}


async def replica_stats(app: str, config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`stats()` of each member's replica and of the ingress (which embeds questions and answers) in one app."""
    from council.serving.app import INGRESS, specialist_deployment_name

    names = {s["name"]: specialist_deployment_name(s["name"]) for s in config["specialists"]}
    names[INGRESS] = INGRESS
    return {
        key: await asyncio.wait_for(serve.get_deployment_handle(deployment, app_name=app).stats.remote(), 30)
        for key, deployment in names.items()
    }


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """(what the process is, CPU seconds so far) of each process of this run, by pid: Ray's (replicas by process
    title, system processes) and this one (the callers and the direct side). A Ray actor's title names the method
    it is running (ray::ServeController.listen_for_change), so processes are matched by pid."""
    import psutil

    me = os.getpid()
    out: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["pid"] != me and not (cmd.startswith("ray::") or "/ray/" in cmd or "ray.util.client" in cmd):
            continue
        try:
            times = proc.cpu_times()
        except psutil.Error:  # gone
            continue
        if proc.info["pid"] == me:
            key = "this process"
        elif cmd.startswith("ray::"):
            key = cmd.split()[0]
        else:  # gcs_server, raylet, agents: the program or script under ray/
            key = next((w.rsplit("/", 1)[-1] for w in cmd.split() if "/ray/" in w), "ray")
        out[proc.info["pid"]] = (key, times.user + times.system)
    return out


def cpu_roles(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], app: str) -> dict[str, float]:
    """CPU seconds between two `cpu_seconds()` snapshots, summed per role in the council `app`; a process that
    started in between counts whole, and the busiest Ray system processes are named."""
    roles: dict[str, float] = {}
    system: dict[str, float] = {}
    for pid, (title, t) in after.items():
        used = t - before.get(pid, ("", 0.0))[1]
        if title.startswith(f"ray::ServeReplica:{app}:"):
            deployment = title.rsplit(":", 1)[1]
            role = "member replicas" if deployment.startswith("Specialist_") else deployment
        elif title.startswith("ray::ServeReplica:"):
            role = "other apps' replicas (idle)"
        elif title == "this process":
            role = "callers (this process)"
        else:
            role = "Ray and Serve system processes"
            name = title.split(".")[0] + (" (started during the cell)" if pid not in before else "")
            system[name] = system.get(name, 0.0) + used
        roles[role] = roles.get(role, 0.0) + used
    busiest = sorted(system.items(), key=lambda kv: -kv[1])[:3]
    if busiest:
        label = "Ray and Serve system processes (" + ", ".join(f"{n} {t:.1f} s" for n, t in busiest) + ")"
        roles[label] = roles.pop("Ray and Serve system processes")
    return roles


async def member_cpu_ms(app: str, config: dict[str, Any]) -> tuple[int, int]:
    """Generating and answer-embedding CPU ms, summed over the app's member replicas (their forward threads)."""
    from council.serving.app import INGRESS

    stats = await replica_stats(app, config)
    members = [s for key, s in stats.items() if key != INGRESS]
    return sum(s["generate_cpu_ms"] for s in members), sum(s["embed_cpu_ms"] for s in members)


def deploy(batched: dict[str, Any], unbatched: dict[str, Any], early: dict[str, Any], slow_s: float, k: int) -> None:
    """Four apps side by side (their replicas start in parallel): the council twice, the no-op floor, and a
    council with one slow member (early exit).

    The unbatched twin is deployed up front: redeploying mid-run would race the old replicas' shutdown.
    """
    from council.serving.app import build_app

    slowed = build_app({"config_dict": early, "faults": {"slow": {"delay_s": slow_s}}})
    member = {"max_ongoing_requests": 128, "ray_actor_options": {"num_cpus": 0.1}}
    members = [serve.deployment(NoopMember, name=f"noop{i}", **member).bind() for i in range(k)]  # type: ignore
    router = {"max_ongoing_requests": batched["router"]["max_ongoing_requests"], "ray_actor_options": {"num_cpus": 0.1}}
    noop = serve.deployment(NoopIngress, name="NoopIngress", **router).bind(members)  # type: ignore[arg-type]
    serve.run_many([
        serve.RunTarget(build_app({"config_dict": batched}), name="council", route_prefix="/"),
        serve.RunTarget(build_app({"config_dict": unbatched}), name="council_unbatched", route_prefix="/unbatched"),
        serve.RunTarget(noop, name="noop", route_prefix="/noop"),
        serve.RunTarget(slowed, name="early", route_prefix="/early"),
    ])  # fmt: skip


# ---------------------------------------------------------------- measuring


def sample(fn: Callable[[str], Any], prompts: Sequence[str], warmup: int) -> list[float]:
    """Latencies in ms of calling `fn` on each prompt after the first `warmup`, which are untimed."""
    for q in prompts[:warmup]:
        fn(q)
    out = []
    for q in prompts[warmup:]:
        t0 = time.perf_counter()
        fn(q)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def pct(xs: Sequence[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


async def warm_up(ask: Callable[[str], Awaitable[Any]], prompts: Iterator[str], clients: int) -> None:
    """A few requests at once, so the batch paths have run before a cell is timed."""
    await asyncio.gather(*(ask(next(prompts)) for _ in range(min(clients, 8))))


async def throughput(
    ask: Callable[[str], Awaitable[Any]], prompts: Iterator[str], clients: int, total: int, warm: bool = True
) -> float:
    """Questions per second with `clients` callers each asking its next question as soon as one returns.

    `prompts` is shared by every cell of the run, so no question is asked twice while it lasts.
    """
    todo = iter(range(total))

    async def caller() -> None:
        for _ in todo:
            await ask(next(prompts))

    if warm:
        await warm_up(ask, prompts, clients)
    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(caller() for _ in range(clients))), timeout=600)
    return total / (time.perf_counter() - t0)


STAGES = ("route", "retrieve", "trim", "members", "aggregate", "total")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# ---------------------------------------------------------------- the run


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--requests", type=int, default=40, help="sequential requests per latency row")
    p.add_argument("--warmup", type=int, default=5, help="untimed requests before each latency row")
    p.add_argument("--load", type=int, default=192, help="requests per throughput cell")
    p.add_argument("--clients", type=int, nargs="+", default=[16, 64], help="concurrent callers")
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
    import ray
    import torch

    # One thread per member on both sides: Ray gives each fractional-CPU replica OMP_NUM_THREADS=1.
    torch.set_num_threads(1)
    allow_batch_outside_serve()
    work = Path(tempfile.mkdtemp(prefix="council-bench-"))
    models = build_models(work / "models", args.k, args.config, args.member_layers, args.member_width)
    prompts = questions(args.requests + args.warmup)
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    # Logical CPUs only place replicas (three apps of fractional-CPU replicas); each replica runs one thread.
    ray.init(
        address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
        logging_level=logging.WARNING,
    )  # fmt: skip
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        return run(args, work, models, prompts)
    finally:
        serve.shutdown()
        ray.shutdown()


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
