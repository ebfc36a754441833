"""Site operations for the admin CLI: a resident's named tokens (one per phone or tablet), lifting a flapping ban."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict

from broker.core.calls import iso
from broker.core.errors import Conflict
from broker.core.payloads import parse_id
from http_api.auth import require
from http_api.envelope import ok, parse_body
from http_api.keys import SERVICES, UNBAN

__all__ = ["NamedTokenIn", "issue_named_token", "list_named_tokens", "revoke_named_token", "unban"]


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
