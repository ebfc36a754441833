"""amqtt hooks for broker.mqtt.session_persistence: persistent sessions and retained messages on disk.

Only public amqtt plugin events. `on_broker_client_connected` is synchronous inside, and the engine
(`handle_connect`) fires it before the outlet re-sends unacknowledged messages, so the session has
its durable containers by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from amqtt.plugins.base import BasePlugin

from broker.mqtt.amqtt_compat import BrokerContext
from broker.mqtt.hooks import SESSION_EXPIRY, SUB_OPTIONS, TracksSessions
from broker.mqtt.message import RetainedMessage, props_of
from broker.mqtt.session import Session
from broker.mqtt.session_persistence import SessionPersistence

__all__ = ["PersistencePlugin"]

log = logging.getLogger("intercom.sessions")
# Refresh `last_seen` of connected sessions (so a crash does not make them look idle) and drop the stored
# state of sessions amqtt expired meanwhile.
TOUCH_EVERY_S = 3600.0


class PersistencePlugin(BasePlugin[BrokerContext], TracksSessions):
    @dataclass
    class Config:
        """No options: the session database lives in the server's data_dir, bound at start."""

    persistence: SessionPersistence | None = None
    _toucher: asyncio.Task[None] | None = None

    def bind_persistence(self, persistence: SessionPersistence) -> None:
        self.persistence = persistence

    async def on_broker_pre_start(self) -> None:
        if self.persistence is not None:
            await self.persistence.restore(self.context)

    async def on_broker_post_start(self) -> None:
        if self.persistence is not None:
            self._toucher = asyncio.create_task(self._touch_connected(self.persistence))

    async def _touch_connected(self, persistence: SessionPersistence) -> None:
        while True:
            await asyncio.sleep(TOUCH_EVERY_S)
            for session in list(self.context.sessions):
                if session.transitions.state == "connected" and persistence.is_persistent(session):
                    persistence.db.touch(str(session.client_id), session.username,
                                         session.attributes.get(SESSION_EXPIRY))
            try:
                persistence.forget_expired(self.context)
            except Exception:  # a sweep that failed is retried next hour; it must not end the loop
                log.exception("could not drop expired persistent sessions")

    async def on_broker_pre_shutdown(self) -> None:
        if self._toucher is not None:
            self._toucher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._toucher
        if self.persistence is not None:
            self.persistence.freeze()

    def session_connected(self, session: Session) -> None:
        if self.persistence is not None:
            self.persistence.connected(session)

    def session_disconnected(self, session: Session) -> None:
        if self.persistence is not None:
            self.persistence.disconnected(session)

    def session_subscribed(self, session: Session, topic_filter: str, qos: int) -> None:
        if self.persistence is not None and self.persistence.is_persistent(session):
            self.persistence.db.subscribe(session.client_id or "", topic_filter, qos,
                                          session.attributes.get(SUB_OPTIONS, {}).get(topic_filter))

    def session_unsubscribed(self, session: Session, topic_filter: str) -> None:
        if self.persistence is not None and self.persistence.is_persistent(session):
            self.persistence.db.unsubscribe(session.client_id or "", topic_filter)

    def retained_set(self, topic: str, message: RetainedMessage) -> None:
        if self.persistence is not None and topic:
            self.persistence.db.retain(topic, bytes(message.data or b""), message.qos or 0, props_of(message))

