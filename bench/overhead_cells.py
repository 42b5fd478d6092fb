"""The overhead benchmark's parts: the framework floor (no-op app), the councils it deploys, the measuring."""

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from ray import serve

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
    """The first k members' checkpoints of a council config, else k random GPT-2s (council/testing/tiny.py)."""
    if config is not None:
        from council.config import CouncilConfig

        specs = CouncilConfig.from_yaml(config).specialists
        if len(specs) < k:
            raise SystemExit(f"{config} has {len(specs)} specialists; --k {k} needs that many")
        return [Path(s.model) for s in specs[:k]]
    from council.testing.tiny import build_tiny_gpt2

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
