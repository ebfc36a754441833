"""A resident's call history and missed calls, do-not-disturb, household forwarding.

Who may call (broker.core.policy): admin and anonymous local-only callers anything; a resident its own
history and DND, and its own household's DND and forwarding settings (read); devices none of it.
"""

from __future__ import annotations

from aiohttp import web

from broker.core import commands, policy
from broker.core.ids import parse_id
from broker.core.policy import Act, Subject
from broker.core.states import Party, Role
from broker.core.wire.directory import DndIn, ForwardingIn
from broker.core.wire.queries import ResidentCallsQuery
from http_api.auth import home_of, principal
from http_api.envelope import ok, parse_body, parse_query
from http_api.keys import SERVICES

__all__ = ["active_calls", "calls_seen", "get_forwarding", "get_household_dnd", "get_resident_dnd", "put_forwarding",
           "put_household_dnd", "put_resident_dnd", "resident_calls"]


def _resident(request: web.Request) -> str:
    """The path's resident, if the caller may act for it (itself, admin, local-only anonymous)."""
    rid = parse_id(request.match_info["resident_id"], "resident_id")
    policy.require(principal(request), Act.ACCESS, Subject("resident", rid))
    request.app[SERVICES].directory.resident(rid)  # 404 if unknown
    return rid


def _household(request: web.Request, residents_may: bool = True) -> str:
    """The path's household, if the caller is admin, anonymous local-only, or (`residents_may`) a resident of it."""
    number = parse_id(request.match_info["household_number"], "household_number")
    p = principal(request)
    if residents_may:
        policy.require(p, Act.ACCESS, Subject("household", number), home_of(request, p))
    else:
        policy.require(p, Act.ADMINISTER, Subject("household", number))
    request.app[SERVICES].directory.get("households", number)  # 404 if unknown
    return number


async def resident_calls(request: web.Request) -> web.Response:
    """`GET /api/residents/{id}/calls?missed=true&limit=`: its ended calls, newest first, with its outcome."""
    rid = _resident(request)
    query = parse_query(request, ResidentCallsQuery)
    calls = request.app[SERVICES].calls.resident_calls
    return ok(calls.history(rid, query.missed, query.limit))


async def calls_seen(request: web.Request) -> web.Response:
    """`POST /api/residents/{id}/calls/seen`: every missed call seen; the retained counter drops to 0."""
    rid = _resident(request)
    return ok(commands.calls_seen(request.app[SERVICES], Party(Role.RESIDENT, rid), None).data)


async def active_calls(request: web.Request) -> web.Response:
    """`GET /api/residents/{id}/calls/active`: its ringing and connected calls (the `call_status` command)."""
    rid = _resident(request)
    return ok(commands.call_status(request.app[SERVICES], Party(Role.RESIDENT, rid), None).data)


async def get_resident_dnd(request: web.Request) -> web.Response:
    rid = _resident(request)
    return ok({"resident_id": rid, **request.app[SERVICES].calls.dnd.view("resident", rid)})


async def put_resident_dnd(request: web.Request) -> web.Response:
    """The `dnd` command's REST twin."""
    body = await parse_body(request, DndIn)
    rid = _resident(request)
    return ok({"resident_id": rid, **commands.set_dnd(request.app[SERVICES], Party(Role.RESIDENT, rid), body).data})


async def get_household_dnd(request: web.Request) -> web.Response:
    number = _household(request)
    return ok({"household_number": number, **request.app[SERVICES].calls.dnd.view("household", number)})


async def put_household_dnd(request: web.Request) -> web.Response:
    body = await parse_body(request, DndIn)
    number = _household(request)
    return ok({"household_number": number, **_set_dnd(request, "household", number, body)})


def _set_dnd(request: web.Request, scope: str, subject: str, body: DndIn) -> dict[str, object]:
    return request.app[SERVICES].calls.dnd.set(scope, subject, body.enabled, body.windows())


async def get_forwarding(request: web.Request) -> web.Response:
    number = _household(request)
    return ok(request.app[SERVICES].calls.forwarding.view(number))


async def put_forwarding(request: web.Request) -> web.Response:
    """Admin (site manager) only: who a household's unanswered calls ring next, and after how long."""
    body = await parse_body(request, ForwardingIn)
    number = _household(request, residents_may=False)
    return ok(request.app[SERVICES].calls.forwarding.set(number, body.forward_to, body.forward_after_s))
