"""`GET /api/sites/{site_id}/{view}`: one site's read-only admin views, through the integrator (its token, the site's
prefix), with the site's own envelope and status passed on. Only the views listed here, only GET."""

from __future__ import annotations

import asyncio

from aiohttp import web

from broker.core.errors import DomainError, NotFound
from broker.integrator.fanout import SiteError, get_json
from broker.integrator.keys import HTTP, SITES

__all__ = ["VIEWS", "SiteTimeout", "SiteUnreachable", "site_view"]

# view -> (the site's path, the query parameters passed on)
_HISTORY = ("household_number", "device_id", "status", "since", "until", "limit", "cursor", "q")
VIEWS: dict[str, tuple[str, tuple[str, ...]]] = {
    "site": ("/api/admin/site", ("devices",)),
    "calls": ("/api/calls", _HISTORY),
    "devices": ("/api/admin/devices", ("household_number",)),
    "households": ("/api/admin/households", ()),
    "residents": ("/api/admin/residents", ("household_number",)),
    "doors": ("/api/doors/events", ("device_id", "household_number", "limit")),
}


class SiteUnreachable(DomainError):
    status = 502
    default_reason = "site_unreachable"


class SiteTimeout(DomainError):
    status = 504
    default_reason = "site_timeout"


async def site_view(request: web.Request) -> web.Response:
    """One site's admin view, read-only: `view` is site, calls, devices, households, residents or doors."""
    sites = request.app[SITES]
    site_id, view = request.match_info["site_id"], request.match_info["view"]
    site = sites.sites.get(site_id)
    if site is None:
        raise NotFound(f"no site {site_id!r} in the integrator's configuration", "unknown_site")
    if view not in VIEWS:
        raise NotFound(f"no view {view!r}; one of {', '.join(VIEWS)}")
    path, allowed = VIEWS[view]
    params = {k: v for k, v in request.query.items() if k in allowed}
    try:
        status, body, headers = await asyncio.wait_for(
            get_json(request.app[HTTP], site.scoped(path), site.token, params), sites.timeout_s)
    except TimeoutError as exc:
        site.failed(f"{view}: no answer within {sites.timeout_s:g} s")
        raise SiteTimeout(f"site {site_id!r} did not answer within {sites.timeout_s:g} s") from exc
    except SiteError as exc:
        site.failed(f"{view}: {exc}")
        raise SiteUnreachable(f"site {site_id!r}: {exc}") from exc
    return web.json_response(body, status=status, headers=headers)
