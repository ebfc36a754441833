"""Directory administration: households, residents, devices and their tokens (admin only)."""

from __future__ import annotations

from aiohttp import web

from broker.errors import NotFound
from broker.payloads import DeviceIn, DirectoryPatch, HouseholdIn, ResidentIn
from http_api.auth import require
from http_api.envelope import ok, parse_body
from http_api.keys import SERVICES

__all__ = ["create", "delete", "get", "list_all", "new_token", "update"]

KINDS = ("households", "residents", "devices")


def _kind(request: web.Request) -> str:
    require(request)
    kind = request.match_info["kind"]
    if kind not in KINDS:
        raise NotFound(f"unknown collection '{kind}'")
    return kind


async def create(request: web.Request) -> web.Response:
    kind = _kind(request)
    directory = request.app[SERVICES].directory
    if kind == "households":
        hh = await parse_body(request, HouseholdIn)
        return ok(directory.add_household(hh.household_number, hh.name))
    if kind == "residents":
        r = await parse_body(request, ResidentIn)
        return ok(directory.add_member(kind, r.resident_id, r.household_number, r.name))
    d = await parse_body(request, DeviceIn)
    return ok(directory.add_member(kind, d.device_id, d.household_number, d.name))


async def list_all(request: web.Request) -> web.Response:
    kind = _kind(request)
    return ok(request.app[SERVICES].directory.list_all(kind, request.query.get("household_number")))


async def get(request: web.Request) -> web.Response:
    kind = _kind(request)
    return ok(request.app[SERVICES].directory.get(kind, request.match_info["ident"]))


async def delete(request: web.Request) -> web.Response:
    kind = _kind(request)
    request.app[SERVICES].directory.delete(kind, request.match_info["ident"])
    return ok(None)


async def new_token(request: web.Request) -> web.Response:
    kind = _kind(request)
    if kind == "households":
        raise NotFound("households have no token")
    return ok(request.app[SERVICES].directory.reissue_token(kind, request.match_info["ident"]))


async def update(request: web.Request) -> web.Response:
    """Rename an entry, or move a resident or device to another household (fields left out stay)."""
    kind = _kind(request)
    patch = await parse_body(request, DirectoryPatch)
    changes = patch.model_dump(exclude_unset=True)
    return ok(request.app[SERVICES].directory.update(kind, request.match_info["ident"], changes))
