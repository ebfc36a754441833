"""The OpenAPI 3.1 description of the REST API, built from the live route table and the pydantic payload models.

Nothing here lists paths: every route the app serves becomes an operation, and `OPS` only adds what
a route cannot say itself (summary, body model, query parameters). A route missing from `OPS` still
appears, described by its view's docstring, so the document can never drift from what is served.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from broker.core.wire.calls import (
    CallRequest,
    ControlBody,
    EndSessionRequest,
    RtcCallRequest,
    RtcTokenRequest,
    UserSigRequest,
)
from broker.core.wire.directory import DeviceIn, DirectoryPatch, DndIn, ForwardingIn, HouseholdIn, ResidentIn
from broker.core.wire.doors import UnlockRequest
from broker.core.wire.status import DeviceStatus, SystemMessage
from http_api import (
    admin_views,
    audit_views,
    call_views,
    console_views,
    door_views,
    history_views,
    metrics_views,
    misc_views,
    ops_views,
    resident_views,
    site_views,
    snapshot_views,
)
from http_api.auth import is_public

__all__ = ["OPS", "Op", "build_spec", "openapi_json"]

_PARAM = re.compile(r"{(\w+)(?::[^}]*)?}")


@dataclass(frozen=True)
class Op:
    summary: str
    tag: str
    body: tuple[type[BaseModel], ...] = ()
    query: tuple[tuple[str, str, bool], ...] = ()  # (name, description, required)
    media: str = "application/json"  # what a success returns
    deprecated: bool = False


async def openapi_json(request: web.Request) -> web.Response:
    """This document: the OpenAPI 3.1 description of every route."""
    return web.json_response(build_spec(request.app))


_RESIDENT_OR_DEVICE = (("resident_id", "the resident whose calls to list", False),
                       ("device_id", "the device whose calls to list", False))

_HISTORY_QUERY = (("household_number", "only this household's calls", False),
                  ("device_id", "only this device's calls", False),
                  ("status", "ringing, connected or ended", False),
                  ("since", "started at or after (ISO 8601; no offset = UTC)", False),
                  ("until", "started before (ISO 8601)", False),
                  ("limit", "at most this many per page (capped by calls.history_limit_max)", False),
                  ("cursor", "the X-Next-Cursor of the previous page", False),
                  ("format", "json (default) or csv", False),
                  ("q", "search: a call id prefix, or a device, household or resident id", False))

OPS: dict[Any, Op] = {
    misc_views.healthz: Op("Health: broker and REST are serving", "system"),
    call_views.call: Op("Start a call from a door station to its household (or one resident)", "calls",
                        (CallRequest,)),
    call_views.rtc_call: Op("Start a call to one resident (older shape)", "calls", (RtcCallRequest,),
                            deprecated=True),
    call_views.control_device: Op("A door station acts on its call (hangup, cancelled)", "calls", (ControlBody,)),
    call_views.control_resident: Op("A resident acts on a call (answered, rejected, timeout, hangup)", "calls",
                                    (ControlBody,)),
    call_views.session: Op("One call's state and the caller's TRTC credentials", "calls",
                           query=(("call_id", "the call", True),
                                  ("resident_id", "local-only mode: whose credentials", False))),
    call_views.end_session: Op("End a call from the server side (admin)", "calls", (EndSessionRequest,)),
    history_views.history: Op("Call history, newest first; the next page's cursor is in X-Next-Cursor", "calls",
                              query=_HISTORY_QUERY),
    history_views.history_csv: Op("Call history as CSV, every call in the range (no paging)", "calls",
                                  query=_HISTORY_QUERY, media="text/csv"),
    call_views.active_calls: Op("Live calls of one party, to re-sync a woken app", "calls",
                                query=_RESIDENT_OR_DEVICE),
    misc_views.device_status: Op("A device reports its status (published retained)", "status", (DeviceStatus,)),
    misc_views.get_device_status: Op("A device's last reported status", "status"),
    misc_views.system_message: Op("Broadcast a system message (admin)", "status", (SystemMessage,)),
    misc_views.usersig: Op("A TRTC UserSig for a user id", "trtc", (UserSigRequest,)),
    misc_views.rtc_token: Op("A TRTC UserSig for a room (older shape)", "trtc", (RtcTokenRequest,),
                             deprecated=True),
    site_views.site_info: Op("Which site this instance serves: its id, mode, devices online/total, live calls, the "
                             "last 24 h's calls, missed and failed (admin)", "admin",
                             query=(("devices", "true: add every device's last status", False),)),
    admin_views.create: Op("Add a household, resident or device (a member's token is shown once)", "admin",
                           (HouseholdIn, ResidentIn, DeviceIn)),
    admin_views.list_all: Op("List households, residents or devices", "admin",
                             query=(("household_number", "only this household's members", False),)),
    admin_views.get: Op("One household, resident or device", "admin"),
    admin_views.update: Op("Rename an entry, move a member to another household, or set a device's kind", "admin",
                           (DirectoryPatch,)),
    door_views.unlock: Op("A resident opens the door station calling it (waits for the station's ack)", "doors",
                          (UnlockRequest,)),
    door_views.events: Op("Who opened which door, when, and how it went", "doors", query=(
        ("device_id", "only this door station", False), ("household_number", "only this household", False),
        ("limit", "at most this many, newest first", False))),
    snapshot_views.upload: Op("A door station attaches a JPEG of the visitor to its live call (image/jpeg body)",
                              "calls"),
    resident_views.resident_calls: Op("A resident's call history (who answered, ring and talk time, outcome)",
                                      "residents", query=(("missed", "only missed calls (true/false)", False),
                                                          ("limit", "at most this many, newest first", False))),
    resident_views.calls_seen: Op("Mark a resident's missed calls seen (the retained counter drops to 0)", "residents"),
    resident_views.active_calls: Op("A resident's ringing and connected calls (as the MQTT call_status command)",
                                    "residents"),
    resident_views.get_resident_dnd: Op("A resident's do-not-disturb setting", "residents"),
    resident_views.put_resident_dnd: Op("Set a resident's do-not-disturb (on/off or daily windows)", "residents",
                                        (DndIn,)),
    resident_views.get_household_dnd: Op("A household's do-not-disturb setting", "residents"),
    resident_views.put_household_dnd: Op("Set a household's do-not-disturb", "residents", (DndIn,)),
    resident_views.get_forwarding: Op("A household's no-answer forwarding", "residents"),
    resident_views.put_forwarding: Op("Set a household's no-answer forwarding (admin)", "residents", (ForwardingIn,)),
    snapshot_views.fetch: Op("A call's visitor snapshot (the call's parties and admins)", "calls", media="image/jpeg"),
    admin_views.delete: Op("Delete an entry (a household only once it is empty)", "admin"),
    admin_views.new_token: Op("Issue a new token for a resident or device (the old one stops working)", "admin"),
    ops_views.issue_named_token: Op("Issue a resident a named token, one per phone or tablet (shown once)", "admin",
                                    (ops_views.NamedTokenIn,)),
    ops_views.list_named_tokens: Op("A resident's named tokens (names and dates, never the tokens)", "admin"),
    ops_views.revoke_named_token: Op("Revoke one named token; the resident's others keep working", "admin"),
    ops_views.unban: Op("Lift an MQTT client id's flapping ban", "admin"),
    ops_views.device_health: Op("A device's online/offline and battery changes over recent days, summarised",
                                "status", query=(("days", "how far back (default 7, at most 90)", False),)),
    console_views.index: Op("The web console", "console", media="text/html"),
    console_views.static_file: Op("A file of the web console (scripts, styles, vendored MQTT.js)", "console",
                                  media="*/*"),
    console_views.config: Op("What the console needs before sign-in: mode, WebSocket listener, features",
                             "console"),
    openapi_json: Op("This document: the OpenAPI 3.1 description of every route", "console"),
    # operations (docs/operations.md)
    metrics_views.metrics: Op("Prometheus metrics (admin token or INTERCOM_METRICS_TOKEN)", "system",
                          media="text/plain"),
    audit_views.audit: Op("The audit log, newest first, paged by next_cursor (admin)", "admin", query=(
        ("since", "ISO 8601: only entries at or after this", False),
        ("until", "ISO 8601: only entries before this", False),
        ("limit", "page size, 1-1000 (default 100)", False),
        ("cursor", "next_cursor of the previous page", False))),
    audit_views.console_signin: Op("The console signs in with the admin token (recorded in the audit log)", "console"),
}

_PATH_ENUMS = {"kind": list(admin_views.KINDS)}
_ENVELOPE = {
    "type": "object",
    "required": ["code", "message", "data"],
    "properties": {"code": {"type": "integer", "description": "0 on success, else the HTTP status"},
                   "message": {"type": "string"}, "data": {"description": "the result; null on errors"}},
}


def _models() -> list[type[BaseModel]]:
    seen: dict[str, type[BaseModel]] = {}
    for op in OPS.values():
        for model in op.body:
            seen[model.__name__] = model
    return list(seen.values())


def _operation(method: str, path: str, handler: Any, models: dict[str, Any]) -> dict[str, Any]:
    op = OPS.get(handler)
    doc = (handler.__doc__ or "").strip().splitlines()
    summary = op.summary if op else (doc[0] if doc else f"{method} {path}")
    out: dict[str, Any] = {
        "operationId": f"{method.lower()}_{re.sub(r'[^A-Za-z0-9]+', '_', path).strip('_') or 'root'}",
        "summary": summary,
        "tags": [op.tag if op else "other"],
    }
    params = [{"name": name, "in": "path", "required": True,
               "schema": {"type": "string", **({"enum": _PATH_ENUMS[name]} if name in _PATH_ENUMS else {})}}
              for name in _PARAM.findall(path)]
    params += [{"name": n, "in": "query", "required": req, "description": d, "schema": {"type": "string"}}
               for n, d, req in (op.query if op else ())]
    if params:
        out["parameters"] = params
    if op and op.body:
        refs = [models[m.__name__] for m in op.body]
        schema = refs[0] if len(refs) == 1 else {"oneOf": refs}
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    media = op.media if op else "application/json"
    body = {"schema": {"$ref": "#/components/schemas/Envelope"}} if media == "application/json" else {}
    out["responses"] = {
        "200": {"description": "success", "content": {media: body}},
        "default": {"description": "error: the envelope with code = HTTP status and a message",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Envelope"}}}},
    }
    if op and op.deprecated:
        out["deprecated"] = True
    if is_public(path):
        out["security"] = []
    return out


def build_spec(app: web.Application) -> dict[str, Any]:
    """The document for every (method, path) `app` routes; HEAD is implied by GET."""
    refs, defs = models_json_schema([(m, "validation") for m in _models()],
                                    ref_template="#/components/schemas/{model}")
    schemas = {**defs.get("$defs", {}), "Envelope": _ENVELOPE}
    models = {m.__name__: ref for (m, _), ref in refs.items()}
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        if route.method in ("HEAD", "*") or route.resource is None:
            continue
        path = _PARAM.sub(r"{\1}", route.resource.canonical)
        paths.setdefault(path, {})[route.method.lower()] = _operation(route.method, path, route.handler, models)
    try:
        version = metadata.version("intercom-broker")
    except metadata.PackageNotFoundError:
        version = "0"
    return {
        "openapi": "3.1.0",
        "info": {"title": "intercom-broker REST API", "version": version,
                 "description": "Every response is the envelope {code, message, data}. In local-only mode no "
                                "token is needed; otherwise send `Authorization: Bearer <token>`."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }
