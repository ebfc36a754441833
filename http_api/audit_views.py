"""The audit log over REST: `GET /api/admin/audit`, the console's sign-in, and the middleware that records
every admin change, token issue/revocation and sign-in (door unlocks are recorded by the door service)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from broker.core.errors import BadRequest, DomainError, Forbidden
from broker.core.store import DIRECTORY
from broker.log_context import PRINCIPAL_VAR
from http_api.auth import principal, require
from http_api.envelope import Handler, ok, parse_query
from http_api.keys import SERVICES

__all__ = ["audit", "audit_middleware", "console_signin", "log_context_middleware"]

SIGNIN_PATH = "/api/console/signin"
_CHANGES = {"POST": "admin.create", "PUT": "admin.update", "PATCH": "admin.update", "DELETE": "admin.delete"}


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: datetime | None = None  # ISO 8601; a time without a zone is UTC
    until: datetime | None = None
    limit: int = Field(100, ge=1, le=1000)
    cursor: str | None = Field(None, max_length=40)


def _ts(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp()


async def audit(request: web.Request) -> web.Response:
    """`GET /api/admin/audit`: the audit log, newest first, a page at a time (`next_cursor`)."""
    p = require(request)
    if p is not None and p.role != "admin":
        raise Forbidden(f"a {p.role} may not read the audit log")
    q = parse_query(request, AuditQuery)
    try:
        items, next_cursor = request.app[SERVICES].audit.query(_ts(q.since), _ts(q.until), q.limit, q.cursor)
    except ValueError:
        raise BadRequest("cursor: not one this server returned") from None
    return ok({"items": [_view(item) for item in items], "next_cursor": next_cursor})


def _view(item: dict[str, Any]) -> dict[str, Any]:
    """A row as REST shows it: `at` in ISO 8601 UTC with milliseconds (several changes share a second)."""
    ts = item.pop("ts")
    at = datetime.fromtimestamp(ts, UTC)
    return {**item, "at": f"{at:%Y-%m-%dT%H:%M:%S}.{at.microsecond // 1000:03d}Z"}


async def console_signin(request: web.Request) -> web.Response:
    """The console signs in with the admin token: checked, and recorded (by `audit_middleware`)."""
    p = require(request)
    if p is not None and p.role != "admin":
        raise Forbidden(f"a {p.role} token does not sign in to the console; use the admin token")
    return ok({"principal": "anonymous" if p is None else f"{p.role}:{p.id}"})


def _audited(request: web.Request) -> tuple[str, str | None] | None:
    """(action, target) if this request changes something the audit log keeps, else None."""
    if request.path == SIGNIN_PATH and request.method == "POST":
        return "console.sign_in", None
    if request.method not in _CHANGES or not request.path.startswith("/api/admin/"):
        return None
    parts = [p for p in request.path[len("/api/admin/"):].split("/") if p]
    if parts and parts[-1] == "token":
        return ("token.issue" if request.method == "POST" else "token.revoke"), "/".join(parts[:-1])
    return _CHANGES[request.method], "/".join(parts)


def _created_id(kind: str, response: web.StreamResponse) -> str | None:
    """The id of the entry a create made, from the response's envelope."""
    body = response.body if isinstance(response, web.Response) else None
    field = DIRECTORY.get(kind)
    if not isinstance(body, bytes) or field is None:
        return None
    try:
        data = json.loads(body).get("data")
    except (ValueError, AttributeError):
        return None
    return str(data[field]) if isinstance(data, dict) and field in data else None


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record every admin change, token issue/revocation and console sign-in, refused ones included.
    Runs before authentication so a refused sign-in (401) is recorded too."""
    what = _audited(request)
    if what is None:
        return await handler(request)
    action, target = what
    audit_log = request.app[SERVICES].audit
    try:
        response = await handler(request)
    except DomainError as exc:
        audit_log.record(_actor(request), action, target, exc.reason or str(exc.status), request.remote)
        raise
    outcome = "ok" if response.status < 400 else str(response.status)
    if action == "admin.create" and target is not None and (ident := _created_id(target, response)) is not None:
        target = f"{target}/{ident}"
    detail: dict[str, Any] | None = {"replaces_previous": True} if action == "token.issue" else None
    audit_log.record(_actor(request), action, target, outcome, request.remote, detail)
    if action == "admin.delete" and outcome == "ok" and target and target.split("/")[0] in ("residents", "devices"):
        audit_log.record(_actor(request), "token.revoke", target, "ok", request.remote, {"by": "delete"})
    return response


def _actor(request: web.Request) -> str:
    try:
        p = principal(request)
    except KeyError:
        return "unknown"  # refused before authentication finished
    if p is None:
        return "unknown" if request.headers.get("Authorization") else "anonymous"
    return f"{p.role}:{p.id}"


@web.middleware
async def log_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Log lines written while serving a request name its caller (`principal` in JSON logs)."""
    p = principal(request)
    if p is not None:
        PRINCIPAL_VAR.set(f"{p.role}:{p.id}")
    return await handler(request)
