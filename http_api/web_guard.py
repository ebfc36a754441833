"""The REST side of `broker.web_guard`: a foreign `Host` or browser `Origin` is refused before anything runs.

* Every request must name the box in `Host` (DNS rebinding): else 403, reason `host_not_allowed`.
* A request that changes state (POST, PUT, PATCH, DELETE) from a foreign `Origin` gets 403, reason
  `origin_not_allowed`; its body must be declared `application/json` (else 415), so a browser must send a
  CORS preflight first, which `http_api.cors` answers only for `http.cors_origins`. A bodyless request
  (curl -X POST, DELETE) passes whatever its type: a browser sends `Origin` with every such request.
  `BODY_TYPES` names the few routes that take another type (a snapshot upload takes `image/jpeg`).
"""

from __future__ import annotations

import logging

from aiohttp import web

from broker.core.errors import DomainError, Forbidden
from broker.limiter import LogThrottle
from broker.web_guard import Local, WebGuard, local_of
from http_api.envelope import Handler
from http_api.keys import WEB_GUARD

__all__ = ["BODY_TYPES", "UnsupportedMediaType", "web_guard_middleware"]

log = logging.getLogger("intercom.http")
_quiet = LogThrottle()
CHANGES_STATE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON = "application/json"
# (method, route) -> the body type that route takes instead of JSON
BODY_TYPES: dict[tuple[str, str], str] = {("POST", "/api/calls/{call_id}/snapshot"): "image/jpeg"}


class UnsupportedMediaType(DomainError):
    status = 415
    default_reason = "unsupported_media_type"


def _local(request: web.Request) -> Local:
    return local_of(request.transport.get_extra_info("sockname")) if request.transport is not None else None


def _refuse(request: web.Request, why: str, detail: str, reason: str) -> Forbidden:
    _quiet.log(log, logging.WARNING, f"{why} {request.remote}", "refused %s %r from %s: %s", request.method,
               request.path, request.remote, detail)
    return Forbidden(detail, reason)


@web.middleware
async def web_guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    guard: WebGuard = request.app[WEB_GUARD]
    local = _local(request)
    if not guard.host_allowed(request.headers.get("Host"), local):
        raise _refuse(request, "host", f"Host {request.headers.get('Host')!r} does not name this box "
                                       "(http.allowed_hosts)", "host_not_allowed")
    if request.method not in CHANGES_STATE:
        return await handler(request)
    origin = request.headers.get("Origin")
    if not guard.origin_allowed(origin, local):
        raise _refuse(request, "origin", f"origin {origin!r} may not change state here (http.cors_origins)",
                      "origin_not_allowed")
    if request.body_exists:
        resource = request.match_info.route.resource
        expected = BODY_TYPES.get((request.method, resource.canonical), JSON) if resource is not None else JSON
        if request.content_type != expected:
            raise UnsupportedMediaType(f"the body must be Content-Type {expected}, got {request.content_type!r}")
    return await handler(request)
