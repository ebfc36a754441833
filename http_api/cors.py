"""CORS for browser clients (the console, browser tools): an allow-list of origins, `http.cors_origins`.

A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an allowed origin is
answered 204 here, before authentication (browsers send no `Authorization` on a preflight); from any
other origin it is a 403. Every response to an allowed origin, errors included, carries
`Access-Control-Allow-Origin`, so a browser client can read the error envelope. Default: no origin.
"""

from __future__ import annotations

from aiohttp import web

from broker.core.errors import Forbidden
from http_api.envelope import Handler
from http_api.keys import SERVICES

__all__ = ["cors_preflight_middleware", "setup_cors"]

ALLOW_HEADERS = "Authorization, Content-Type"
EXPOSE_HEADERS = "Allow, Retry-After, X-Next-Cursor, Link"  # Link and X-Next-Cursor: GET /api/calls paging
MAX_AGE_S = "600"


def _allowed(request: web.Request) -> str | None:
    """The request's Origin if the allow-list admits it, else None."""
    origin = request.headers.get("Origin")
    if not origin:
        return None
    origins = request.app[SERVICES].settings.http.cors_origins
    return origin if origin.rstrip("/") in origins or "*" in origins else None


def _vary(response: web.StreamResponse) -> None:
    vary = response.headers.get("Vary", "")
    if "origin" not in vary.lower():
        response.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"


@web.middleware
async def cors_preflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    is_preflight = (request.method == "OPTIONS" and "Origin" in request.headers
                    and "Access-Control-Request-Method" in request.headers)
    if not is_preflight:
        return await handler(request)
    exc = request.match_info.http_exception
    if exc is not None and not isinstance(exc, web.HTTPMethodNotAllowed):
        return await handler(request)  # no such path: the router's 404
    origin = _allowed(request)
    if origin is None:
        raise Forbidden(f"origin '{request.headers['Origin']}' is not allowed (http.cors_origins)")
    methods = sorted(exc.allowed_methods) if isinstance(exc, web.HTTPMethodNotAllowed) else [request.method]
    response = web.Response(status=204, headers={
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": ", ".join(methods),
        "Access-Control-Allow-Headers": ALLOW_HEADERS,
        "Access-Control-Max-Age": MAX_AGE_S,
    })
    _vary(response)
    return response


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    origin = _allowed(request)
    if origin is None:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers.setdefault("Access-Control-Expose-Headers", EXPOSE_HEADERS)
    _vary(response)


def setup_cors(app: web.Application) -> None:
    app.on_response_prepare.append(_on_prepare)
