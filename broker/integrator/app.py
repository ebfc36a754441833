"""The integrator's aiohttp app: the page, `GET /api/sites` (every site at once) and one site's read-only views."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from broker.core.errors import NotFound
from broker.integrator.auth import IntegratorAuth, auth_middleware
from broker.integrator.config import Loaded
from broker.integrator.fanout import Sites
from broker.integrator.keys import HTTP, SITES
from broker.integrator.proxy import site_view
from http_api.envelope import error_middleware, ok

__all__ = ["create_app"]

STATIC = Path(__file__).parent / "static"
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
# As the console's: this origin only, no inline script or style, never framed.
_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
                                "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_FILES = {p.name: p for p in STATIC.iterdir() if p.is_file()}


async def index(request: web.Request) -> web.FileResponse:
    """The page: a table of every site (plain HTML and one small ES module)."""
    return web.FileResponse(STATIC / "index.html", headers={**_HEADERS, "Content-Type": "text/html"})


async def static_file(request: web.Request) -> web.FileResponse:
    path = _FILES.get(request.match_info["name"])
    if path is None:
        raise NotFound(f"no file '{request.match_info['name']}'")
    return web.FileResponse(path, headers={**_HEADERS, "Content-Type": _TYPES.get(path.suffix, "text/plain")})


async def healthz(request: web.Request) -> web.Response:
    """The integrator itself is serving (says nothing about the sites: that is /api/sites)."""
    return ok({"integrator": True, "sites": len(request.app[SITES].sites)})


async def all_sites(request: web.Request) -> web.Response:
    """Every configured site, probed now, concurrently, each within `timeout_s`: one row each, never a failure."""
    return ok(await request.app[SITES].report(request.app[HTTP]))


def create_app(loaded: Loaded) -> web.Application:
    cfg = loaded.config
    app = web.Application(middlewares=[error_middleware, auth_middleware(IntegratorAuth(loaded.token,
                                                                                        cfg.pbkdf2_iterations))])
    app[SITES] = Sites(cfg.sites, loaded.site_tokens, cfg.timeout_s, cfg.max_parallel)

    async def client(app: web.Application) -> AsyncIterator[None]:
        # the sites' own bound is per request (asyncio.wait_for in fanout/proxy); this one only backs it up
        timeout = aiohttp.ClientTimeout(total=cfg.timeout_s * 2)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=cfg.max_parallel * 2)
                                         ) as http:
            app[HTTP] = http
            yield

    app.cleanup_ctx.append(client)
    r = app.router
    r.add_get("/", index)
    r.add_get("/integrator/{name}", static_file)
    r.add_get("/healthz", healthz)
    r.add_get("/api/sites", all_sites)
    r.add_get("/api/sites/{site_id}/{view}", site_view)
    return app
