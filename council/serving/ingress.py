"""RouterIngress: the app's entry, running `Council` over handles to the other deployments; HTTP and handles."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from ray import serve

from council.backends.store_lock import store_identity
from council.bases import by_base, multiplexed
from council.config import CouncilConfig
from council.credentials import Grant, RateLimiter, load_table
from council.errors import InvalidRequest
from council.pipeline import Council, Event
from council.retrieval import check_tenant
from council.serving import metrics
from council.serving.aggregator import local_aggregator
from council.serving.exposure import checked_keys, proxy_host
from council.serving.handles import HandleAggregator, HandleRetriever, HandleSpecialist, call
from council.serving.ray_errors import as_council_error
from council.serving.schemas import AskBody, event_body, parse, parse_ingest
from council.types import AskRequest, CouncilAnswer, Document

if TYPE_CHECKING:
    from fastapi import FastAPI
    from ray.serve.handle import DeploymentHandle

log = logging.getLogger(__name__)
STATUS_TTL_S = 2.0


class RouterIngress:
    """The ingress: routes, retrieves, trims, fans out to the specialists and aggregates, via `Council`.

    Handle callers use `ask`, `ingest`, `models` and `status`; the HTTP app (`http.py`) is built over the
    same instance and calls `answer` and `add_documents`, counting each request itself.
    """

    def __init__(
        self,
        config: dict[str, Any],
        specialists: dict[str, DeploymentHandle],
        retriever: DeploymentHandle,
        aggregator: DeploymentHandle | None,
    ) -> None:
        """`aggregator`: the AggregatorServer's handle, or None to trim and aggregate in this process
        (`aggregator.placement: ingress`)."""
        from council.backends.embeddings import get_batched_embedder

        self.config = CouncilConfig.model_validate(config)
        # Who may call, and how much: refused here, before anything loads, when exposed without credentials.
        self.keys = checked_keys(self.config.http.auth, load_table(), proxy_host())
        self.limiter = RateLimiter(self.config.http.requests_per_minute, self.config.http.tokens_per_minute)
        self._status_cache: tuple[float, Any] | None = None
        self.retriever_handle = retriever
        self.retriever = HandleRetriever(retriever)
        # Batched: concurrent questions share one embedding pass (routing and retrieval share each vector).
        self.embedder = get_batched_embedder(self.config.retrieval.embedder)
        self.council = Council(
            self.config,
            embedder=self.embedder,
            specialists={name: self._handle_specialist(name, h) for name, h in specialists.items()},
            aggregator=HandleAggregator(aggregator) if aggregator is not None else local_aggregator(
                self.config, self.embedder  # the answers share this ingress's batched passes with the questions
            ),
            retriever=self.retriever,
        )

    def _handle_specialist(self, name: str, handle: DeploymentHandle) -> HandleSpecialist:
        spec = self.config.specialist(name)
        if spec.base is None:
            return HandleSpecialist(name, handle)
        members = len(by_base(self.config.specialists)[spec.base])
        mux = multiplexed(spec.deployment.max_adapters_per_replica, members)
        return HandleSpecialist(name, handle, on_base=True, multiplexed=mux)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls this once per replica, after __init__, for the HTTP routes over this instance."""
        from council.serving.http import create_app

        return create_app(
            self, max_body_bytes=self.config.http.max_body_bytes, keys=self.keys, limiter=self.limiter
        )

    async def ask(self, payload: dict[str, Any], api_key: str | None = None) -> dict[str, Any]:
        """POST /v1/council by handle: `payload` has the HTTP body's fields; returns CouncilAnswer.to_dict().
        `api_key`: the caller's key, as over HTTP (needed when the app has keys; it decides the tenant).

        Counted in the council's metrics here (HTTP requests are counted by the HTTP app).
        """
        if payload.get("stream"):
            raise InvalidRequest("stream: by handle, call ask_stream with handle.options(stream=True)")
        grant, request = self._request(payload, api_key)
        t0 = time.perf_counter()
        try:
            answer = await self.answer(request)
        except Exception as e:
            metrics.record_failure(e, time.perf_counter() - t0, as_council_error(e))
            raise
        self._answered(grant, answer, t0)
        return answer.to_dict()

    def _request(self, payload: dict[str, Any], api_key: str | None) -> tuple[Grant, AskRequest]:
        grant = self.keys.authenticate(api_key)
        self.limiter.admit(grant)
        body: AskBody = parse(AskBody, {k: v for k, v in payload.items() if k != "stream"})
        return grant, body.to_request(body.question, tenant=grant.tenant_for(body.tenant, "read"))

    def _answered(self, grant: Grant, answer: CouncilAnswer, t0: float) -> None:
        metrics.record_answer(answer, time.perf_counter() - t0)
        self.limiter.spend(grant, sum(m.completion_tokens for m in answer.members))

    async def answer(self, request: AskRequest) -> CouncilAnswer:
        """Run the council on a typed request (the caller counts its outcome)."""
        return await self.council.ask(request)

    def deliberate(self, request: AskRequest, *, tokens: bool = False) -> AsyncGenerator[Event, None]:
        """The council on a typed request as it happens (Council.deliberate; the caller counts its outcome)."""
        return self.council.deliberate(request, tokens=tokens)

    async def ask_stream(self, payload: dict[str, Any], api_key: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """POST /v1/council with `stream: true`, by handle (`handle.options(stream=True)`): the deliberation's
        events as dicts (schemas.event_body): "route", each "member" as it lands, then "answer". Counted here."""
        grant, request = self._request(payload, api_key)
        t0 = time.perf_counter()
        try:
            async for event in self.council.deliberate(request):
                if isinstance(event, CouncilAnswer):
                    self._answered(grant, event, t0)
                yield event_body(event)
        except Exception as e:
            metrics.record_failure(e, time.perf_counter() - t0, as_council_error(e))
            raise

    async def ingest(self, payload: dict[str, Any], api_key: str | None = None) -> dict[str, Any]:
        """POST /v1/documents by handle: store documents for a tenant (the key's, see council.credentials).

        Returns {"tenant", "documents", "chunks", "added", "skipped"} (re-ingesting adds nothing).
        """
        grant = self.keys.authenticate(api_key)
        self.limiter.admit(grant)
        body = parse_ingest(payload)
        tenant = grant.tenant_for(body.tenant, "write")
        return await self.add_documents(tenant, [d.to_document() for d in body.documents])

    async def add_documents(self, tenant: str, documents: Sequence[Document]) -> dict[str, Any]:
        """Store documents for `tenant` in the app's store, one call per domain in order; the ingest report."""
        check_tenant(tenant)
        totals = {"added": 0, "skipped": 0, "chunks": 0}
        for domain in dict.fromkeys(d.domain for d in documents):
            docs = [(d.source, d.text) for d in documents if d.domain == domain]
            report = await call(self.retriever_handle, "ingest_texts", docs, tenant=tenant, domain=domain)
            totals = {k: totals[k] + int(report[k]) for k in totals}
        return {"tenant": tenant, "documents": len(documents), **totals}

    async def tenants(self) -> list[str]:
        """The tenants the store knows (the web page lists them for a key over every tenant)."""
        return list(await call(self.retriever_handle, "known_tenants"))

    def stats(self) -> dict[str, int]:
        """Embedding counters of this replica (questions, and members' answers as they arrive): texts asked,
        cache hits, embedding passes run, the largest pass."""
        return dict(self.embedder.stats)

    def models(self) -> list[str]:
        """Model names the council answers to: 'council' and each specialist's name."""
        return ["council", *(s.name for s in self.config.specialists)]

    async def status(self, grant: Grant | None = None, api_key: str | None = None) -> dict[str, Any]:
        """Specialists, every deployment's replica states, and the store's chunk count — of every tenant for a
        key over all of them, else of the key's own tenants (`tenants`: their counts). By handle, `api_key`
        names the caller's key as over HTTP."""
        if grant is None:
            grant = self.keys.authenticate(api_key)
        app_name = serve.get_replica_context().app_name
        serve_status = await self._serve_status()
        app = serve_status.applications.get(app_name)
        deployments = {
            name: {"status": _name(d.status), "replicas": {_name(k): v for k, v in d.replica_states.items()}}
            for name, d in (app.deployments.items() if app else ())
        }
        tenants: dict[str, int] | None = None
        try:
            if grant.every_tenant:
                chunks: int | None = await self.retriever.count()
            else:
                own = sorted(t for t in grant.tenants if grant.covers(t))
                tenants = {t: await self.retriever.count(t) for t in own}
                chunks = sum(tenants.values())
        except Exception as e:  # status must answer even when the store does not
            log.warning("store count failed: %s", e)
            chunks = None
        return {
            "app": app_name,
            "status": _name(app.status) if app else "UNKNOWN",
            "specialists": [s.name for s in self.config.specialists],
            "deployments": deployments,
            "chunks": chunks,
            **({"tenants": tenants} if tenants is not None else {}),
            "store": store_identity(self.config.retrieval),
        }

    async def _serve_status(self) -> Any:
        """serve.status(), at most once per STATUS_TTL_S per replica: /v1/status stays cheap under polling."""
        now = time.monotonic()
        if self._status_cache is None or now - self._status_cache[0] > STATUS_TTL_S:
            self._status_cache = (now, await asyncio.to_thread(serve.status))
        return self._status_cache[1]


def _name(state: Any) -> str:
    """A Serve status enum (or the plain string some versions use) as its name."""
    return str(getattr(state, "value", state))
