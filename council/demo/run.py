"""The demo: ingest the demo world, deploy the council (Ray Serve or in-process), ask each kind of question."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from council.config import CouncilConfig
from council.demo.engines import app_args, with_engine
from council.errors import ConfigError
from council.render import render_answer
from council.serving.lifecycle import block_until_signal, default_serve_config, serve_target, start_serve, stop_serve
from council.types import AskRequest, CouncilAnswer
from council.world.judge import is_correct

if TYPE_CHECKING:
    from rich.console import Console

    from council.world.generator import Question, World

DEMO_DIR = Path(__file__).resolve().parent
DEMO_CONFIG = DEMO_DIR / "council.yaml"
KINDS = ("trained", "fresh", "unanswerable")
KIND_NOTES = {
    "trained": "facts the specialists learned in training",
    "fresh": "facts only the document store holds",
    "unanswerable": "nobody knows: the council should abstain or say unknown",
}


@dataclass(frozen=True)
class DemoSetup:
    """What the demo deploys: the council config, the `build_app` args and Serve settings (name, port, ...)."""

    config: CouncilConfig
    app_args: dict[str, Any]
    settings: dict[str, Any]
    note: str


def demo_setup(config_path: Path | None) -> DemoSetup:
    """What clusters/local.yaml deploys (the packaged demo council), or the council/Serve config given."""
    path = config_path or default_serve_config()
    args, settings = serve_target(path)
    if "config_dict" in args:
        return DemoSetup(CouncilConfig.from_dict(args["config_dict"]), args, settings, "council from config_dict")
    target = args.get("config")
    if not target or not Path(target).is_file():
        raise ConfigError(
            f"{path} names the council config {target!r}, which does not exist; the demo council "
            f"ships as {DEMO_CONFIG} (council/demo/TRAINING.md says how to re-create it)"
        )
    return DemoSetup(CouncilConfig.from_yaml(target), args, settings, f"council from {target} (deployed as in {path})")


def with_vllm_members(setup: DemoSetup, engine: str, vllm_members: str | None) -> DemoSetup:
    """`setup` with its members on `engine` (see council.demo.engines); the note says which run on vLLM."""
    config, on_vllm = with_engine(setup.config, engine, vllm_members)
    if config is setup.config:
        return setup
    others = [s.name for s in config.specialists if s.name not in on_vllm]
    note = f"{setup.note}; on vLLM: {', '.join(on_vllm)}; on transformers: {', '.join(others) or 'none'}"
    return DemoSetup(config, app_args(config, setup.app_args), setup.settings, note)


def with_examples(setup: DemoSetup, questions: Sequence[Question]) -> DemoSetup:
    """`setup` with the demo's questions as the web page's examples (`http.examples`), unless the config has its own."""
    if setup.config.http.examples or not questions:
        return setup
    data = setup.config.model_dump(mode="json", exclude_unset=True)
    data["http"] = {**data.get("http", {}), "examples": [q.question for q in questions]}
    config = CouncilConfig.from_dict(data, source="the demo council with its questions")
    return DemoSetup(config, app_args(config, setup.app_args), setup.settings, setup.note)


def demo_world(seed: int = 0) -> World:
    """The world the demo specialists were trained on."""
    from council.world.generator import build_world

    return build_world(seed)


def pick_questions(world: World, per_kind: int, seed: int = 0) -> list[Question]:
    """`per_kind` questions of each kind, spread over the domains, the same ones every run."""
    rng = random.Random(seed)
    picked: list[Question] = []
    for kind in KINDS:
        pool = world.questions(kind, held_out=False if kind == "trained" else None)
        by_domain: dict[str, list[Question]] = {}
        for q in pool:
            by_domain.setdefault(q.domain, []).append(q)
        domains = sorted(by_domain)
        for i in range(min(per_kind, len(pool))):
            picked.append(rng.choice(by_domain[domains[i % len(domains)]]))
    return picked


def corpus(world: World) -> list[dict[str, str]]:
    """The world's documents as ingestible dicts; the document id is its source."""
    return [{"text": d.text, "source": d.id, "domain": d.domain} for d in world.documents]


def ingest_local(world: World, config: CouncilConfig, console: Console) -> Any:
    """Put the corpus into this process's store (idempotent: content-hash ids); returns the retriever."""
    from council.backends.chroma import ChromaRetriever
    from council.backends.embeddings import get_embedder

    docs = corpus(world)
    with console.status(f"ingesting {len(docs)} documents of the demo world into {config.retrieval.path}"):
        retriever = ChromaRetriever(config.retrieval, get_embedder(config.retrieval.embedder))
        added = 0
        for domain in sorted({d["domain"] for d in docs}):
            pairs = [(d["source"], d["text"]) for d in docs if d["domain"] == domain]
            added += retriever.ingest_texts(pairs, tenant="public", domain=domain).added
    console.print(f"[dim]store: {added} new chunks, {retriever.count()} in all ({config.retrieval.path})[/]")
    return retriever


