"""Six specialists as six full models on six deployments vs one base + six LoRA adapters on one deployment (issue 15).

One run, side by side, per engine (transformers, vLLM): the same six specialists, each a LoRA adapter of one base
and, for the full-model council, that adapter merged into a copy of the base (the same answers, the same family
of checkpoints). For each council: resident memory of its member processes (PSS, so shared pages count once;
vLLM's engine-core children included), start-up until all six answer, then throughput and p50 at 16 and 64
clients spread over the six specialists (each request asks one specialist alone, through the council's ingress, so
both sides pay the same framework). Targets: adapters <= 0.4x the memory and <= 0.5x the start-up of the full
models, throughput >= 0.8x.

The councils run one after the other (deployed, measured, deleted), never side by side: their memory would mix.
"""

import argparse
import asyncio
import contextlib
import functools
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bench_env  # first (sorted first, too): the environment Ray and transformers read
from overhead_cells import pct, questions, throughput, verdict, warm_up
from ray import serve

DEMO = Path(__file__).resolve().parents[1] / "council" / "demo"


def build_checkpoints(work: Path, base: Path, n: int) -> tuple[list[Path], list[Path]]:
    """n LoRA adapters of `base` (random, distinct) and, for each, the adapter merged into a full copy of the base."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from council.backends.lora import merge
    from council.jobs.lora import LoraPlan
    from council.testing.tiny import build_lora_adapter

    adapters, full = [], []
    for i in range(n):
        # Shaped as the demo's adapters are: rank 32 on the input embeddings and every projection (LoraPlan).
        adapter = Path(build_lora_adapter(base, work / "adapters" / f"s{i}", seed=i, scale=0.05,
                                          targets=LoraPlan().target_modules, rank=LoraPlan().rank))  # fmt: skip
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32), adapter)
        out = work / "full" / f"s{i}"
        merge(model).save_pretrained(str(out))
        for f in base.iterdir():  # the tokenizer and generation config, as the base has them
            if f.name.startswith(("tokenizer", "special_tokens", "generation_config")):
                shutil.copy(f, out / f.name)
        adapters.append(adapter)
        full.append(out)
    return adapters, full


def council_config(args: argparse.Namespace, engine: str, members: list[dict[str, Any]], store: Path) -> dict[str, Any]:
    deployment = {"num_cpus": 0.1, "max_batch_size": 32, "max_ongoing_requests": 2 * max(args.clients),
                  "max_queued_requests": -1}  # fmt: skip
    options = {"kv_cache_gib": 1} if engine == "vllm" else {}
    specs = [
        {**m, "description": f"specialist {i}", "context_window": 192, "prompt_template": "qa", "engine": engine,
         "engine_options": options, "deployment": deployment,
         "generation": {"max_new_tokens": args.new_tokens, "stop": []}}
        for i, m in enumerate(members)
    ]  # fmt: skip
    return {
        "specialists": specs,
        "router": {"k": 1, "quorum": 1, "member_timeout_s": 300, "max_ongoing_requests": 400},
        "retrieval": {"path": str(store)},
    }


def member_memory_mib(app: str) -> float:
    """PSS of the app's member replicas (Specialist_*, Base_*) and their children (vLLM's engine core), MiB."""
    import psutil

    total = 0
    for proc in psutil.process_iter(["cmdline"]):
        title = " ".join(proc.info["cmdline"] or [])
        if not title.startswith((f"ray::ServeReplica:{app}:Specialist_", f"ray::ServeReplica:{app}:Base_")):
            continue
        for p in (proc, *proc.children(recursive=True)):
            with contextlib.suppress(psutil.Error):  # gone meanwhile
                total += p.memory_full_info().pss
    return total / 2**20


def measure(args: argparse.Namespace, label: str, config: dict[str, Any], app: str) -> dict[str, Any]:
    from council.client import Client
    from council.serving.app import build_app

    names = [s["name"] for s in config["specialists"]]
    t0 = time.perf_counter()
    serve.run(build_app({"config_dict": config}), name=app, route_prefix=f"/{app}")
    client = Client.connect(app)
    for name in names:  # all six answer once: the start-up ends here
        client.ask("what is the penalty under the kavo act ?", specialists=[name], use_retrieval=False)
    started = time.perf_counter() - t0
    memory = member_memory_mib(app)
    deployments = sorted(serve.status().applications[app].deployments)
    print(f"  {label}: {len(names)} specialists on {[d for d in deployments if d.startswith(('Spec', 'Base'))]}, "
          f"up in {started:.1f} s, {memory:,.0f} MiB", flush=True)  # fmt: skip
    member = itertools.cycle(names)
    fresh = itertools.cycle(questions(1024))
    lat: list[float] = []

    async def ask(q: str, record: bool = True) -> Any:
        t = time.perf_counter()
        out = await client.aask(q, specialists=[next(member)], use_retrieval=False, early_exit=False)
        if record:
            lat.append((time.perf_counter() - t) * 1000)
        return out

    out: dict[str, Any] = {"startup_s": started, "memory_mib": memory}
    loop = asyncio.new_event_loop()
    for c in args.clients:
        loop.run_until_complete(warm_up(functools.partial(ask, record=False), fresh, c))
        lat.clear()
        out[f"qps_{c}"] = loop.run_until_complete(throughput(ask, fresh, c, args.load, warm=False))
        out[f"p50_{c}"], out[f"p95_{c}"] = statistics.median(lat), pct(lat, 95)
        print(f"    {c} clients: {out[f'qps_{c}']:.1f} q/s, p50 {out[f'p50_{c}']:.0f} ms", flush=True)
    loop.close()
    serve.delete(app)
    time.sleep(5)  # the replicas' processes go before the next council's start
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_env.add_sample_args(p, load=192)
    p.add_argument("--members", type=int, default=6, help="specialists (adapters of one base)")
    p.add_argument("--base", type=Path, default=DEMO / "general", help="the base checkpoint (a Llama folder)")
    p.add_argument("--engines", nargs="+", choices=["transformers", "vllm"], default=["transformers", "vllm"])
    p.add_argument("--new-tokens", type=int, default=8, help="tokens each answer writes")
    p.add_argument("--port", type=int, default=8079, help="loopback HTTP port for this run's Serve")
    p.add_argument("--quick", action="store_true", help="small samples; transformers only")
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if args.quick:
        args.load, args.engines = 64, ["transformers"]
    work = Path(tempfile.mkdtemp(prefix="council-adapters-"))
    adapters, full = build_checkpoints(work, args.base, args.members)
    return bench_env.serve_locally(args.port, lambda: run(args, work, adapters, full))


def run(args: argparse.Namespace, work: Path, adapters: list[Path], full: list[Path]) -> int:
    results: dict[tuple[str, str], dict[str, Any]] = {}
    base = str(args.base.resolve())
    for engine in args.engines:
        full_members = [{"name": f"s{i}", "model": str(m)} for i, m in enumerate(full)]
        adapter_members = [{"name": f"s{i}", "base": base, "adapter": str(a)} for i, a in enumerate(adapters)]
        for label, members in (("full models", full_members), ("base + adapters", adapter_members)):
            config = council_config(args, engine, members, work / f"store-{engine}-{label[0]}")
            results[(engine, label)] = measure(args, f"{engine}, {label}", config, f"{engine}_{label[0]}")
    report(args, results)
    return 0


def report(args: argparse.Namespace, results: dict[tuple[str, str], dict[str, Any]]) -> None:
    print(f"\n{args.members} specialists, base {args.base.name}, {args.new_tokens} new tokens, one run, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[1]:.1f} over the last 5 minutes\n")  # fmt: skip
    cols = ["start-up s", "member memory MiB (PSS)"]
    cols += [f"{c} clients q/s · p50 ms" for c in args.clients]
    print("| engine, council | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols))
    for (engine, label), r in results.items():
        cells = [f"{r['startup_s']:.1f}", f"{r['memory_mib']:,.0f}"]
        cells += [f"{r[f'qps_{c}']:.1f} · {r[f'p50_{c}']:.0f}" for c in args.clients]
        print(f"| {engine}, {label} | " + " | ".join(cells) + " |")
    print("\n| target | measured | goal | |\n|---|---:|---:|---|")
    for engine in args.engines:
        f, a = results[(engine, "full models")], results[(engine, "base + adapters")]
        mem, up = a["memory_mib"] / f["memory_mib"], a["startup_s"] / f["startup_s"]
        print(f"| {engine}: memory, adapters / full | {mem:.2f}× | ≤ 0.4× | {verdict(mem <= 0.4)} |")
        print(f"| {engine}: start-up, adapters / full | {up:.2f}× | ≤ 0.5× | {verdict(up <= 0.5)} |")
        for c in args.clients:
            r = a[f"qps_{c}"] / f[f"qps_{c}"]
            print(f"| {engine}: throughput at {c} clients, adapters / full | {r:.2f}× | ≥ 0.8× | {verdict(r >= 0.8)} |")


if __name__ == "__main__":
    raise SystemExit(main())
