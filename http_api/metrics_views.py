"""`GET /metrics`: Prometheus text of the box's counters (broker/ops/metrics.py), with its own authentication."""

from __future__ import annotations

import hmac

from aiohttp import web

from broker.core.errors import Forbidden, NotFound, Unauthorized
from http_api.envelope import Handler
from http_api.keys import MONITOR, SERVICES

__all__ = ["METRICS_PATH", "metrics", "metrics_auth_middleware"]

METRICS_PATH = "/metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus text exposition format 0.0.4


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of the box's counters (authenticated by `metrics_auth_middleware`)."""
    if MONITOR not in request.app:
        raise NotFound("metrics are not collected by this app")
    body = request.app[MONITOR].scrape()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@web.middleware
async def metrics_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """/metrics takes the admin token or `metrics.token` (INTERCOM_METRICS_TOKEN); runs before the general
    auth middleware, which knows only directory tokens, and bypasses it for this one path."""
    if request.path != METRICS_PATH:
        return await handler(request)
    svc = request.app[SERVICES]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if not token or scheme.lower() != "bearer":
        if svc.settings.local_only:
            return await metrics(request)
        raise Unauthorized("missing bearer token (the admin token or INTERCOM_METRICS_TOKEN)")
    wanted = svc.settings.metrics.token
    if wanted is not None and hmac.compare_digest(token.encode(), wanted.get_secret_value().encode()):
        return await metrics(request)
    p = await svc.directory.authenticate(token)
    if p.role != "admin":
        raise Forbidden(f"a {p.role} may not read /metrics")
    return await metrics(request)
