"""`GET /api/admin/site`: which site this instance serves and how it is doing, in one read (the integrator's)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from broker.core.calls import iso
from broker.core.states import EndReason
from broker.core.wire.queries import SiteQuery
from http_api.auth import require
from http_api.envelope import ok, parse_query
from http_api.keys import SERVICES
from http_api.site_scope import scope_of

__all__ = ["FAILED", "MISSED", "site_info"]

DAY_S = 86_400.0
# Ended without an answer: rang out, the door gave up, or every target was in do-not-disturb (as resident_calls).
MISSED = frozenset({EndReason.TIMEOUT, EndReason.CANCELLED, EndReason.DND})
# Ended by a fault: a party's connection dropped, or the call ran into calls.max_duration_s.
FAILED = frozenset({EndReason.PARTY_OFFLINE, EndReason.MAX_DURATION})
_PAGE = 500
_SCAN_MAX = 10_000  # a day's calls read at most (a site of 200 households makes hundreds): `truncated` past it


async def _day_counts(request: web.Request) -> dict[str, Any]:
    calls = request.app[SERVICES].calls
    out: dict[str, Any] = {"calls": 0, "missed": 0, "failed": 0}
    after: tuple[float, str] | None = None
    since = time.time() - DAY_S
    while out["calls"] < _SCAN_MAX:
        rows, after = calls.history_page({}, _PAGE, since, None, after)
        for row in rows:
            out["calls"] += 1
            reason = row.get("end_reason")
            if reason in MISSED and not row.get("resident_id"):
                out["missed"] += 1
            elif reason in FAILED:
                out["failed"] += 1
        if after is None:
            return out
        await asyncio.sleep(0)  # a page at a time: other requests and MQTT go on between pages
    return {**out, "truncated": True}


async def site_info(request: web.Request) -> web.Response:
    """The site's id, mode, devices (online/total), live calls and the last 24 h's calls, missed and failed."""
    require(request)
    query = parse_query(request, SiteQuery)
    svc = request.app[SERVICES]
    scope = scope_of(request.app)
    devices = svc.directory.list_all("devices")
    statuses = []
    for device in devices:
        row = svc.store.get_status(device["device_id"])
        if row is not None:  # never reported: offline, and no status to show
            statuses.append({"device_id": device["device_id"], "online": row["online"], "battery": row["battery"],
                             "properties": row["properties"], "updated_at": iso(row["updated_at"])})
    data: dict[str, Any] = {
        "site_id": scope.site_id,
        "mode": "bridge" if scope.external_broker is not None else "embedded",
        "devices": {"total": len(devices), "online": sum(1 for s in statuses if s["online"])},
        "live_calls": svc.calls.active_count,
        "last_24h": await _day_counts(request),
    }
    if query.devices:
        data["device_status"] = statuses
    return ok(data)
