"""The request body deadline: a client that sends a request head and then trickles its body gets 408.

The head's deadline is the listener's (`broker.http_site`); this reads the whole body, within
`limits.http_body_timeout_s`, before any other middleware or view runs. aiohttp keeps the bytes, so a
view's `request.read()` / `json()` returns them without waiting again. A view marked `reads_own_body`
(a snapshot upload, with its own size limit) streams its body itself, under the same deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from http_api.keys import SERVICES

__all__ = ["read_deadline_middleware"]


@web.middleware
async def read_deadline_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.body_exists and not getattr(request.match_info.handler, "reads_own_body", False):
        timeout = request.app[SERVICES].settings.limits.http_body_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await request.read()
        except TimeoutError:
            raise web.HTTPRequestTimeout(reason=f"request body not received within {timeout:g} s") from None
    return await handler(request)
