"""Directory administration: households, residents, devices and their tokens (admin only)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker.core.calls import iso
from broker.core.errors import BadRequest, NotFound
from broker.core.ids import parse_id
from broker.core.store import DIRECTORY
from broker.core.wire.directory import DeviceIn, DirectoryPatch, HouseholdIn, ResidentIn
from broker.core.wire.queries import AdminListQuery
from http_api.auth import require
from http_api.envelope import ok, parse_body, parse_query
from http_api.keys import SERVICES

__all__ = ["create", "delete", "get", "list_all", "new_token", "update"]

KINDS = ("households", "residents", "devices")


def _kind(request: web.Request) -> str:
    require(request)
    kind = request.match_info["kind"]
    if kind not in KINDS:
        raise NotFound(f"unknown collection '{kind}'")
    return kind


def _ident(request: web.Request, kind: str) -> str:
    return parse_id(request.match_info["ident"], DIRECTORY[kind])


def _view(row: dict[str, Any]) -> dict[str, Any]:
    """A directory row as REST shows it: times as ISO-8601 UTC like every REST time, a device's flag a boolean."""
    out = {**row, "created_at": iso(row["created_at"])} if "created_at" in row else dict(row)
    if "device_id" in out:
        out["emergency"] = bool(out.get("emergency"))
    return out


def _with_settings(request: web.Request, kind: str, row: dict[str, Any]) -> dict[str, Any]:
    """A resident's or household's do-not-disturb and forwarding settings, so a listing needs no read per row."""
    calls = request.app[SERVICES].calls
    if kind == "residents":
        return {**row, "dnd": calls.dnd.view("resident", row["resident_id"])}
    if kind == "households":
        number = row["household_number"]
        forwarding = calls.forwarding.view(number)
        forwarding.pop("household_number", None)
        return {**row, "dnd": calls.dnd.view("household", number), "forwarding": forwarding}
    return row


async def create(request: web.Request) -> web.Response:
    kind = _kind(request)
    directory = request.app[SERVICES].directory
    if kind == "households":
        hh = await parse_body(request, HouseholdIn)
        return ok(_view(directory.add_household(hh.household_number, hh.name)))
    if kind == "residents":
        r = await parse_body(request, ResidentIn)
        return ok(directory.add_member(kind, r.resident_id, r.household_number, r.name))
    d = await parse_body(request, DeviceIn)
    directory.check_device_kind(d.kind, d.households)
    created = directory.add_member(kind, d.device_id, d.household_number, d.name,
                                   {"emergency": int(d.emergency)})
    kind_view = directory.set_device_kind(d.device_id, d.kind, d.households)
    return ok({**created, "kind": kind_view["kind"], "households": kind_view["households"]})


async def list_all(request: web.Request) -> web.Response:
    kind = _kind(request)
    query = parse_query(request, AdminListQuery)
    rows = request.app[SERVICES].directory.list_all(kind, query.household_number)
    return ok([_with_settings(request, kind, _view(r)) for r in rows])


async def get(request: web.Request) -> web.Response:
    kind = _kind(request)
    return ok(_with_settings(request, kind, _view(request.app[SERVICES].directory.get(kind, _ident(request, kind)))))


async def delete(request: web.Request) -> web.Response:
    kind = _kind(request)
    request.app[SERVICES].directory.delete(kind, _ident(request, kind))
    return ok(None)


async def new_token(request: web.Request) -> web.Response:
    kind = _kind(request)
    if kind == "households":
        raise NotFound("households have no token")
    return ok(request.app[SERVICES].directory.reissue_token(kind, _ident(request, kind)))


async def update(request: web.Request) -> web.Response:
    """Rename an entry, move a resident or device to another household, set a device's kind or emergency flag
    (fields left out stay; a door station has no households list)."""
    kind = _kind(request)
    ident = _ident(request, kind)
    patch = await parse_body(request, DirectoryPatch)
    changes = patch.model_dump(exclude_unset=True)
    directory = request.app[SERVICES].directory
    device_fields = {"kind", "households"} & changes.keys()
    if device_fields and kind != "devices":
        raise BadRequest(f"{', '.join(sorted(device_fields))}: only devices have a kind")
    if "emergency" in changes and kind != "devices":
        raise BadRequest("emergency: only devices have an emergency flag")
    rest = {k: v for k, v in changes.items() if k not in device_fields}
    view = directory.update(kind, ident, rest) if rest or not device_fields else {}
    if device_fields:
        row = directory.device(ident)
        device_kind = patch.kind or row["kind"]
        households = patch.households if "households" in changes else (
            row["households"] if device_kind == "lobby" else None)
        view = directory.set_device_kind(ident, device_kind, households)
    return ok(_view(view))