def ingest_served(world: World, client: Any, console: Console, batch: int = 100) -> None:
    """Put the corpus into the served council's own store (POST /v1/documents): one process owns the store."""
    docs = corpus(world)
    with console.status(f"ingesting {len(docs)} documents of the demo world"):
        for i in range(0, len(docs), batch):
            client.ingest(docs[i : i + batch], tenant="public")
    console.print(f"[dim]store: {client.status().get('chunks')} chunks[/]")


def ask_all(questions: Sequence[Question], ask: Callable[[str], CouncilAnswer], console: Console) -> int:
    """Ask every question, print each answer; returns how many were answered correctly."""
    right = 0
    for i, q in enumerate(questions, 1):
        console.rule(f"[bold]{i}. {q.split}[/] [dim]({KIND_NOTES[q.split]})[/]")
        console.print(f"[bold]Q:[/] {q.question}   [dim]gold: {q.answer}[/]", highlight=False)
        answer = ask(q.question)
        ok = is_correct(q, answer)
        right += ok
        render_answer(answer, out=console, trims=True)
        console.print("[green]✓ correct[/]" if ok else "[red]✗ wrong[/]")
    return right


def run_demo(
    console: Console,
    *,
    once: bool,
    in_process: bool,
    config: Path | None = None,
    port: int | None = None,
    per_kind: int = 2,
    engine: str = "transformers",
    vllm_members: str | None = None,
) -> None:
    """The whole demo; without `once` it keeps serving until Ctrl-C after the questions. `engine` vllm puts
    `vllm_members` of the members on vLLM (council.demo.engines; Ray Serve only), the rest stay on transformers."""
    if engine == "vllm" and in_process:
        raise ConfigError("--engine vllm runs on Ray Serve: the in-process council runs transformers only")
    setup = with_vllm_members(demo_setup(config), engine, vllm_members)
    console.print(f"[bold]council demo[/] — {setup.note}", highlight=False)
    world = demo_world()
    questions = pick_questions(world, per_kind)
    if in_process:
        _run_in_process(setup, world, questions, console, once=once)
    else:
        _run_on_serve(with_examples(setup, questions), world, questions, console, once=once, port=port)


def _run_in_process(
    setup: DemoSetup, world: World, questions: Sequence[Question], console: Console, *, once: bool
) -> None:
    from council.local import build_local_council

    retriever = ingest_local(world, setup.config, console)
    with console.status("loading the specialists in this process"):
        council = build_local_council(setup.config, retriever=retriever)
    loop = asyncio.new_event_loop()
    try:
        right = ask_all(questions, lambda q: loop.run_until_complete(council.ask(AskRequest(q))), console)
    finally:
        loop.close()
    _summary(right, len(questions), console)
    if not once:
        console.print("in-process mode serves nothing; run [bold]council demo[/] without --in-process to serve")


def _run_on_serve(
    setup: DemoSetup, world: World, questions: Sequence[Question], console: Console, *, once: bool, port: int | None
) -> None:
    from council.client import Client

    settings = {**setup.settings, **({"port": port} if port else {})}
    t0 = time.perf_counter()
    try:
        with console.status("starting Ray Serve: one deployment per specialist, retrieval, aggregator, router"):
            url = start_serve(setup.app_args, **settings)
        elapsed = time.perf_counter() - t0
        console.print(f"[dim]deployed in {elapsed:.0f} s at {url}[/] — the page: {url}/", highlight=False)
        with Client(url) as client:
            ingest_served(world, client, console)
            right = ask_all(questions, client.ask, console)
        _summary(right, len(questions), console)
        if once:
            return
        q = questions[0].question if questions else "what is the penalty under the kavo act ?"
        console.print(f"\n[bold green]council serving[/] at {url} — Ctrl-C to stop.")
        console.print(f"  [bold]the page:[/] {url}/  (the questions above are its examples)", highlight=False)
        console.print("Or try:")
        console.print(f"  curl -s {url}/v1/council -d '{json.dumps({'question': q})}'", highlight=False)
        console.print(f"  council ask {json.dumps(q)} --url {url}", highlight=False)
        block_until_signal()
    finally:
        stop_serve()


def _summary(right: int, total: int, console: Console) -> None:
    console.rule()
    console.print(f"[bold]{right}/{total}[/] answered as the world says (unanswerable = abstained or unknown)")
