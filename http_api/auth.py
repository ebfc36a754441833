"""Bearer-token identity for every request, checked in one middleware; the views ask broker.core.policy."""

from __future__ import annotations

from typing import cast

from aiohttp import web

from broker.core import policy
from broker.core.errors import Unauthorized
from broker.core.policy import SITE, Act, Subject
from broker.core.states import Party
from broker.core.tokens import Principal
from http_api.envelope import Handler
from http_api.keys import PRINCIPAL, SERVICES

__all__ = ["auth_middleware", "home_of", "is_public", "party_of", "principal", "require", "scope_to_caller"]

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


def require(request: web.Request, *roles: policy.Kind) -> Principal | None:
    """An endpoint's gate: admin and local-only anonymous callers pass; others must be able to act as some
    party of one of `roles` (none: the site manager's endpoint). Which party the view checks once it knows."""
    p = principal(request)
    if any(policy.may(p, Act.SPEAK_AS, Subject(role)) for role in roles):
        return p
    policy.require(p, Act.ADMINISTER, SITE, detail=f"a {p.role} may not call {request.method} {request.path}"
                   if p is not None else None)
    return p


def home_of(request: web.Request, p: Principal | None) -> str | None:
    """A resident caller's household (policy's `home`), else None."""
    if p is None or p.role != "resident":
        return None
    return str(request.app[SERVICES].directory.resident(p.id)["household_number"])


def party_of(p: Principal | None) -> Party | None:
    return p.party() if p is not None else None


def scope_to_caller(request: web.Request, filters: dict[str, str], what: str) -> None:
    """Narrow a listing's `filters` to the caller: a resident sees its household's `what`, a device its own;
    admins and local-only callers anything. Asking for someone else's is 403."""
    p = principal(request)
    if p is not None and p.role == "resident":
        own = home_of(request, p)
        number = filters.setdefault("household_number", own or "")
        policy.require(p, Act.ACCESS, Subject("household", number), own,
                       f"a resident may only list its own household's {what}")
    elif p is not None and p.role == "device":
        policy.require(p, Act.ACCESS, Subject("device", filters.setdefault("device_id", p.id)),
                       detail=f"a device may only list its own {what}")
    else:  # everything: the admin and local-only callers
        policy.require(p, Act.ACCESS, SITE, detail=f"a {p.role} may not call {request.method} {request.path}"
                       if p is not None else None)
