"""Feeds client publishes and connection events from amqtt into the call and status services."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from amqtt.plugins.base import BasePlugin

from broker.core.presence import Presence
from broker.core.services import Services
from broker.mqtt.amqtt_compat import BrokerContext
from broker.mqtt.hooks import PRINCIPAL, ReplyTo, TracksSessions
from broker.mqtt.session import Session
from plugins.call_router import identify, on_publish

__all__ = ["CallPlugin"]

log = logging.getLogger("intercom.plugin")


class CallPlugin(BasePlugin[BrokerContext], TracksSessions):
    @dataclass
    class Config:
        """No options: call settings live in broker.yaml's `calls:` and are bound at start."""

    services: Services | None = None
    presence: Presence | None = None

    def bind(self, services: Services) -> None:
        self.services = services

    def bind_presence(self, presence: Presence) -> None:
        self.presence = presence

    @staticmethod
    def owns_topic(topic: str) -> bool:
        """`devices/{id}/status` is the server's: a device's publish or Will there is a report the status service
        merges and publishes (retained, `origin: server`); it is never delivered or retained as sent."""
        return topic.endswith("/status") and topic.startswith("devices/") and topic.count("/") == 2

    def intercept_publish(self, session: Session, topic: str, payload: bytes) -> bool:
        """Called synchronously by FastPathMixin right after the publish ACL check (no task per packet).
        True when the call service handled it (the publish then has a receiver: MQTT 5 PUBACK 0x00)."""
        if self.services is None or not topic:
            return False
        return on_publish(self.services, session.attributes.get(PRINCIPAL), topic, payload, session.client_id)

    def intercept_request(self, session: Session, topic: str, payload: bytes, reply: ReplyTo) -> bool:
        """An MQTT 5 publish with a Response Topic: a `calls/request` is answered there (AnswersRequests)."""
        if self.services is None or not topic:
            return False
        return on_publish(self.services, session.attributes.get(PRINCIPAL), topic, payload, session.client_id,
                   (reply.topic, reply.correlation))

    def acknowledge_after(self, send: Callable[[], None]) -> None:
        """FastPathMixin's PUBACK barrier: a call request or action is acknowledged only once the
        transition it staged is committed (persist, then tell anyone, the sender included)."""
        if self.services is None:
            send()
            return
        self.services.calls.after_commit(send)

    def session_connected(self, session: Session) -> None:
        self._presence(session, online=True)

    def session_disconnected(self, session: Session) -> None:
        self._presence(session, online=False)

    def _presence(self, session: Session, online: bool) -> None:
        if self.presence is None:
            return
        party = identify(session.attributes.get(PRINCIPAL), session.client_id)
        if party is None:
            return
        try:
            if online:
                self.presence.connected(party, session.client_id or "")
            else:
                self.presence.disconnected(party, session.client_id or "")
        except Exception:
            log.exception("could not record presence of %s", party.key)
