"""The end of every accepted publish (3.1.1 and 5): routing, retain, plugins' interceptors, amqtt's message events.

* Every accepted publish ends in `router.Router.route` (deliver, retain, interceptors); Wills take the same way
  (`publish_will`).
* `message_received_event` / `message_broadcast_event`: amqtt's message events, only when a plugin listens.
* Connections: on connect, a resumed 3.1.1 session gets its
  offline queue, then the retained messages of its own subscriptions (`_deliver_on_connect`).
Incoming QoS 2 is `handle_qos2.Qos2Mixin`'s, SUBSCRIBE and UNSUBSCRIBE `handle_subscribe.SubscribeMixin`'s, the
connection itself `handle_connect` / `connection`'s (both versions).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, TypeAlias

from broker.config import LimitsConfig
from broker.limiter import LogThrottle
from broker.mqtt import amqtt_compat
from broker.mqtt.amqtt_compat import BrokerEvents
from broker.mqtt.message import IncomingMessage, MessageProps
from broker.mqtt.quota import HELD
from broker.mqtt.routing import RoutingMixin
from broker.mqtt.session import Session
from broker.mqtt.session_persistence import DurableIncoming

if TYPE_CHECKING:
    from broker.mqtt.amqtt_compat import Broker

    _Base: TypeAlias = Broker
else:
    _Base = object


__all__ = ["FastPathMixin"]

log = logging.getLogger("intercom.fastpath")
_quiet = LogThrottle()


def over_held_quota(session: Session, nbytes: int) -> bool:
    """Whether holding `nbytes` more QoS 2 would pass the principal's `limits.max_held_bytes_per_principal`
    (counted for persistent sessions: what a clean one holds ends with its connection)."""
    held = session.inflight_in
    if isinstance(held, DurableIncoming) and not held.fits(nbytes):
        _quiet.log(log, logging.WARNING, f"held {held.quota.principal}",
                   "not holding a QoS 2 message of %r: %r holds %d bytes awaiting PUBREL "
                   "(limits.max_held_bytes_per_principal)", session.client_id, held.quota.principal,
                   held.quota.quotas.used(held.quota.principal, HELD))
        return True
    return False


class FastPathMixin(RoutingMixin):
    """The end of every accepted publish; delivery is `RoutingMixin`'s."""

    limits: LimitsConfig = LimitsConfig()  # `max_inflight_messages` bounds the incoming QoS 2 window

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        amqtt_compat.require_installed()
        super().__init__(*args, **kwargs)

    # ---- connections ----------------------------------------------------------------------------

    async def _deliver_on_connect(self, session: Session) -> None:
        """Offline queue, then retained messages of this session's own subscriptions only.

        Instead of amqtt's `for topic in self._subscriptions: _publish_retained_messages_for_subscription(...)`
        in amqtt's `_handle_client_session`, which is O(all filters) per connect and leaked other clients'
        retained messages; `handle_connect` calls it for a 3.1.1 connection.
        """
        await self._publish_session_retained_messages(session)
        self._publish_retained_on_connect(session)

    def publish_will(self, session: Session, topic: str, payload: bytes, qos: int, retain: bool,
                     props: MessageProps | None = None) -> None:
        """A Will (3.1.1 or 5) is published like the client's own PUBLISH: same routing, retain and interceptors
        (so it obeys the same rules on the topics a plugin owns)."""
        self.router.route(session, topic, payload, qos, retain, props)

    async def message_received_event(self, session: Session, topic: str, data: bytes, qos: int,
                                     retain: bool) -> IncomingMessage | None:
        """amqtt's `on_broker_message_received` for a client's publish (3.1.1 or 5); the message the plugins saw
        (`topic`, `data`, `qos`, `retain`), for `message_broadcast_event`, or None when no plugin listens to
        message events."""
        if not self._plugin_hooks().events:
            return None
        message = IncomingMessage(None, topic, data, retain, qos=qos)
        if self._has_listeners(BrokerEvents.MESSAGE_RECEIVED):
            await self.plugins_manager.fire_event(BrokerEvents.MESSAGE_RECEIVED, client_id=session.client_id,
                                                  message=message)
        return message

    async def message_broadcast_event(self, session: Session, message: IncomingMessage | None) -> None:
        """amqtt's `on_broker_message_broadcast` for a publish the ACL allowed, before it is routed."""
        if message is not None and self._has_listeners(BrokerEvents.MESSAGE_BROADCAST):
            await self.plugins_manager.fire_event(BrokerEvents.MESSAGE_BROADCAST, client_id=session.client_id,
                                                  message=message)
