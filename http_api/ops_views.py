"""Site operations: a resident's named tokens (one per phone or tablet), lifting a flapping ban, device health."""

from __future__ import annotations

import time
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from broker.core.calls import iso
from broker.core.errors import Conflict, Forbidden
from broker.core.health import summarize
from broker.core.ids import parse_id
from http_api.auth import require
from http_api.envelope import ok, parse_body, parse_query
from http_api.keys import SERVICES, UNBAN

__all__ = ["NamedTokenIn", "device_health", "issue_named_token", "list_named_tokens", "revoke_named_token", "unban"]


class NamedTokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str


def _resident(request: web.Request) -> str:
    require(request)
    return parse_id(request.match_info["resident_id"], "resident_id")


async def issue_named_token(request: web.Request) -> web.Response:
    """`POST /api/admin/residents/{id}/tokens {"name": "phone"}`: a token for one device (shown once)."""
    resident_id = _resident(request)
    body = await parse_body(request, NamedTokenIn)
    return ok(request.app[SERVICES].directory.issue_named_token(resident_id, body.name))


async def list_named_tokens(request: web.Request) -> web.Response:
    resident_id = _resident(request)
    directory = request.app[SERVICES].directory
    directory.resident(resident_id)
    return ok([{**t, "created_at": iso(t["created_at"])} for t in directory.named.names(resident_id)])


async def revoke_named_token(request: web.Request) -> web.Response:
    resident_id = _resident(request)
    request.app[SERVICES].directory.revoke_named_token(resident_id, request.match_info["name"])
    return ok(None)


async def unban(request: web.Request) -> web.Response:
    """`POST /api/admin/clients/{client_id}/unban`: lift the client id's flapping ban at once."""
    require(request)
    lift = request.app.get(UNBAN)
    if lift is None:
        raise Conflict("bridge mode: the external broker keeps its own bans", "not_embedded")
    client_id = request.match_info["client_id"]
    return ok({"client_id": client_id, "was_banned": lift(client_id)})


class HealthQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    days: Annotated[float, Field(gt=0, le=90)] = 7.0


async def device_health(request: web.Request) -> web.Response:
    """`GET /api/devices/{device_id}/status/history?days=7`: online/offline and battery changes, and a summary."""
    p = require(request, "device")
    device_id = parse_id(request.match_info["device_id"], "device_id")
    if p is not None and p.role == "device" and p.id != device_id:
        raise Forbidden(f"device {p.id} may not read device {device_id}'s health")
    query = parse_query(request, HealthQuery)
    svc = request.app[SERVICES]
    svc.directory.device(device_id)
    now = time.time()
    since = now - query.days * 86400
    changes = svc.store.status_history(device_id, since)
    return ok({"device_id": device_id, "since": iso(since), "summary": summarize(changes, since, now),
               "changes": [{**c, "ts": iso(max(c["ts"], since))} for c in changes]})
