"""The one client-id grammar, and which client of a party took an action.

An MQTT client id is `{role}-{id}` (`device-1`, `resident-2`, `integrator-bms`), the admin's `admin`, each
optionally followed by `/<suffix>` (a non-empty suffix: one resident may have a phone and a tablet,
`resident-2/phone` and `resident-2/tablet`, all on `users/2/...`; see auth.client_id_suffixes). Nothing else
names a party: not `resident_2` (that is the TRTC user id), not `resident-2/`. The authenticating plugin
binds a login's client id to its principal by it, an anonymous local-only connection is recognised by it, and
a REST or bridge body that names a client is checked by it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from broker.core.errors import Forbidden
from broker.core.states import Party

__all__ = ["ClientId", "bound_client_id", "is_client_of", "parse_client_id", "taker"]

# A role is lowercase letters; an id never contains `/` (broker.ids); the suffix is anything non-empty.
_GRAMMAR = re.compile(r"(?P<role>[a-z]+)(?:-(?P<id>[^/]+))?(?:/(?P<suffix>.+))?", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ClientId:
    role: str
    id: str | None  # None: the admin's `admin`
    suffix: str | None


def parse_client_id(client_id: str) -> ClientId | None:
    """The role, id and suffix a client id names, else None (not of the grammar)."""
    m = _GRAMMAR.fullmatch(client_id)
    if m is None or (m["id"] is None) != (m["role"] == "admin"):
        return None
    return ClientId(m["role"], m["id"], m["suffix"])


def bound_client_id(role: str, ident: str) -> str:
    """The client id a principal or party must use (or extend with `/<suffix>`)."""
    return "admin" if role == "admin" else f"{role}-{ident}"


def is_client_of(client_id: str, role: str, ident: str, suffixes: bool = True) -> bool:
    """Is `client_id` one of `{role} {ident}`'s (with a suffix only when `suffixes`)?"""
    parsed = parse_client_id(client_id)
    return (parsed is not None and (parsed.role, parsed.id) == (role, None if role == "admin" else ident)
            and (suffixes or parsed.suffix is None))


def taker(party: Party, connection_client_id: str | None, named: str | None) -> str:
    """The acting client: the MQTT connection's own client id when there is one (embedded broker), else the
    client the body names (REST, bridge mode), which must be one of the party's, else the party's bare
    client id `{role}-{id}`."""
    if connection_client_id:
        return connection_client_id
    bare = bound_client_id(party.role.value, party.id)
    if named is None:
        return bare
    if not is_client_of(named, party.role.value, party.id):
        raise Forbidden(f"client_id '{named}' is not a client of {party.role} {party.id} "
                        f"(expected '{bare}' or '{bare}/<suffix>')")
    return named
