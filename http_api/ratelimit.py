"""REST rate limits: per source address (before authentication) and per principal (after it).

Over the limit, a request gets 429 with `Retry-After`; `RateLimited` carries the header and
`envelope.error_middleware` renders it like every other domain error.
"""

from __future__ import annotations

import math

from aiohttp import web
from aiohttp.typedefs import Middleware

from broker.config import LimitsConfig
from broker.core.errors import DomainError
from broker.limiter import KeyedLimiter, is_exempt
from http_api.auth import principal
from http_api.envelope import Handler

__all__ = ["RateLimited", "rate_limit_middlewares"]




class RateLimited(DomainError):
    status = 429

    def __init__(self, who: str, retry_after: float) -> None:
        super().__init__(f"too many requests from {who}; retry after {math.ceil(retry_after)} s")
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}


def rate_limit_middlewares(limits: LimitsConfig) -> tuple[Middleware, Middleware]:
    """(per-address middleware to run before auth, per-principal middleware to run after it)."""
    per_ip = KeyedLimiter(limits.http_per_ip.per_s, limits.http_per_ip.burst)
    per_principal = KeyedLimiter(limits.http_per_principal.per_s, limits.http_per_principal.burst)

    @web.middleware
    async def ip_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        address = request.remote or "?"
        if not is_exempt(address, limits.exempt_networks) and not per_ip.take(address):
            raise RateLimited(address, per_ip.retry_after(address))
        return await handler(request)

    @web.middleware
    async def principal_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        p = principal(request)
        # The admin is not limited per principal: its token is the box's master key (a holder can do anything
        # anyway), and provisioning a site is hundreds of requests in a burst. The per-address limit still applies.
        if p is not None and p.role != "admin":
            key = f"{p.role}:{p.id}"
            if not per_principal.take(key):
                raise RateLimited(f"{p.role} {p.id}", per_principal.retry_after(key))
        return await handler(request)

    return ip_limit, principal_limit
