"""MQTT authentication: username = device/resident id (or integrator name), password = its token.

Anonymous only in local-only mode. Token checks run off the event loop (PBKDF2) and compare in
constant time. Failed attempts are rate limited per source address and per username; once a bucket
is empty, further attempts are refused without hashing. Successful logins are rate limited per
principal (`limits.connect_rate`), since one principal may use many client ids. The client id is
bound to the principal: `{role}-{id}` (or `{role}-{id}/<suffix>`, broker.core.clients), so no one can take over another
party's session.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass

from amqtt.mqtt.connack import IDENTIFIER_REJECTED, SERVER_UNAVAILABLE
from amqtt.plugins.base import BaseAuthPlugin

from broker.core import clients
from broker.core.errors import Unauthorized
from broker.core.services import Services
from broker.core.tokens import Principal, verify_token
from broker.limiter import KeyedLimiter, LogThrottle, is_exempt
from broker.mqtt.hooks import PRINCIPAL, REFUSAL
from broker.mqtt.session import Session

__all__ = ["IntercomAuthPlugin", "bound_client_id", "owned_by"]

log = logging.getLogger("intercom.auth")
_quiet = LogThrottle()


def bound_client_id(principal: Principal) -> str:
    """The client id a principal must use (or extend with `/<suffix>`): broker.core.clients' grammar."""
    return clients.bound_client_id(principal.role, principal.id)


def client_id_allowed(principal: Principal, client_id: str, suffixes: bool) -> bool:
    return clients.is_client_of(client_id, principal.role, principal.id, suffixes)


def owned_by(principal: Principal) -> Callable[[Session], bool]:
    """Selects the MQTT sessions of `principal`: those it authenticated, and stored persistent sessions
    (restored from disk, so without the attribute) under its username and one of its client ids."""
    def owns(session: Session) -> bool:
        holder = session.attributes.get(PRINCIPAL)
        if holder is not None:
            return bool(holder == principal)
        return session.username == principal.id and client_id_allowed(principal, session.client_id or "", True)
    return owns


class IntercomAuthPlugin(BaseAuthPlugin):
    @dataclass
    class Config:
        """No options: identity rules come from the server settings bound at start."""

    services: Services | None = None
    _per_ip: KeyedLimiter | None = None
    _per_user: KeyedLimiter | None = None
    _connects: KeyedLimiter | None = None  # successful logins per principal
    refused: collections.Counter[str]  # CONNECTs refused by reason, for /metrics (made by bind)

    def bind(self, services: Services) -> None:
        self.services = services
        self.refused = collections.Counter()
        rate = services.settings.limits.auth_failures
        self._per_ip = KeyedLimiter(rate.per_s, rate.burst)
        self._per_user = KeyedLimiter(rate.per_s, rate.burst)
        connects = services.settings.limits.connect_rate
        self._connects = KeyedLimiter(connects.per_s, connects.burst)

    async def authenticate(self, *, session: Session) -> bool | None:
        svc = self.services
        if svc is None or self._per_ip is None or self._per_user is None:
            return False
        if not session.username:
            return svc.settings.local_only
        ip_key = None if is_exempt(session.remote_address, svc.settings.limits.exempt_networks) else (
            session.remote_address or "?")
        if (ip_key is not None and not self._per_ip.has(ip_key)) or not self._per_user.has(session.username):
            self.refused["auth_lockout"] += 1
            _quiet.log(log, logging.WARNING, f"lockout {session.remote_address}",
                       "refused CONNECT of %r from %s: too many failed attempts", session.username,
                       session.remote_address, extra={"client_id": session.client_id})
            return False
        principal = await self._verify(svc, session.username, session.password or "")
        if principal is None:
            if ip_key is not None:
                self._per_ip.take(ip_key)
            self._per_user.take(session.username)
            self.refused["bad_credentials"] += 1
            _quiet.log(log, logging.WARNING, f"bad {session.remote_address}",
                       "refused CONNECT of %r from %s: bad credentials", session.username, session.remote_address,
                       extra={"client_id": session.client_id})
            return False
        if not client_id_allowed(principal, session.client_id or "", svc.settings.auth.client_id_suffixes):
            self.refused["client_id"] += 1
            _quiet.log(log, logging.WARNING, f"client id {principal.role}:{principal.id}",
                       "refused CONNECT of %s %r: client id %r is not %r", principal.role, principal.id,
                       session.client_id, bound_client_id(principal),
                       extra={"client_id": session.client_id, "principal": f"{principal.role}:{principal.id}"})
            session.attributes[REFUSAL] = IDENTIFIER_REJECTED
            return False
        if self._connects is not None and not self._connects.take(f"{principal.role}:{principal.id}"):
            self.refused["principal_connect_rate"] += 1
            _quiet.log(log, logging.WARNING, f"rate {principal.role}:{principal.id}",
                       "refused CONNECT of %s %r: CONNECT rate limit for this principal", principal.role, principal.id)
            session.attributes[REFUSAL] = SERVER_UNAVAILABLE
            return False
        session.attributes[PRINCIPAL] = principal
        return True

    @staticmethod
    async def _verify(svc: Services, username: str, password: str) -> Principal | None:
        integrator = svc.settings.acl.integrators.get(username)
        if integrator is not None:
            ok = await asyncio.to_thread(verify_token, password, integrator.token_hash)
            return Principal("integrator", username) if ok else None
        try:
            principal = await svc.directory.authenticate(password)
        except Unauthorized:
            return None
        return principal if principal.id == username else None
