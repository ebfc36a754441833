"""Which client of a party took an action: one resident may have a phone and a tablet
(`resident-2/phone`, `resident-2/tablet`, see auth.client_id_suffixes), all on `users/2/...`."""

from __future__ import annotations

import re

from broker.core.errors import Forbidden
from broker.core.states import Party

__all__ = ["taker"]


def taker(party: Party, connection_client_id: str | None, named: str | None) -> str:
    """The acting client: the MQTT connection's own client id when there is one (embedded broker), else the
    client the body names (REST, bridge mode), which must be one of the party's (`{role}-{id}[/<suffix>]`),
    else the party's bare client id `{role}-{id}`."""
    if connection_client_id:
        return connection_client_id
    if named is None:
        return f"{party.role}-{party.id}"
    if not re.fullmatch(rf"{party.role.value}[-_]{re.escape(party.id)}(?:/.+)?", named, re.DOTALL):
        raise Forbidden(f"client_id '{named}' is not a client of {party.role} {party.id} "
                        f"(expected '{party.role}-{party.id}' or '{party.role}-{party.id}/<suffix>')")
    return named
