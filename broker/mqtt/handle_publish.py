"""A client's PUBLISH (3.1.1 or 5) when it must wait: amqtt's message events, or an ACL that only answers async.

The PUBLISH itself is `router.Router`'s (`publish_plain` for the common one, `publish_packet` for any other):
it calls `publish_async` here only when a loaded plugin listens to amqtt's message events or judges topics
asynchronously; the verdict goes back to `Router.accept_publish`. Incoming QoS 2 (held until PUBREL),
SUBSCRIBE and UNSUBSCRIBE are one flow for both versions: `handle_qos2`, `handle_subscribe`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

from broker.mqtt.amqtt_compat import Action
from broker.mqtt.codec import Publish
from broker.mqtt.message import MessageProps

if TYPE_CHECKING:
    from broker.mqtt.connection import Connection
    from broker.mqtt.fast_path import FastPathMixin

    _Base: TypeAlias = FastPathMixin  # for the type checker: the message events, the ACL and the router
else:
    _Base = object

__all__ = ["PublishMixin"]


class PublishMixin(_Base):
    """A PUBLISH that waits for plugins; see the module docstring."""

    async def publish_async(self, conn: Connection, pub: Publish, props: MessageProps | None) -> None:
        """The publish with amqtt's message events (as for 3.1.1: QoS 2 ones fire at PUBREL) and any async ACL."""
        session = conn.session
        message = None
        if pub.qos < 2:
            message = await self.message_received_event(session, pub.topic, pub.payload, pub.qos, pub.retain)
        allowed = await self._allowed(session, pub.topic, Action.PUBLISH)
        if allowed:
            await self.message_broadcast_event(session, message)
        self.router.accept_publish(conn, pub, props, allowed)
