"""MQTT authentication: username = device/resident id, password = its token; anonymous only local-only."""

from __future__ import annotations

from dataclasses import dataclass

from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

from broker.errors import Unauthorized
from broker.services import Services

__all__ = ["PRINCIPAL", "IntercomAuthPlugin"]

PRINCIPAL = "intercom.principal"


class IntercomAuthPlugin(BaseAuthPlugin):
    @dataclass
    class Config:
        """No options: identity rules come from the server settings bound at start."""

    services: Services | None = None

    def bind(self, services: Services) -> None:
        self.services = services

    async def authenticate(self, *, session: Session) -> bool | None:
        svc = self.services
        if svc is None:
            return False
        if not session.username:
            return svc.settings.local_only
        try:
            principal = await svc.directory.authenticate(session.password or "")
        except Unauthorized:
            return False
        if principal.id != session.username:
            return False
        session.attributes[PRINCIPAL] = principal
        return True
