"""`PATCH /api/admin/devices/{id}`: make a device a unit door station or a lobby panel (issue 13)."""

from __future__ import annotations

from aiohttp import web

from broker.core.calls import iso
from broker.core.payloads import DeviceKindIn, parse_id
from http_api.auth import require
from http_api.envelope import ok, parse_body
from http_api.keys import SERVICES

__all__ = ["set_kind"]


async def set_kind(request: web.Request) -> web.Response:
    """`{kind?, households?}`; a field left out keeps its value (a door station has no households list)."""
    require(request)
    device_id = parse_id(request.match_info["ident"], "device_id")
    body = await parse_body(request, DeviceKindIn)
    directory = request.app[SERVICES].directory
    row = directory.device(device_id)
    kind = body.kind or row["kind"]
    households = body.households if "households" in body.model_fields_set else (
        row["households"] if kind == "lobby" else None)
    view = directory.set_device_kind(device_id, kind, households)
    return ok({**view, "created_at": iso(view["created_at"])})
