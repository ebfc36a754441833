"""Door unlock and the door event log. Thin: parse, decide who opens, delegate to the door service."""

from __future__ import annotations

from aiohttp import web

from broker.core import policy
from broker.core.doors import Opener
from broker.core.errors import BadRequest
from broker.core.policy import Act, Subject
from broker.core.services import Services
from broker.core.wire.doors import UnlockRequest
from broker.core.wire.queries import DoorEventsQuery
from http_api.auth import principal, scope_to_caller
from http_api.envelope import ok, parse_body, parse_query
from http_api.keys import SERVICES

__all__ = ["events", "unlock"]


async def unlock(request: web.Request) -> web.Response:
    """`POST /api/doors/unlock {device_id, call_id?, relay?, resident_id?}`: answers once the station acked."""
    body = await parse_body(request, UnlockRequest)
    p = principal(request)
    policy.require(p, Act.SPEAK_AS, Subject("resident", body.resident_id))  # a resident opens as itself
    svc = request.app[SERVICES]
    if p is not None and p.role == "resident":
        opener = Opener(p.id)
    elif p is not None:  # the admin opens as itself, or for the resident it names
        opener = Opener(body.resident_id)
    else:
        opener = Opener(_anonymous_resident(svc, body))
    return ok(await svc.doors.unlock(opener, body.device_id, body.call_id, body.relay))


def _anonymous_resident(svc: Services, body: UnlockRequest) -> str:
    """Local-only mode: the caller names itself, as on the resident controller; a one-resident call names it."""
    call_id = body.call_id
    if call_id is None and (call := svc.calls.live_call_of_device(body.device_id)) is not None:
        call_id = call.call_id
    if call_id is not None:
        return svc.calls.resident_for(call_id, body.resident_id)
    if body.resident_id is None:
        raise BadRequest("resident_id: required: add \"resident_id\" to the body, or send the resident's token "
                         "(Authorization: Bearer <token>)", "resident_id_required")
    return body.resident_id


async def events(request: web.Request) -> web.Response:
    """`GET /api/doors/events?device_id=&household_number=&limit=`, newest first."""
    query = parse_query(request, DoorEventsQuery)
    filters = query.model_dump(include={"device_id", "household_number"}, exclude_none=True)
    scope_to_caller(request, filters, "door events")
    return ok(request.app[SERVICES].doors.events(filters, query.limit))


