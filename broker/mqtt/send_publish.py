"""The outgoing side of an MQTT 5 connection: v5 PUBLISH packets under the client's own limits.

`PublishOutlet` is the engine's `Outlet` (coalesced writes, backlog, window) with the v5 encoding: the
message's properties forwarded unaltered, the Message Expiry Interval set to the time left
[MQTT-3.3.2-6] (an expired message is dropped [MQTT-3.3.2-5]), the subscription identifiers
[MQTT-3.3.4-3], a Topic Alias when the client allows them (§3.3.2.3.4), the client's Receive Maximum as
the window for QoS 1 and 2 [MQTT-3.3.4-9], and no packet above the client's Maximum Packet Size
(discarded as if sent [MQTT-3.1.2-25]). QoS 2 runs here too (PUBREC -> PUBREL -> PUBCOMP).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from broker.mqtt.codec import MAXIMUM_PACKET_SIZE, PUBREL, RECEIVE_MAXIMUM, TOPIC_ALIAS_MAXIMUM, V5, V311, Props
from broker.mqtt.encode import encode_ack, encode_publish, expiry_property, varint
from broker.mqtt.message import MessageProps, OutgoingMessage
from broker.mqtt.outlet import CoalescingWriter, DeliveryLimits, Outlet
from broker.mqtt.reason import Reason
from broker.mqtt.session import NO_INFLIGHT, Session
from broker.mqtt.session_persistence import DurableInflight

__all__ = ["Link", "PublishOutlet", "link_for"]

log = logging.getLogger("intercom.delivery")


@dataclass(slots=True)
class Link:
    """What one connection's client asked of the broker in its CONNECT (one per connection: slots, and the alias
    table only once the client allows aliases)."""

    receive_max: int = 65535
    max_packet: int = 268_435_460
    alias_max: int = 0  # Topic Alias Maximum: how many aliases the broker may set on this connection
    version: int = V5  # 4: MQTT 3.1.1 (no properties, no reason codes on the wire)
    out_aliases: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.alias_max:
            self.out_aliases = _NO_ALIASES  # never written: `_write` sets aliases only below `alias_max`


_NO_ALIASES: dict[str, int] = {}

# A Link with no Topic Aliases is never written: the connections that asked for nothing (every 3.1.1 one) share one.
_DEFAULT_LINKS = {V311: Link(version=V311), V5: Link(version=V5)}


def link_for(props: Props, version: int) -> Link:
    """The Link for what a CONNECT's properties ask; the shared one when they ask for the defaults and no Topic
    Aliases (72 B less per connection)."""
    default = _DEFAULT_LINKS[version]
    receive_max = props.get(RECEIVE_MAXIMUM, default.receive_max)
    max_packet = props.get(MAXIMUM_PACKET_SIZE, default.max_packet)
    alias_max = props.get(TOPIC_ALIAS_MAXIMUM, 0)
    if not alias_max and receive_max == default.receive_max and max_packet == default.max_packet:
        return default
    return Link(receive_max=receive_max, max_packet=max_packet, alias_max=alias_max, version=version)


def _props_block(props: MessageProps | None, sub_ids: tuple[int, ...], now: float | None = None) -> bytes | None:
    """The encoded properties of an outgoing PUBLISH (without a Topic Alias); None when it expired."""
    raw = b""
    if props is not None:
        left = props.remaining(time.time() if now is None else now)
        if left == 0:
            return None
        raw = props.forward if left is None else props.forward + expiry_property(left)
    for sub_id in sub_ids:
        raw += b"\x0b" + varint(sub_id)
    return raw


class PublishOutlet(Outlet):
    __slots__ = ("link", "owed")

    def __init__(self, session: Session, handler: Any, writer: CoalescingWriter, limits: DeliveryLimits,
                 on_overflow: Callable[[Outlet], None], link: Link) -> None:
        window = min(limits.max_inflight, link.receive_max)
        if window != limits.max_inflight:  # a copy only when the client's Receive Maximum is the smaller window
            limits = replace(limits, max_inflight=window)
        super().__init__(session, handler, writer, limits, on_overflow)
        self.link = link
        # what the session had in flight when this connection registered: `resend_inflight` re-sends that only
        # (a message delivered on this connection before the re-send has gone out once already)
        self.owed: tuple[OutgoingMessage, ...] = tuple(session.inflight_out.values())

    def _write(self, topic_b: bytes, topic: str, data: bytes, qos: int, retain: bool,
               props: MessageProps | None = None, sub_ids: tuple[int, ...] = ()) -> None:
        raw = _props_block(props, sub_ids) if props is not None or sub_ids else b""
        if raw is None:
            return
        link = self.link
        send_raw: bytes | None = raw if link.version == V5 else None
        send_topic, new_alias = topic_b, 0
        if link.alias_max:
            alias = link.out_aliases.get(topic)
            if alias is not None:
                send_topic = b""
            elif len(link.out_aliases) < link.alias_max:
                alias = new_alias = len(link.out_aliases) + 1
            if alias is not None:
                send_raw = raw + b"\x23" + alias.to_bytes(2, "big")
        session = self.session
        packet_id = session.next_packet_id if qos else 0
        packet = encode_publish(send_topic, data, qos, packet_id, retain, False, send_raw)
        if len(packet) > link.max_packet:
            log.debug("not sending %d bytes on %s to %s: above its Maximum Packet Size %d", len(packet), topic,
                      session.client_id, link.max_packet)
            return
        if new_alias:
            link.out_aliases[topic] = new_alias
        if qos:
            inflight = session.inflight_out
            if inflight is NO_INFLIGHT:
                inflight = session.inflight_out = {}
            inflight[packet_id] = OutgoingMessage(packet_id, topic, qos, data, retain, props, sub_ids)
        self.writer.write(packet)

    def pubrec(self, packet_id: int, reason: int) -> None:
        """PUBREC for a QoS 2 message we sent: PUBREL, or (a refusal, reason >= 0x80) the flow ends [MQTT-4.3.3]."""
        inflight = self.session.inflight_out
        msg = inflight.get(packet_id)
        if msg is None:
            if reason < Reason.UNSPECIFIED:
                self.writer.write(encode_ack(PUBREL, packet_id, Reason.PACKET_ID_NOT_FOUND, version=self.link.version))
            return
        if reason >= Reason.UNSPECIFIED:  # any failure code: acknowledged, the flow is over
            self.acked(packet_id)
            return
        if isinstance(inflight, DurableInflight):
            inflight.released(packet_id)  # on disk too: a restart re-sends only the PUBREL
        else:
            msg.released = True
        self.writer.write(encode_ack(PUBREL, packet_id))

    def pubcomp(self, packet_id: int) -> None:
        """PUBCOMP: the QoS 2 flow is over."""
        self.acked(packet_id)

    def resend_inflight(self) -> None:
        """A resumed session: re-send what the client has not acknowledged, DUP set, without aliases
        (they are per connection) [MQTT-4.4.0-1]; a QoS 2 message past PUBREC gets its PUBREL again."""
        now = time.time()
        inflight = self.session.inflight_out
        owed, self.owed = self.owed, ()
        for msg in owed:
            packet_id = msg.packet_id
            if inflight.get(packet_id) is not msg:  # acknowledged or expired meanwhile
                continue
            if msg.qos == 2 and msg.released:
                self.writer.write(encode_ack(PUBREL, packet_id))
                continue
            raw = _props_block(msg.props, msg.sub_ids, now) or b""
            packet = encode_publish(msg.topic.encode(), bytes(msg.data), msg.qos or 1, packet_id, bool(msg.retain),
                                    True, raw if self.link.version == V5 else None)
            if len(packet) <= self.link.max_packet:
                self.writer.write(packet)
