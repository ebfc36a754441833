"""What an MQTT 5 client sends, handled on the one broker: PUBLISH (QoS 0/1/2), SUBSCRIBE, UNSUBSCRIBE.

A PUBLISH takes the engine's one path (`FastPathMixin._route`: deliver, retain, plugins' interceptors)
with its properties; the acknowledgement carries a reason code (§3.4.2.1): 0x10 when nobody subscribes,
0x87 when the ACL refuses, 0x99 when the Payload Format Indicator says UTF-8 and the payload is not
[MQTT-3.3.2-4]. Acknowledgements go through the plugins' barrier (`AcknowledgesAfter`) like 3.1.1 ones.
Incoming QoS 2 is held until PUBREL; past `limits.max_inflight_messages` held messages (the Receive
Maximum announced in CONNACK) the connection ends with DISCONNECT 0x93 [MQTT-3.3.4-8]; past the principal's
`limits.max_held_bytes_per_principal` the PUBREC says 0x97 (Quota exceeded) and nothing is held.
SUBSCRIBE and UNSUBSCRIBE are `handle_subscribe`'s, for both versions.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, TypeAlias

from amqtt.contexts import Action

from broker.config import LimitsConfig
from broker.mqtt import codec, encode
from broker.mqtt.codec import PUBACK, PUBCOMP, PUBREC, Publish, V5Error
from broker.mqtt.fast_path import over_held_quota
from broker.mqtt.hooks import ReplyTo
from broker.mqtt.reason import Reason
from broker.mqtt.v5.message import MessageProps, V5Incoming, props_of

if TYPE_CHECKING:
    from amqtt.broker import Broker

    from broker.mqtt.v5.connection import V5Connection

    _Base: TypeAlias = Broker
else:
    _Base = object

__all__ = ["V5InboundMixin"]

log = logging.getLogger("intercom.mqtt5")
NO_SUBSCRIBERS, UNSPECIFIED, NOT_AUTHORIZED = Reason.NO_MATCHING_SUBSCRIBERS, Reason.UNSPECIFIED, Reason.NOT_AUTHORIZED
QUOTA_EXCEEDED, PAYLOAD_FORMAT_INVALID = Reason.QUOTA_EXCEEDED, Reason.PAYLOAD_FORMAT_INVALID
RECEIVE_MAX_EXCEEDED, NOT_FOUND = Reason.RECEIVE_MAXIMUM_EXCEEDED, Reason.PACKET_ID_NOT_FOUND


def _reply(pub: Publish) -> ReplyTo | None:
    """Where a request wants its answer (§4.10), if it is one."""
    response = pub.props.get(codec.RESPONSE_TOPIC)
    return ReplyTo(response, pub.props.get(codec.CORRELATION_DATA)) if response is not None else None


class V5InboundMixin(_Base):
    """Inbound packets of MQTT 5 connections; see the module docstring."""

    limits: LimitsConfig

    def _v5_ack(self, conn: V5Connection, ptype: int, packet_id: int, reason: int = 0) -> None:
        """PUBACK / PUBREC / PUBCOMP after any durable effect the plugins staged."""
        data = encode.encode_ack(ptype, packet_id, reason)
        barrier = self._plugin_hooks().ack_barrier
        if barrier is None:
            conn.write(data)
        else:
            barrier(lambda: conn.write(data))

    def _v5_route(self, conn: V5Connection, topic: str, data: bytes, qos: int, retain: bool,
                  props: MessageProps | None, reply: ReplyTo | None = None) -> int:
        engine: Any = self
        return int(engine._route(conn.session, topic, data, qos, retain, engine._plugin_hooks(), props, reply))

    def v5_publish(self, conn: V5Connection, pub: Publish) -> Any:
        """Handle one PUBLISH; returns None when done, or an awaitable when an async ACL must decide."""
        if pub.props.get(codec.PAYLOAD_FORMAT) == 1:
            try:
                pub.payload.decode("utf-8")
            except UnicodeDecodeError:
                if not pub.qos:
                    raise V5Error(PAYLOAD_FORMAT_INVALID, "payload is not UTF-8 as its format indicator says") from None
                self._v5_ack(conn, PUBACK if pub.qos == 1 else PUBREC, pub.packet_id, PAYLOAD_FORMAT_INVALID)
                return None
        props = MessageProps.received(pub.forward, pub.props.get(codec.MESSAGE_EXPIRY))
        engine: Any = self
        # sync_publish: every ACL answers without awaiting and no plugin listens to message events
        allowed = engine.may_publish_now(conn.session, pub.topic) if engine._plugin_hooks().sync_publish else None
        if allowed is None:
            return self._v5_publish_async(conn, pub, props)
        self._v5_accept(conn, pub, props, allowed)
        return None

    async def _v5_publish_async(self, conn: V5Connection, pub: Publish, props: MessageProps | None) -> None:
        """The publish with amqtt's message events (as for 3.1.1: QoS 2 ones fire at PUBREL) and any async ACL."""
        engine: Any = self
        session = conn.session
        message = None
        if pub.qos < 2:
            message = await engine.message_received_event(session, pub.topic, pub.payload, pub.qos, pub.retain)
        allowed = await engine._allowed(session, pub.topic, Action.PUBLISH)
        if allowed:
            await engine.message_broadcast_event(session, message)
        self._v5_accept(conn, pub, props, allowed)

    def _v5_accept(self, conn: V5Connection, pub: Publish, props: MessageProps | None, allowed: bool) -> None:
        if pub.qos == 2:
            self._v5_hold(conn, pub, props, allowed)
            return
        if not allowed:
            if pub.qos:
                self._v5_ack(conn, PUBACK, pub.packet_id, NOT_AUTHORIZED)
            return
        matched = self._v5_route(conn, pub.topic, pub.payload, pub.qos, pub.retain, props, _reply(pub))
        if pub.qos:
            self._v5_ack(conn, PUBACK, pub.packet_id, 0 if matched else NO_SUBSCRIBERS)

    def _v5_hold(self, conn: V5Connection, pub: Publish, props: MessageProps | None, allowed: bool) -> None:
        """QoS 2, method B: held (durably for a persistent session) before PUBREC, routed at PUBREL."""
        held = conn.session.inflight_in
        if pub.packet_id in held:  # a re-send of a message held already: PUBREC again (MQTT 5.0 §4.3.3)
            self._v5_ack(conn, PUBREC, pub.packet_id)
            return
        if not allowed:
            self._v5_ack(conn, PUBREC, pub.packet_id, NOT_AUTHORIZED)
            return
        if len(held) >= self.limits.max_inflight_messages:
            raise V5Error(RECEIVE_MAX_EXCEEDED, f"more than {self.limits.max_inflight_messages} QoS 2 messages "
                                                "awaiting PUBREL (the Receive Maximum)")
        if over_held_quota(conn.session, len(pub.payload)):
            self._v5_ack(conn, PUBREC, pub.packet_id, QUOTA_EXCEEDED)
            return
        held[pub.packet_id] = V5Incoming(pub.packet_id, pub.topic, pub.payload, pub.retain, props, _reply(pub))
        self._v5_ack(conn, PUBREC, pub.packet_id)

    def v5_pubrel(self, conn: V5Connection, packet_id: int) -> Any:
        """Route the held message, forget it, PUBCOMP (0x92 for a packet id not held)."""
        held = conn.session.inflight_in
        msg = held.get(packet_id)
        if msg is None:
            self._v5_ack(conn, PUBCOMP, packet_id, NOT_FOUND)
            return None
        engine: Any = self
        if not engine._plugin_hooks().sync_publish:
            return self._v5_pubrel_async(conn, packet_id)
        kept = getattr(msg, "reply", None)
        self._v5_route(conn, msg.topic, bytes(msg.data), 2, bool(msg.retain), props_of(msg),
                       ReplyTo(*kept) if kept is not None else None)
        held.pop(packet_id, None)  # routed before it is forgotten: a crash in between re-delivers
        self._v5_ack(conn, PUBCOMP, packet_id)
        return None

    async def _v5_pubrel_async(self, conn: V5Connection, packet_id: int) -> None:
        """PUBREL with amqtt's message events (the ACL judged the message at its PUBLISH)."""
        engine: Any = self
        session = conn.session
        msg = session.inflight_in.pop(packet_id, None)  # first: a PUBREL repeated meanwhile must not route it again
        if msg is not None:
            data = bytes(msg.data)
            message = await engine.message_received_event(session, msg.topic, data, 2, bool(msg.retain))
            await engine.message_broadcast_event(session, message)
            kept = getattr(msg, "reply", None)
            self._v5_route(conn, msg.topic, data, 2, bool(msg.retain), props_of(msg),
                           ReplyTo(*kept) if kept is not None else None)
        self._v5_ack(conn, PUBCOMP, packet_id)
