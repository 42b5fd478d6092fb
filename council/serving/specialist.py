"""The council's Serve deployments as plain classes; `app.py` turns them into deployments and binds them."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from council.agreement import is_unknown
from council.batching import PassGate
from council.config import CouncilConfig, RetrievalConfig, SpecialistConfig
from council.errors import InvalidRequest
from council.pipeline import Council
from council.protocols import Embedder
from council.serving import metrics
from council.serving.handles import HandleAggregator, HandleRetriever, HandleSpecialist, call
from council.types import AskRequest, Chunk, CouncilAnswer, Document, Generation, MemberAnswer, TrimReport

if TYPE_CHECKING:
    import numpy as np
    from fastapi import FastAPI
    from ray.serve.handle import DeploymentHandle

    from council.agreement import Verdict

log = logging.getLogger(__name__)


class Fault(BaseModel):
    """Fault injection for resilience testing: make one specialist slow or failing, on purpose.

    Set through `build_app(args={"faults": {name: {...}}})` (or the Serve config's `args`); never in
    production configs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    delay_s: float = Field(default=0.0, ge=0, description="Sleep this long before answering each request.")
    error: str | None = Field(default=None, description="Fail every request with RuntimeError(error).")
    hang_s: float = Field(
        default=0.0, ge=0, description="Block the worker thread this long in each forward pass (a wedged model)."
    )


class SpecialistServer:
    """One specialist on its own deployment: batches concurrent `generate` calls into one forward pass."""

    def __init__(
        self, config: dict[str, Any], fault: dict[str, Any] | None = None, answer_embedder: str | None = None
    ) -> None:
        """`answer_embedder`: embed each answer right after generating it, with this sentence-transformers model
        ("" = the bundled MiniLM), and return the vector with the Generation; None: do not embed."""
        from council.backends.transformers import TransformersSpecialist

        self.config = SpecialistConfig.model_validate(config)
        self.fault = Fault.model_validate(fault or {})
        self.specialist = TransformersSpecialist(self.config)
        self.answer_embedder: Embedder | None = None
        if answer_embedder is not None:
            from council.backends.embeddings import get_embedder

            self.answer_embedder = get_embedder(answer_embedder or None)
            self.answer_embedder.embed(["warm up"])  # first-pass allocations at start-up, not in the first request
        # A failed forward pass makes the next health check try the model again (see check_health).
        self._suspect: str | None = None
        # Forward passes in flight (ticket -> start): one running past stuck_after_s fails the health check.
        self._running: dict[int, float] = {}
        self._running_lock = threading.Lock()
        self._tickets = itertools.count()
        self._stats = {
            "requests": 0, "errors": 0, "cancelled": 0, "batches": 0, "largest_batch": 0, "embedded": 0,
            "generate_cpu_ms": 0, "embed_cpu_ms": 0,
        }  # fmt: skip
        options = self.config.deployment
        # Requests arriving during a forward pass join the next one together (see PassGate).
        self._gate = PassGate()
        # @serve.batch keeps ONE queue per decorated function, shared by every instance in the process: applied
        # to the class's method, two SpecialistServers in one process (tests, benchmarks, local use) would run
        # each other's requests through one model. Decorating the bound method gives each instance its queue.
        self._generate_batch: Any = serve.batch(
            max_batch_size=options.max_batch_size, batch_wait_timeout_s=options.batch_wait_timeout_s
        )(self._run_batch)
        self._in_generate = 0  # requests inside generate(): at the gate, queued or in a pass
        if self.fault != Fault():
            log.warning("specialist %s runs with injected fault %s", self.config.name, self.fault)

    async def generate(self, question: str, passages: Sequence[str]) -> Generation:
        """Answer a question from its (already trimmed) passages."""
        self._stats["requests"] += 1
        self._in_generate += 1
        try:
            await self._inject_fault()
            await self._gate.wait_idle()
            # The batch wait only pays when others are on their way: a request alone in the replica runs at once.
            alone = self._in_generate == 1
            self._generate_batch.set_batch_wait_timeout_s(0.0 if alone else self.config.deployment.batch_wait_timeout_s)
            result: Generation = await self._generate_batch((question, tuple(passages)))
        except asyncio.CancelledError:
            self._stats["cancelled"] += 1
            raise
        except Exception:
            self._stats["errors"] += 1
            raise
        finally:
            self._in_generate -= 1
        return result

    async def generate_text(self, prompt: str, max_new_tokens: int | None = None) -> Generation:
        """Complete an already-rendered prompt (not batched; for direct use and benchmarks)."""
        await self._inject_fault()
        [generation] = await asyncio.to_thread(self.specialist.generate_texts, [prompt], max_new_tokens=max_new_tokens)
        return generation

    async def _run_batch(self, items: list[tuple[str, tuple[str, ...]]]) -> list[Generation]:
        """One @serve.batch batch (see __init__): a single forward pass for all of `items`."""
        # A worker thread keeps the replica's event loop free to take the next batch's requests.
        self._stats["batches"] += 1
        self._stats["largest_batch"] = max(self._stats["largest_batch"], len(items))
        try:
            with self._gate.busy():
                return await asyncio.to_thread(self._forward, items)
        except InvalidRequest:  # the request's fault, not the model's
            raise
        except Exception as e:
            self._suspect = f"{type(e).__name__}: {e}"
            raise

    def _forward(self, items: list[tuple[str, tuple[str, ...]]]) -> list[Generation]:
        # Timed in the worker thread itself: a cancelled caller does not stop a thread that hangs.
        ticket = next(self._tickets)
        with self._running_lock:
            self._running[ticket] = time.monotonic()
        try:
            if self.fault.hang_s:
                time.sleep(self.fault.hang_s)
            cpu = time.thread_time()
            generations = self.specialist.generate_batch(items)
            self._stats["generate_cpu_ms"] += round((time.thread_time() - cpu) * 1000)
            return self._embed_answers(generations)
        finally:
            with self._running_lock:
                del self._running[ticket]

    def _embed_answers(self, generations: list[Generation]) -> list[Generation]:
        # One pass for the batch's distinct answers; "unknown" needs no vector (it never merges with an answer).
        if self.answer_embedder is None:
            return generations
        texts = list(dict.fromkeys(t for t in (g.text.strip() for g in generations) if not is_unknown(t)))
        if not texts:
            return generations
        cpu = time.thread_time()
        vectors = dict(zip(texts, self.answer_embedder.embed(texts).tolist(), strict=True))
        self._stats["embed_cpu_ms"] += round((time.thread_time() - cpu) * 1000)
        self._stats["embedded"] += len(texts)
        return [
            dataclasses.replace(g, embedding=tuple(vectors[t])) if (t := g.text.strip()) in vectors else g
            for g in generations
        ]

    async def _inject_fault(self) -> None:
        if self.fault.delay_s:
            await asyncio.sleep(self.fault.delay_s)
        if self.fault.error is not None:
            raise RuntimeError(self.fault.error)

    async def check_health(self) -> None:
        """Serve's health check: no forward pass may run past `stuck_after_s` (a wedged model), and after a
        failed generation the model must generate one token again."""
        with self._running_lock:
            oldest = min(self._running.values(), default=None)
        limit = self.config.deployment.stuck_after_s
        if oldest is not None and time.monotonic() - oldest > limit:
            stuck = time.monotonic() - oldest
            raise RuntimeError(f"specialist {self.config.name}: a forward pass has run {stuck:.0f}s (> {limit:g}s)")
        if self._suspect is None:
            return
        if not await asyncio.to_thread(self.specialist.healthy):
            raise RuntimeError(f"specialist {self.config.name} is not usable: {self._suspect}")
        self._suspect = None

    def stats(self) -> dict[str, int]:
        """Counters of this replica: requests, errors, cancelled, batches run, the largest batch, answers embedded,
        and the CPU milliseconds its forward-pass threads spent generating and embedding answers."""
        return dict(self._stats)

    def info(self) -> dict[str, Any]:
        """Name, device and token limits of this replica's model."""
        s = self.specialist
        return {
            "name": self.config.name,
            "model": self.config.model,
            "device": str(s.device),
            "context_window": s.context_window,
            "max_new_tokens": s.max_new_tokens,
        }


class RetrievalServer:
    """The document store: embedded Chroma on one node, a Chroma server (HttpClient) when `host` is set."""

    def __init__(self, retrieval: dict[str, Any]) -> None:
        from council.backends.chroma import ChromaRetriever
        from council.backends.embeddings import get_embedder

        self.config = RetrievalConfig.model_validate(retrieval)
        self.retriever = ChromaRetriever(self.config, get_embedder(self.config.embedder))

    async def retrieve(
        self,
        question: str,
        *,
        tenant: str,
        top_n: int,
        query_embedding: Sequence[float] | None = None,
        documents: Sequence[Document] = (),
    ) -> list[Chunk]:
        """The tenant's most relevant chunks; the tenant filter is applied here, never by the caller."""
        return await self.retriever.retrieve(
            question, tenant=tenant, top_n=top_n, query_embedding=query_embedding, documents=documents
        )

    async def ingest_texts(
        self, docs: Sequence[tuple[str, str]], *, tenant: str, domain: str | None = None
    ) -> dict[str, int]:
        """Chunk, embed and store (source, text) pairs for a tenant: {"added", "skipped", "chunks"}."""
        report = await asyncio.to_thread(self.retriever.ingest_texts, list(docs), tenant=tenant, domain=domain)
        return dataclasses.asdict(report)

    async def count(self, tenant: str | None = None) -> int:
        """Chunks in the store, of one tenant or all."""
        return int(await asyncio.to_thread(self.retriever.count, tenant))


class AggregatorServer:
    """Trimming per member (each member's own tokenizer, no weights) and agreement, vote and abstention."""

    def __init__(self, config: dict[str, Any]) -> None:
        from council.aggregator import LocalAggregator
        from council.backends.embeddings import get_batched_embedder
        from council.backends.transformers import load_tokenizer_counter

        cfg = CouncilConfig.model_validate(config)
        counters = {s.name: load_tokenizer_counter(s) for s in cfg.specialists}
        # Batched: under load the answers of many questions share one MiniLM pass, off the event loop.
        self.embedder = get_batched_embedder(cfg.retrieval.embedder)
        self.aggregator = LocalAggregator(self.embedder, counters, cfg.aggregator)

    async def trim(
        self,
        question: str,
        chunks: Sequence[Chunk],
        members: Sequence[str],
        *,
        budget_tokens: int | None,
        ordering: str,
        orderings: int,
    ) -> dict[str, list[tuple[list[str], TrimReport]]]:
        """Each member's passages in prompt order with its TrimReport, per ordering."""
        return await self.aggregator.trim(
            question, chunks, members, budget_tokens=budget_tokens, ordering=ordering, orderings=orderings
        )

    async def aggregate(self, members: Sequence[MemberAnswer], embeddings: np.ndarray | None = None) -> Verdict:
        """The council's verdict over the members that answered (their answers' embeddings, if the caller has them)."""
        return await self.aggregator.aggregate(members, embeddings)

    async def vote(self, answers: Sequence[str], embeddings: np.ndarray | None = None) -> tuple[int, float]:
        """One member's answers across orderings -> (winner index, consistency)."""
        return await self.aggregator.vote(answers, embeddings)

    def stats(self) -> dict[str, int]:
        """Embedding counters of this replica (it embeds only what callers did not embed): texts asked, cache
        hits, passes run, the largest pass."""
        return dict(self.embedder.stats)


class RouterIngress:
    """The ingress: routes, retrieves, trims, fans out to the specialists and aggregates, via `Council`.

    The HTTP API (`http.py`) and Serve handle callers use the same methods: `ask`, `models`, `status`.
    """

    def __init__(
        self,
        config: dict[str, Any],
        specialists: dict[str, DeploymentHandle],
        retriever: DeploymentHandle,
        aggregator: DeploymentHandle,
    ) -> None:
        from council.backends.embeddings import get_batched_embedder

        self.config = CouncilConfig.model_validate(config)
        self.specialist_handles = dict(specialists)
        self.retriever_handle = retriever
        self.retriever = HandleRetriever(retriever)
        # Batched: concurrent questions share one MiniLM pass (routing and retrieval share each vector).
        self.embedder = get_batched_embedder(self.config.retrieval.embedder)
        self.council = Council(
            self.config,
            embedder=self.embedder,
            specialists={name: HandleSpecialist(name, h) for name, h in specialists.items()},
            aggregator=HandleAggregator(aggregator),
            retriever=self.retriever,
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls this once per replica, after __init__, for the HTTP routes over this instance."""
        from council.serving.http import create_app

        return create_app(self)

    async def ask(self, payload: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/council by handle: `payload` has the HTTP body's fields; returns CouncilAnswer.to_dict()."""
        from council.serving.http import parse_ask

        answer = await self.ask_request(parse_ask(payload))
        return answer.to_dict()

    async def ask_request(self, request: AskRequest) -> CouncilAnswer:
        """Run the council on a typed request; its outcome is counted in the council's metrics."""
        from council.serving.http import as_council_error

        t0 = time.perf_counter()
        try:
            answer = await self.council.ask(request)
        except Exception as e:
            metrics.record_failure(e, time.perf_counter() - t0, as_council_error(e))
            raise
        metrics.record_answer(answer, time.perf_counter() - t0)
        return answer

    async def ingest(self, payload: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/documents by handle: store documents for a tenant.

        Returns {"tenant", "documents", "chunks", "added", "skipped"} (re-ingesting adds nothing).
        """
        from council.serving.http import parse_ingest

        req = parse_ingest(payload)
        totals = {"added": 0, "skipped": 0, "chunks": 0}
        for domain in dict.fromkeys(d.domain for d in req.documents):  # one call per domain, in order
            docs = [(d.source, d.text) for d in req.documents if d.domain == domain]
            report = await call(self.retriever_handle, "ingest_texts", docs, tenant=req.tenant, domain=domain)
            totals = {k: totals[k] + int(report[k]) for k in totals}
        return {"tenant": req.tenant, "documents": len(req.documents), **totals}

    def stats(self) -> dict[str, int]:
        """Embedding counters of this replica (questions, and members' answers as they arrive): texts asked,
        cache hits, MiniLM passes run, the largest pass."""
        return dict(self.embedder.stats)

    def models(self) -> list[str]:
        """Model names the council answers to: 'council' and each specialist's name."""
        return ["council", *(s.name for s in self.config.specialists)]

    async def status(self) -> dict[str, Any]:
        """Specialists, every deployment's replica states, and the store's chunk count."""
        app_name = serve.get_replica_context().app_name
        serve_status = await asyncio.to_thread(serve.status)
        app = serve_status.applications.get(app_name)
        deployments = {
            name: {"status": _name(d.status), "replicas": {_name(k): v for k, v in d.replica_states.items()}}
            for name, d in (app.deployments.items() if app else ())
        }
        try:
            chunks: int | None = await self.retriever.count()
        except Exception as e:  # status must answer even when the store does not
            log.warning("store count failed: %s", e)
            chunks = None
        return {
            "app": app_name,
            "status": _name(app.status) if app else "UNKNOWN",
            "specialists": [s.name for s in self.config.specialists],
            "deployments": deployments,
            "chunks": chunks,
        }


def _name(state: Any) -> str:
    """A Serve status enum (or the plain string some versions use) as its name."""
    return str(getattr(state, "value", state))
