"""What a client publishes (3.1.1 or 5), handled on the one broker: PUBLISH QoS 0/1 (QoS 2: `handle_qos2`).

A PUBLISH takes the engine's one path (`FastPathMixin._route`: deliver, retain, plugins' interceptors)
with its properties; the common one (QoS 0/1, no properties, every ACL synchronous) skips the codec's
`Publish` (`publish_plain`). An MQTT 5 acknowledgement carries a reason code (§3.4.2.1): 0x10 when nobody
subscribes, 0x87 when the ACL refuses, 0x99 when the Payload Format Indicator says UTF-8 and the payload is
not [MQTT-3.3.2-4]. Acknowledgements go through the plugins' barrier (`AcknowledgesAfter`) for both versions.
Incoming QoS 2 (held until PUBREL), SUBSCRIBE and UNSUBSCRIBE are one flow for both versions: `handle_qos2`,
`handle_subscribe`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, TypeAlias

from broker.config import LimitsConfig
from broker.mqtt import codec
from broker.mqtt.amqtt_compat import Action
from broker.mqtt.codec import PUBACK, PUBREC, V5, Publish
from broker.mqtt.hooks import ReplyTo
from broker.mqtt.message import MessageProps
from broker.mqtt.reason import ProtocolError, Reason
from broker.mqtt.topics import valid_topic_name

if TYPE_CHECKING:
    from broker.mqtt.amqtt_compat import Broker
    from broker.mqtt.connection import Connection
    from broker.mqtt.engine import IntercomBroker

    _Base: TypeAlias = Broker
else:
    _Base = object

__all__ = ["PublishMixin"]

log = logging.getLogger("intercom.mqtt5")
NO_SUBSCRIBERS, NOT_AUTHORIZED = Reason.NO_MATCHING_SUBSCRIBERS, Reason.NOT_AUTHORIZED
PAYLOAD_FORMAT_INVALID = Reason.PAYLOAD_FORMAT_INVALID


def _reply(pub: Publish) -> ReplyTo | None:
    """Where a request wants its answer (§4.10), if it is one."""
    response = pub.props.get(codec.RESPONSE_TOPIC)
    return ReplyTo(response, pub.props.get(codec.CORRELATION_DATA)) if response is not None else None


class PublishMixin(_Base):
    """Inbound packets of MQTT 5 connections; see the module docstring."""

    limits: LimitsConfig

    def _ack(self: IntercomBroker, conn: Connection, ptype: int, packet_id: int, reason: int = 0) -> None:
        self.ack(conn, ptype, packet_id, reason)  # handle_qos2.Qos2Mixin.ack: one acknowledgement for both flows

    def _route_publish(self: IntercomBroker, conn: Connection, topic: str, data: bytes, qos: int, retain: bool,
                       props: MessageProps | None, reply: ReplyTo | None = None) -> int:
        return int(self._route(conn.session, topic, data, qos, retain, self._plugin_hooks(), props, reply))

    def publish_plain(self: IntercomBroker, conn: Connection, flags: int, body: bytes, version: int = V5) -> bool:
        """The common PUBLISH without the codec's `Publish`: QoS 0 or 1, a topic name, (MQTT 5) an empty property
        block, every ACL synchronous (the caller checks `sync_publish`). False for anything else, which
        `codec.decode_publish` then decodes strictly (and refuses with its reason code)."""
        qos = (flags >> 1) & 3
        if qos > 1 or (flags & 0x08 and not qos):
            return False
        end = 2 + int.from_bytes(body[:2], "big")
        pos = end + 2 if qos else end  # after the packet id
        if version == V5:
            if pos >= len(body) or body[pos]:  # the property length: 0 is no properties
                return False
            start = pos + 1
        elif pos > len(body):
            return False
        else:
            start = pos
        try:
            topic = body[2:end].decode()
        except UnicodeDecodeError:
            return False
        packet_id = int.from_bytes(body[end:pos], "big")
        if not valid_topic_name(topic) or (qos and not packet_id):
            return False
        payload = body[start:]
        allowed = self.may_publish_now(conn.session, topic)
        if allowed is None:
            return False
        if not allowed:
            if qos:
                self._ack(conn, PUBACK, packet_id, NOT_AUTHORIZED)
            return True
        matched = self._route(conn.session, topic, payload, qos, bool(flags & 1), self._plugin_hooks())
        if qos:
            self._ack(conn, PUBACK, packet_id, 0 if matched else NO_SUBSCRIBERS)
        return True

    def publish_packet(self: IntercomBroker, conn: Connection, pub: Publish) -> Any:
        """Handle one PUBLISH; returns None when done, or an awaitable when an async ACL must decide."""
        if pub.props.get(codec.PAYLOAD_FORMAT) == 1:
            try:
                pub.payload.decode("utf-8")
            except UnicodeDecodeError:
                if not pub.qos:
                    raise ProtocolError(PAYLOAD_FORMAT_INVALID,
                                        "payload is not UTF-8 as its format indicator says") from None
                self._ack(conn, PUBACK if pub.qos == 1 else PUBREC, pub.packet_id, PAYLOAD_FORMAT_INVALID)
                return None
        props = MessageProps.received(pub.forward, pub.props.get(codec.MESSAGE_EXPIRY))
        # sync_publish: every ACL answers without awaiting and no plugin listens to message events
        allowed = self.may_publish_now(conn.session, pub.topic) if self._plugin_hooks().sync_publish else None
        if allowed is None:
            return self._publish_async(conn, pub, props)
        self._accept_publish(conn, pub, props, allowed)
        return None

    async def _publish_async(self: IntercomBroker, conn: Connection, pub: Publish, props: MessageProps | None) -> None:
        """The publish with amqtt's message events (as for 3.1.1: QoS 2 ones fire at PUBREL) and any async ACL."""
        session = conn.session
        message = None
        if pub.qos < 2:
            message = await self.message_received_event(session, pub.topic, pub.payload, pub.qos, pub.retain)
        allowed = await self._allowed(session, pub.topic, Action.PUBLISH)
        if allowed:
            await self.message_broadcast_event(session, message)
        self._accept_publish(conn, pub, props, allowed)

    def _accept_publish(self: IntercomBroker, conn: Connection, pub: Publish, props: MessageProps | None,
                        allowed: bool) -> None:
        if pub.qos == 2:
            self.hold_qos2(conn, pub.packet_id, pub.topic, pub.payload, pub.retain, allowed, props, _reply(pub))
            return
        if not allowed:
            if pub.qos:
                self._ack(conn, PUBACK, pub.packet_id, NOT_AUTHORIZED)
            return
        matched = self._route_publish(conn, pub.topic, pub.payload, pub.qos, pub.retain, props, _reply(pub))
        if pub.qos:
            self._ack(conn, PUBACK, pub.packet_id, 0 if matched else NO_SUBSCRIBERS)
