"""Visitor snapshots: a door station uploads a JPEG for its live call; parties and admins read it."""

from __future__ import annotations

import asyncio

from aiohttp import web

from broker.core.ids import parse_id
from broker.core.snapshots import TooLarge
from http_api.auth import party_of, principal, require
from http_api.envelope import ok
from http_api.keys import SERVICES

__all__ = ["fetch", "upload"]


async def upload(request: web.Request) -> web.Response:
    """`POST /api/calls/{call_id}/snapshot`, body: the JPEG itself (Content-Type image/jpeg).

    Read here, not through `http.max_body_bytes`: a snapshot has its own limit, `snapshots.max_bytes`.
    """
    call_id = parse_id(request.match_info["call_id"], "call_id")
    p = require(request, "device")
    svc = request.app[SERVICES]
    if p is None:  # local-only mode: a station may name itself
        named = request.query.get("device_id")
        device_id = parse_id(named, "device_id") if named else None
    else:
        device_id = p.id if p.role == "device" else None
    limit = svc.settings.snapshots.max_bytes
    svc.snapshots.check_upload(call_id, device_id, request.content_length)
    data = bytearray()
    timeout = svc.settings.limits.http_body_timeout_s
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_chunked(64 * 1024):
                data += chunk
                if len(data) > limit:
                    raise TooLarge(f"snapshot is over snapshots.max_bytes ({limit} bytes)")
    except TimeoutError:
        raise web.HTTPRequestTimeout(reason=f"request body not received within {timeout:g} s") from None
    return ok(await svc.snapshots.attach(call_id, device_id, bytes(data)))


upload.reads_own_body = True  # type: ignore[attr-defined]  # read_deadline_middleware leaves the body to it


async def fetch(request: web.Request) -> web.Response:
    """`GET /api/calls/{call_id}/snapshot`: the JPEG, for the call's device, its residents and admins."""
    call_id = parse_id(request.match_info["call_id"], "call_id")
    data = await request.app[SERVICES].snapshots.read(call_id, party_of(principal(request)))
    # nosniff: the bytes are a station's upload; a browser must never run them as anything but an image
    return web.Response(body=data, content_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"})
