"""Incoming QoS 2, one flow for MQTT 3.1.1 and 5: a QoS 2 PUBLISH is held until its PUBREL (Mosquitto's
handle_publish.c QoS 2 branch and handle_pubrel.c).

"Method B" (MQTT 3.1.1 §4.3.3, MQTT 5.0 §4.3.3): the ACL runs at PUBLISH (the caller's `allowed`); an
allowed message is held in `session.inflight_in` (durable for a persistent session) before PUBREC says
so, and routed at PUBREL, then forgotten, then PUBCOMP. A re-sent PUBLISH of a held message is answered with
PUBREC again and not held twice. Past `limits.max_inflight_messages` held messages (MQTT 5's Receive Maximum)
the connection ends: `ProtocolError` 0x93, which each reader turns into DISCONNECT (5) or a close (3.1.1).
Past the principal's `limits.max_held_bytes_per_principal` nothing is held. Every PUBREL gets a PUBCOMP.

Where the wire differs the acknowledgement's encoding does (`encode.encode_ack`): MQTT 5 says why (0x87 the
ACL refused, 0x97 quota exceeded, 0x92 a PUBREL for a packet id not held); 3.1.1 has no reason codes, so the
same answers are a plain PUBREC / PUBCOMP (acknowledged and dropped). Acknowledgements go through the
plugins' barrier (`AcknowledgesAfter`).
"""

from __future__ import annotations

from collections.abc import Awaitable

from broker.config import LimitsConfig
from broker.mqtt.codec import PUBCOMP, PUBREC
from broker.mqtt.fast_path import FastPathMixin, over_held_quota
from broker.mqtt.hooks import ReplyTo
from broker.mqtt.message import IncomingMessage, MessageProps, props_of
from broker.mqtt.peer import Peer
from broker.mqtt.reason import ProtocolError, Reason
from broker.mqtt.session import NO_INFLIGHT

__all__ = ["Qos2Mixin"]


class Qos2Mixin(FastPathMixin):
    """QoS 2 reception of every connection; see the module docstring."""

    limits: LimitsConfig = LimitsConfig()

    def hold_qos2(self, conn: Peer, packet_id: int, topic: str, data: bytes, retain: bool, allowed: bool,
                  props: MessageProps | None = None, reply: ReplyTo | None = None) -> None:
        """A QoS 2 PUBLISH: hold it (if the ACL allowed it), then PUBREC; raises ProtocolError 0x93 past the window."""
        session = conn.session
        held = session.inflight_in
        if packet_id in held:  # a re-send of a message held already: PUBREC again [MQTT-4.3.3-2]
            self.router.ack(conn, PUBREC, packet_id)
            return
        if not allowed:  # the ACL plugin logged the refusal
            self.router.ack(conn, PUBREC, packet_id, Reason.NOT_AUTHORIZED)
            return
        if len(held) >= self.limits.max_inflight_messages:
            raise ProtocolError(Reason.RECEIVE_MAXIMUM_EXCEEDED, f"more than {self.limits.max_inflight_messages} QoS 2 "
                          "messages awaiting PUBREL (limits.max_inflight_messages, the Receive Maximum)")
        if over_held_quota(session, len(data)):
            self.router.ack(conn, PUBREC, packet_id, Reason.QUOTA_EXCEEDED)
            return
        # stored (on disk for a persistent session) before PUBREC says it is
        if held is NO_INFLIGHT:
            held = session.inflight_in = {}
        held[packet_id] = IncomingMessage(packet_id, topic, data, retain, props, reply)
        self.router.ack(conn, PUBREC, packet_id)

    def pubrel(self, conn: Peer, packet_id: int) -> Awaitable[None] | None:
        """Route the held message, forget it, PUBCOMP. Returns None when done, or an awaitable when a plugin
        listens to message events."""
        held = conn.session.inflight_in
        msg = held.get(packet_id)
        if msg is None:  # already released, refused by the ACL, or never sent: answered too [MQTT-4.3.3-2]
            self.router.ack(conn, PUBCOMP, packet_id, Reason.PACKET_ID_NOT_FOUND)
            return None
        if not self._plugin_hooks().sync_publish:
            return self._pubrel_async(conn, packet_id)
        self.router.route(conn.session, msg.topic, bytes(msg.data), 2, bool(msg.retain), props_of(msg), _reply_of(msg))
        held.pop(packet_id, None)  # routed before it is forgotten: a crash in between re-delivers, never loses
        self.router.ack(conn, PUBCOMP, packet_id)
        return None

    async def _pubrel_async(self, conn: Peer, packet_id: int) -> None:
        """PUBREL with amqtt's message events (the ACL judged the message at its PUBLISH)."""
        session = conn.session
        msg = session.inflight_in.pop(packet_id, None)  # first: a PUBREL repeated meanwhile must not route it again
        if msg is not None:
            data = bytes(msg.data)
            message = await self.message_received_event(session, msg.topic, data, 2, bool(msg.retain))
            await self.message_broadcast_event(session, message)
            self.router.route(session, msg.topic, data, 2, bool(msg.retain), props_of(msg), _reply_of(msg))
        self.router.ack(conn, PUBCOMP, packet_id)


def _reply_of(msg: object) -> ReplyTo | None:
    kept = getattr(msg, "reply", None)
    return ReplyTo(*kept) if kept is not None else None
