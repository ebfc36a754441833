"""Call endpoints of the seed API (current and older shapes). Thin: parse, check who, delegate."""

from __future__ import annotations

from aiohttp import web

from broker.core import policy
from broker.core.clients import taker
from broker.core.errors import BadRequest
from broker.core.policy import Act, Subject
from broker.core.states import Party, Role
from broker.core.wire.calls import CallRequest, ControlBody, EndSessionRequest, RtcCallRequest
from broker.core.wire.queries import ActiveQuery, SessionQuery
from http_api.auth import party_of, principal, require
from http_api.envelope import ok, parse_body, parse_query
from http_api.keys import SERVICES

__all__ = ["active_calls", "call", "control_device", "control_resident", "end_session", "rtc_call",
           "session"]


def _own_device(request: web.Request, device_id: str) -> None:
    policy.require(principal(request), Act.SPEAK_AS, Subject("device", device_id))


async def call(request: web.Request) -> web.Response:
    body = await parse_body(request, CallRequest)
    _own_device(request, body.device_id)
    svc = request.app[SERVICES]
    try:
        data = svc.calls.start_call(body.device_id, body.household_number, body.target_resident_id, body.timestamp)
    finally:
        # answer only once the call is stored (group commit, end of this loop tick), a refusal that stored
        # one (every target in do-not-disturb: 409 `dnd`) too
        await svc.calls.durable()
    return ok(data)


async def rtc_call(request: web.Request) -> web.Response:
    """Older `/api/rtc/call` and `/api/trtc/call`: a call from one device to one resident."""
    body = await parse_body(request, RtcCallRequest)
    _own_device(request, body.device_id)
    calls = request.app[SERVICES].calls
    try:
        data = calls.start_call(body.device_id, resident_id=body.resident_id)
    finally:
        await calls.durable()
    return ok(data)


async def control_device(request: web.Request) -> web.Response:
    body = await parse_body(request, ControlBody)
    p = principal(request)
    policy.require(p, Act.SPEAK_AS, Subject("device", body.device_id))  # a token's own id, when the body names one
    svc = request.app[SERVICES]
    actor = party_of(p)  # a device's token names it; the admin and anonymous callers name none
    if actor is None:
        actor = Party(Role.DEVICE, body.device_id or svc.calls.device_for(body.call_info.call_id))
    svc.calls.act(actor, body.call_info, taker(actor, None, body.client_id))
    await svc.calls.durable()
    return ok(None)


async def control_resident(request: web.Request) -> web.Response:
    body = await parse_body(request, ControlBody)
    p = principal(request)
    policy.require(p, Act.SPEAK_AS, Subject("resident", body.resident_id))
    svc = request.app[SERVICES]
    actor = party_of(p)
    if actor is None:
        # no token: the body's resident, else whom the call's state names; an anonymous local-only caller
        # may act for the household when several ring (the seed's body names nobody), the admin may not
        actor = svc.calls.unnamed_resident_actor(body.call_info.call_id, body.resident_id, household_may_act=p is None)
    cid = None if actor.role is Role.HOUSEHOLD and body.client_id is None else taker(actor, None, body.client_id)
    svc.calls.act(actor, body.call_info, cid)
    await svc.calls.durable()
    return ok(None)


async def session(request: web.Request) -> web.Response:
    query = parse_query(request, SessionQuery)
    p = principal(request)
    viewer = party_of(p)
    if viewer is None and p is None and query.resident_id is not None:
        viewer = Party(Role.RESIDENT, query.resident_id)
    return ok(request.app[SERVICES].calls.session(query.call_id, viewer))


async def end_session(request: web.Request) -> web.Response:
    body = await parse_body(request, EndSessionRequest)
    require(request)
    calls = request.app[SERVICES].calls
    calls.end_session(body.call_id, body.reason)
    await calls.durable()
    return ok(None)


async def active_calls(request: web.Request) -> web.Response:
    """Live calls of one party (`?resident_id=` or `?device_id=`), so a woken phone can re-sync."""
    query = parse_query(request, ActiveQuery)
    party = party_of(principal(request))
    if party is None:
        if query.resident_id is not None:
            party = Party(Role.RESIDENT, query.resident_id)
        elif query.device_id is not None:
            party = Party(Role.DEVICE, query.device_id)
        else:
            raise BadRequest("resident_id: required (or device_id, or a resident's or device's token)")
    return ok(request.app[SERVICES].calls.active_for(party))
