"""Device status, system messages, TRTC credentials and health."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker.core import policy
from broker.core.errors import Forbidden, Overloaded
from broker.core.ids import parse_id
from broker.core.policy import Act, Subject
from broker.core.trtc import trtc_user_id
from broker.core.wire.calls import RtcTokenRequest, UserSigRequest
from broker.core.wire.status import DeviceStatus, SystemMessage
from http_api.auth import home_of, principal, require
from http_api.envelope import ok, parse_body
from http_api.keys import HEALTH, MONITOR, SERVICES
from http_api.site_scope import site_id_of

__all__ = ["device_status", "get_device_status", "healthz", "rtc_token", "system_message", "usersig"]


async def healthz(request: web.Request) -> web.Response:
    health = request.app[HEALTH]
    if not health.get("broker"):
        raise Overloaded("broker not serving yet", "not_ready")
    svc = request.app[SERVICES]
    state: dict[str, Any] = {"broker": True, "http": True, "active_calls": svc.calls.active_count,
                             "site_id": site_id_of(request.app)}
    monitor = request.app.get(MONITOR)
    if monitor is None:
        return ok(state)
    problems = monitor.problems()
    state |= {"healthy": not problems, "problems": problems, "write_gate": "open" if svc.store.gate.is_open
              else "closed", "loop_lag_ms": round(svc.calls.lag.lag_s * 1000, 1)}
    if problems:  # 503 with the same fields: a probe that only reads the status still sees "unhealthy"
        return web.json_response({"code": 503, "message": f"unhealthy: {'; '.join(problems)}", "data": state},
                                 status=503)
    return ok(state)


async def device_status(request: web.Request) -> web.Response:
    body = await parse_body(request, DeviceStatus)
    policy.require(principal(request), Act.SPEAK_AS, Subject("device", body.device_id))
    request.app[SERVICES].status.update(body)
    return ok(None)


async def get_device_status(request: web.Request) -> web.Response:
    """Admin and anonymous-local callers read any device; a resident its household's; a device itself."""
    svc = request.app[SERVICES]
    device_id = parse_id(request.match_info["device_id"], "device_id")
    p = principal(request)
    household = svc.directory.device(device_id)["household_number"] if p is not None and p.role == "resident" else None
    policy.require(p, Act.ACCESS, Subject("device", device_id, household), home_of(request, p))
    return ok(svc.status.get(device_id))


async def system_message(request: web.Request) -> web.Response:
    body = await parse_body(request, SystemMessage)
    require(request)
    request.app[SERVICES].status.system_message(body)
    return ok(None)


def _own_user_id(request: web.Request, user_id: str) -> None:
    p = principal(request)
    if p is not None and p.role in ("device", "resident") and user_id not in (p.id, f"{p.role}_{p.id}"):
        raise Forbidden(f"{p.role} {p.id} may not get credentials for '{user_id}'")


async def usersig(request: web.Request) -> web.Response:
    body = await parse_body(request, UserSigRequest)
    _own_user_id(request, body.user_id)
    trtc = request.app[SERVICES].trtc
    user = trtc_user_id(body.user_id)  # the id TRTC takes: `user_id` itself, or its mapped form
    return ok({"sdk_app_id": trtc.sdk_app_id, "user_id": user, "user_sig": trtc.user_sig(user),
               "expire_s": trtc.expire_s})


async def rtc_token(request: web.Request) -> web.Response:
    """Older `/api/rtc/token`: a UserSig for `user_id` to join room `channel_id`."""
    body = await parse_body(request, RtcTokenRequest)
    _own_user_id(request, body.user_id)
    creds = request.app[SERVICES].trtc.credentials(body.user_id, body.channel_id).model_dump()
    return ok({**creds, "channel_id": body.channel_id, "token": creds["user_sig"],
               "expire_s": request.app[SERVICES].trtc.expire_s})
