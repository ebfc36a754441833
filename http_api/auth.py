"""Bearer-token identity for every request, checked in one middleware; per-view role checks."""

from __future__ import annotations

from typing import cast

from aiohttp import web

from broker.core.errors import Forbidden, Unauthorized
from broker.core.states import Party
from broker.core.tokens import Principal
from http_api.envelope import Handler
from http_api.keys import PRINCIPAL, SERVICES

__all__ = ["auth_middleware", "is_public", "party_of", "principal", "require", "scope_to_caller"]

# No token needed: health, and the console's page, files, bootstrap config and the API description.
PUBLIC = frozenset({"/healthz", "/", "/api/console/config", "/api/openapi.json"})
PUBLIC_PREFIXES = ("/console/",)


def is_public(path: str) -> bool:
    return path in PUBLIC or path.startswith(PUBLIC_PREFIXES)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    svc = request.app[SERVICES]
    header = request.headers.get("Authorization", "")
    request[PRINCIPAL] = None
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Authorization must be 'Bearer <token>'")
        request[PRINCIPAL] = await svc.directory.authenticate(token.strip())
    elif not is_public(request.path) and not svc.settings.local_only:
        raise Unauthorized("missing bearer token")
    return await handler(request)


def principal(request: web.Request) -> Principal | None:
    """The caller, or None for an anonymous caller in local-only mode."""
    return cast("Principal | None", request[PRINCIPAL])


def require(request: web.Request, *roles: str) -> Principal | None:
    """Admin and local-only anonymous callers pass; others must hold one of `roles`."""
    p = principal(request)
    if p is None or p.role == "admin" or p.role in roles:
        return p
    raise Forbidden(f"a {p.role} may not call {request.method} {request.path}")


def party_of(p: Principal | None) -> Party | None:
    return p.party() if p is not None else None


def scope_to_caller(request: web.Request, filters: dict[str, str], what: str) -> None:
    """Narrow a listing's `filters` to the caller: a resident sees its household's `what`, a device its own;
    admins and local-only callers anything. Asking for someone else's is 403."""
    p = require(request, "resident", "device")
    if p is not None and p.role == "resident":
        own = request.app[SERVICES].directory.resident(p.id)["household_number"]
        if filters.setdefault("household_number", own) != own:
            raise Forbidden(f"a resident may only list its own household's {what}")
    elif p is not None and p.role == "device" and filters.setdefault("device_id", p.id) != p.id:
        raise Forbidden(f"a device may only list its own {what}")
