"""The web page: `GET /` and its static files (council/serving/static), whether a key is needed, and the caller's
session (its tenants, the council's members, example questions and defaults) for the page's form.

The page and its files hold no data, so they answer without a key (a browser cannot send a bearer header when it
opens a URL); `GET /ui/auth` says only whether a key is needed. Everything the page shows comes from the
authenticated routes: `GET /ui/session` here and the API itself.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from council.credentials import Grant, KeyTable
from council.errors import CouncilError
from council.retrieval import PUBLIC

if TYPE_CHECKING:
    from council.config import CouncilConfig

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {"page.js": "text/javascript; charset=utf-8", "page.css": "text/css; charset=utf-8"}
# The page is ours alone: no other origin's scripts, styles, frames or connections (there is no CDN to allow).
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _root(request: Request) -> str:
    """The app's path prefix (Serve's route_prefix arrives as the ASGI root_path), without a trailing slash."""
    return str(request.scope.get("root_path") or "").rstrip("/")


def index(request: Request) -> HTMLResponse:
    """The page, with the app's prefix filled in so that its files and API calls work under any route prefix."""
    text = (STATIC / "index.html").read_text(encoding="utf-8")
    return HTMLResponse(text.replace("{{ROOT}}", html.escape(_root(request), quote=True)), headers=HEADERS)


def asset(name: str) -> Response:
    """One of the page's static files; anything else is a 404 (no path is ever joined from the URL)."""
    media = ASSETS.get(name)
    if media is None:
        return JSONResponse(
            {"error": {"type": "not_found", "message": f"no page file {name!r}; there are {sorted(ASSETS)}"}},
            status_code=404,
        )
    return FileResponse(STATIC / name, media_type=media, headers=HEADERS)


def auth(request: Request) -> dict[str, bool]:
    """Whether this app needs a key (`Authorization: Bearer`); nothing else, to anyone."""
    keys: KeyTable = request.app.state.keys
    return {"required": keys.configured}


def default_tenant(grant: Grant) -> str | None:
    """The tenant a request that names none reads for this key (None: the key may read nothing)."""
    try:
        return grant.tenant_for(None, "read")
    except CouncilError:
        return None


def own_tenants(grant: Grant, known: list[str]) -> list[str]:
    """The tenants this key may read: its own (and public), or for a key over every tenant those the store knows."""
    if grant.every_tenant:
        return sorted({*known, PUBLIC})
    return sorted(t for t in {*grant.tenants, PUBLIC} if grant.covers(t))


def examples(config: CouncilConfig) -> list[str]:
    """The questions the page offers: the config's `http.examples`, else each specialist's routing examples."""
    if config.http.examples:
        return list(config.http.examples)
    return list(dict.fromkeys(e for s in config.specialists for e in s.examples))


def session(config: CouncilConfig, grant: Grant, known: list[str], auth_on: bool) -> dict[str, Any]:
    """What the page's form needs for one key: who it is, its tenants, the council's members and its defaults."""
    return {
        "auth": auth_on,
        "key": grant.name if auth_on else None,
        "rights": sorted(grant.rights),
        "tenants": own_tenants(grant, known),
        "tenant": default_tenant(grant),
        "specialists": [{"name": s.name, "domain": s.domain, "description": s.description} for s in config.specialists],
        "examples": examples(config),
        "defaults": {
            "k": config.router.k,
            "early_exit": config.router.early_exit,
            "ordering": config.aggregator.ordering,
            "orderings": config.aggregator.orderings,
            "budget_tokens": config.aggregator.default_budget_tokens,
        },
    }


def page_router(authorized: Any) -> APIRouter:
    """The page's routes; `authorized` is the API's own auth dependency (council.serving.http.authorized)."""
    router = APIRouter()
    router.add_api_route("/", index, methods=["GET"], include_in_schema=False)
    router.add_api_route("/ui/auth", auth, methods=["GET"])

    @router.get("/ui/session", dependencies=[Depends(authorized)])
    async def caller(request: Request) -> dict[str, Any]:
        grant: Grant = request.state.grant
        ingress = request.app.state.ingress
        known = await ingress.tenants() if grant.every_tenant else []
        keys: KeyTable = request.app.state.keys
        return session(ingress.config, grant, known, keys.configured)

    @router.get("/ui/{name}")
    async def static(name: str) -> Response:
        return asset(name)

    return router
