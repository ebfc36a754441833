"""MQTT wire format, 3.1.1 and 5.0: strict decoders for what a client sends (`encode` writes the rest).

One decoder per packet type, branching only where the wire differs: a `version` argument (4 for MQTT
3.1.1 and 3.1, 5 for MQTT 5.0) says whether the packet carries properties and reason codes. 3.1.1 packets
have none; its CONNECT has no properties, its SUBSCRIBE options byte is the requested QoS alone, its
acknowledgements are exactly a packet id, its DISCONNECT is empty (MQTT 3.1.1 §3).

Pure (no I/O, no amqtt). Every decoder validates the whole packet before returning anything and raises
`ProtocolError` carrying the reason code the spec gives for the violation: 0x81 Malformed Packet for bytes that
do not parse or a property not valid for the packet type (§2.2.2.2), 0x82 Protocol Error for a value the
spec forbids (duplicated property, Receive Maximum 0, Subscription Identifier 0, ...), or a more specific
code (0x94 Topic Alias invalid, 0x90 Topic Name invalid). Strings follow §1.5.4: valid UTF-8 (no
surrogates) and no U+0000 [MQTT-1.5.4-1/2].

The message-level properties of a PUBLISH or Will (Payload Format Indicator, Content Type, Response
Topic, Correlation Data, User Properties) are kept as their original encoded bytes (`Publish.forward`),
so they are forwarded unaltered and in order [MQTT-3.3.2-17/18], and stored as they came.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broker.mqtt.reason import ProtocolError, Reason
from broker.mqtt.topics import SHARE_LEVEL, shared_parts, valid_filter, valid_topic_name, well_formed_filter

__all__ = ["AUTH", "CONNACK", "CONNECT", "DISCONNECT", "PINGREQ", "PUBACK", "PUBCOMP", "PUBLISH", "PUBREC", "PUBREL",
           "SUBACK", "SUBSCRIBE", "UNSUBACK", "UNSUBSCRIBE", "V5", "V311", "WILL", "Ack", "Connect", "Disconnect",
           "Props", "Publish", "Subscribe", "Subscription", "decode_ack", "decode_connect",
           "decode_disconnect", "decode_publish", "decode_subscribe", "decode_unsubscribe", "publish_header",
           "split_shared"]

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15
WILL = 0  # pseudo packet type: the Will Properties of a CONNECT
V311, V5 = 4, 5  # the protocol versions a connection speaks (3.1 "MQIsdp" level 3 is served as 3.1.1)
# (protocol name, level) of a CONNECT -> the version the codec speaks for it
_PROTOCOLS = {("MQTT", 5): V5, ("MQTT", 4): V311, ("MQIsdp", 3): V311}

MALFORMED, PROTOCOL_ERROR = Reason.MALFORMED_PACKET, Reason.PROTOCOL_ERROR
TOPIC_NAME_INVALID, TOPIC_ALIAS_INVALID = Reason.TOPIC_NAME_INVALID, Reason.TOPIC_ALIAS_INVALID

# Property identifiers (§2.2.2.2)
PAYLOAD_FORMAT, MESSAGE_EXPIRY, CONTENT_TYPE, RESPONSE_TOPIC, CORRELATION_DATA = 0x01, 0x02, 0x03, 0x08, 0x09
SUBSCRIPTION_ID, SESSION_EXPIRY, ASSIGNED_CLIENT_ID, SERVER_KEEP_ALIVE = 0x0B, 0x11, 0x12, 0x13
AUTH_METHOD, AUTH_DATA, REQUEST_PROBLEM_INFO, WILL_DELAY, REQUEST_RESPONSE_INFO = 0x15, 0x16, 0x17, 0x18, 0x19
RESPONSE_INFO, SERVER_REFERENCE, REASON_STRING, RECEIVE_MAXIMUM = 0x1A, 0x1C, 0x1F, 0x21
TOPIC_ALIAS_MAXIMUM, TOPIC_ALIAS, MAXIMUM_QOS, RETAIN_AVAILABLE, USER_PROPERTY = 0x22, 0x23, 0x24, 0x25, 0x26
MAXIMUM_PACKET_SIZE, WILDCARD_AVAILABLE, SUB_IDS_AVAILABLE, SHARED_AVAILABLE = 0x27, 0x28, 0x29, 0x2A

_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)
_ACKS = (PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, DISCONNECT, AUTH, CONNACK)
# identifier -> (wire type, packet types it may appear in)
_PROPS: dict[int, tuple[int, frozenset[int]]] = {
    PAYLOAD_FORMAT: (_BYTE, frozenset({PUBLISH, WILL})),
    MESSAGE_EXPIRY: (_U32, frozenset({PUBLISH, WILL})),
    CONTENT_TYPE: (_STR, frozenset({PUBLISH, WILL})),
    RESPONSE_TOPIC: (_STR, frozenset({PUBLISH, WILL})),
    CORRELATION_DATA: (_BIN, frozenset({PUBLISH, WILL})),
    SUBSCRIPTION_ID: (_VARINT, frozenset({PUBLISH, SUBSCRIBE})),
    SESSION_EXPIRY: (_U32, frozenset({CONNECT, CONNACK, DISCONNECT})),
    ASSIGNED_CLIENT_ID: (_STR, frozenset({CONNACK})),
    SERVER_KEEP_ALIVE: (_U16, frozenset({CONNACK})),
    AUTH_METHOD: (_STR, frozenset({CONNECT, CONNACK, AUTH})),
    AUTH_DATA: (_BIN, frozenset({CONNECT, CONNACK, AUTH})),
    REQUEST_PROBLEM_INFO: (_BYTE, frozenset({CONNECT})),
    WILL_DELAY: (_U32, frozenset({WILL})),
    REQUEST_RESPONSE_INFO: (_BYTE, frozenset({CONNECT})),
    RESPONSE_INFO: (_STR, frozenset({CONNACK})),
    SERVER_REFERENCE: (_STR, frozenset({CONNACK, DISCONNECT})),
    REASON_STRING: (_STR, frozenset(_ACKS)),
    RECEIVE_MAXIMUM: (_U16, frozenset({CONNECT, CONNACK})),
    TOPIC_ALIAS_MAXIMUM: (_U16, frozenset({CONNECT, CONNACK})),
    TOPIC_ALIAS: (_U16, frozenset({PUBLISH})),
    MAXIMUM_QOS: (_BYTE, frozenset({CONNACK})),
    RETAIN_AVAILABLE: (_BYTE, frozenset({CONNACK})),
    USER_PROPERTY: (_PAIR, frozenset(range(16))),
    MAXIMUM_PACKET_SIZE: (_U32, frozenset({CONNECT, CONNACK})),
    WILDCARD_AVAILABLE: (_BYTE, frozenset({CONNACK})),
    SUB_IDS_AVAILABLE: (_BYTE, frozenset({CONNACK})),
    SHARED_AVAILABLE: (_BYTE, frozenset({CONNACK})),
}
_REPEATABLE = frozenset({USER_PROPERTY})  # and Subscription Identifier, in a PUBLISH only
_FORWARDED = frozenset({PAYLOAD_FORMAT, CONTENT_TYPE, RESPONSE_TOPIC, CORRELATION_DATA, USER_PROPERTY})
_BOOLEAN = frozenset({PAYLOAD_FORMAT, REQUEST_PROBLEM_INFO, REQUEST_RESPONSE_INFO})
_NONZERO = frozenset({RECEIVE_MAXIMUM, MAXIMUM_PACKET_SIZE, SUBSCRIPTION_ID})
# Reason codes a client may send in each acknowledgement (§3.4.2.1, §3.5.2.1, §3.6.2.1, §3.7.2.1, §3.14.2.1)
_PUB_CODES = frozenset({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99})
_ACK_CODES = {PUBACK: _PUB_CODES, PUBREC: _PUB_CODES, PUBREL: frozenset({0x00, 0x92}),
              PUBCOMP: frozenset({0x00, 0x92})}
_CLIENT_DISCONNECT_CODES = frozenset({0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x90, 0x93, 0x94, 0x95, 0x96,
                                      0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA1, 0xA2})


Props = dict[int, Any]  # identifier -> value; User Property -> list of pairs, Subscription Identifier -> list


@dataclass
class Connect:
    client_id: str
    clean_start: bool
    keep_alive: int
    props: Props
    username: str | None = None
    password: bytes | None = None
    will_topic: str | None = None
    will_payload: bytes = b""
    will_qos: int = 0
    will_retain: bool = False
    will_props: Props = field(default_factory=dict)
    will_forward: bytes = b""  # the Will's message-level properties, encoded
    version: int = V5


@dataclass
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int
    props: Props
    forward: bytes  # message-level properties as received, encoded


@dataclass(frozen=True)
class Subscription:
    topic_filter: str
    qos: int
    no_local: bool
    retain_as_published: bool
    retain_handling: int


@dataclass
class Subscribe:
    packet_id: int
    subscriptions: list[Subscription]
    subscription_id: int | None
    props: Props


@dataclass
class Ack:
    packet_id: int
    reason: int
    props: Props


@dataclass
class Disconnect:
    reason: int
    props: Props


# -- reading ----------------------------------------------------------------------------------------


class _Reader:
    __slots__ = ("body", "end", "pos")

    def __init__(self, body: bytes, pos: int = 0, end: int | None = None) -> None:
        self.body = body
        self.pos = pos
        self.end = len(body) if end is None else end

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > self.end:
            raise ProtocolError(MALFORMED, f"packet ends inside {what}")
        chunk = self.body[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def u8(self, what: str) -> int:
        if self.pos >= self.end:
            raise ProtocolError(MALFORMED, f"packet ends inside {what}")
        self.pos += 1
        return self.body[self.pos - 1]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "big")

    def varint(self, what: str) -> int:
        value, mult = 0, 1
        for _ in range(4):
            byte = self.u8(what)
            value += (byte & 0x7F) * mult
            if not byte & 0x80:
                return value
            mult *= 128
        raise ProtocolError(MALFORMED, f"{what}: variable byte integer longer than 4 bytes")

    def binary(self, what: str) -> bytes:
        return self.take(self.u16(what), what)

    def string(self, what: str) -> str:
        return utf8(self.binary(what), what)

    @property
    def left(self) -> int:
        return self.end - self.pos


def utf8(raw: bytes, what: str) -> str:
    """A UTF-8 Encoded String's text, or ProtocolError 0x81 [MQTT-1.5.4-1/2]."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(MALFORMED, f"{what} is not valid UTF-8") from exc
    if "\x00" in text:
        raise ProtocolError(MALFORMED, f"{what} contains U+0000")
    return text


def _props(r: _Reader, ptype: int) -> tuple[Props, bytes]:
    """Read a property block; returns the properties and the encoded message-level ones (PUBLISH, Will)."""
    if r.pos < r.end and r.body[r.pos] == 0:  # the common case: no properties
        r.pos += 1
        return {}, b""
    length = r.varint("property length")
    if length > r.left:
        raise ProtocolError(MALFORMED, "property length exceeds the packet")
    end = r.pos + length
    sub = _Reader(r.body, r.pos, end)
    r.pos = end
    props: Props = {}
    forward: list[bytes] = []
    while sub.left:
        start = sub.pos
        ident = sub.varint("property identifier")
        spec = _PROPS.get(ident)
        if spec is None or ptype not in spec[1]:
            raise ProtocolError(MALFORMED, f"property {ident:#04x} is not valid in packet type {ptype}")
        kind = spec[0]
        what = f"property {ident:#04x}"
        value: Any
        if kind == _BYTE:
            value = sub.u8(what)
        elif kind == _U16:
            value = sub.u16(what)
        elif kind == _U32:
            value = sub.u32(what)
        elif kind == _VARINT:
            value = sub.varint(what)
        elif kind == _STR:
            value = sub.string(what)
        elif kind == _BIN:
            value = sub.binary(what)
        else:
            value = (sub.string(what), sub.string(what))
        if ident in _BOOLEAN and value > 1:
            raise ProtocolError(PROTOCOL_ERROR, f"{what} must be 0 or 1")
        if ident in _NONZERO and value == 0:
            raise ProtocolError(PROTOCOL_ERROR, f"{what} must not be 0")
        if ident in _REPEATABLE or (ident == SUBSCRIPTION_ID and ptype == PUBLISH):
            props.setdefault(ident, []).append(value)
        elif ident in props:
            raise ProtocolError(PROTOCOL_ERROR, f"{what} appears more than once")
        else:
            props[ident] = value
        if ident in _FORWARDED:
            forward.append(r.body[start:sub.pos])
    return props, b"".join(forward)


def _topic_name(topic: str, what: str) -> None:
    if topic and not valid_topic_name(topic):  # empty: a PUBLISH using a Topic Alias (its connection judges it)
        raise ProtocolError(TOPIC_NAME_INVALID, f"{what} {topic!r} contains a wildcard")  # [MQTT-3.3.2-2]


def decode_connect(body: bytes) -> Connect:
    """A CONNECT body (after the fixed header), MQTT 3.1, 3.1.1 or 5 [MQTT-3.1]; `Connect.version` says which.
    An unknown protocol raises code 0x84 (Unsupported Protocol Version; CONNACK 1 in 3.1.1)."""
    r = _Reader(body)
    name = r.string("protocol name")
    level = r.u8("protocol level")
    version = _PROTOCOLS.get((name, level))
    if version is None:
        raise ProtocolError(0x84, f"protocol {name!r} level {level} is not MQTT 3.1, 3.1.1 or 5")
    flags = r.u8("connect flags")
    if flags & 0x01:
        raise ProtocolError(MALFORMED, "reserved connect flag set")  # [MQTT-3.1.2-3]
    will, will_qos, will_retain = bool(flags & 0x04), (flags >> 3) & 0x03, bool(flags & 0x20)
    if will_qos == 3:
        raise ProtocolError(MALFORMED, "Will QoS 3")  # [MQTT-3.1.2-12]
    if not will and (will_qos or will_retain):
        raise ProtocolError(MALFORMED, "Will QoS/retain set without the Will flag")  # [MQTT-3.1.2-11/13]
    if version == V311 and flags & 0x40 and not flags & 0x80:
        raise ProtocolError(MALFORMED, "password flag without username flag")  # 3.1.1 only [MQTT-3.1.2-22]
    keep_alive = r.u16("keep alive")
    props: Props = {}
    if version == V5:
        props, _ = _props(r, CONNECT)
        if AUTH_DATA in props and AUTH_METHOD not in props:
            raise ProtocolError(PROTOCOL_ERROR, "Authentication Data without Authentication Method")
    out = Connect(r.string("client id"), bool(flags & 0x02), keep_alive, props, version=version)
    if will:
        if version == V5:
            out.will_props, out.will_forward = _props(r, WILL)
        out.will_topic = r.string("Will topic")
        if not out.will_topic:
            raise ProtocolError(TOPIC_NAME_INVALID, "empty Will topic")
        _topic_name(out.will_topic, "Will topic")
        out.will_payload = r.binary("Will payload")
        out.will_qos, out.will_retain = will_qos, will_retain
        response = out.will_props.get(RESPONSE_TOPIC)
        if response is not None:
            _topic_name(response, "Will Response Topic")
    if flags & 0x80:
        out.username = r.string("user name")
    if flags & 0x40:
        out.password = r.binary("password")
    if r.left:
        raise ProtocolError(MALFORMED, f"{r.left} bytes after the CONNECT payload")
    return out


def publish_header(flags: int, body: bytes, version: int = V5) -> tuple[str, int, int]:
    """A PUBLISH's (topic, packet id, offset after the packet id) [MQTT-3.3.2]; checks the fixed-header flags.
    The topic may be empty in MQTT 5 only (a Topic Alias names it: the connection resolves that)."""
    qos, dup = (flags >> 1) & 0x03, flags & 0x08
    if qos == 3:
        raise ProtocolError(MALFORMED, "PUBLISH QoS 3")  # [MQTT-3.3.1-4]
    if qos == 0 and dup:
        raise ProtocolError(MALFORMED, "DUP set on a QoS 0 PUBLISH")  # [MQTT-3.3.1-2]
    r = _Reader(body)
    topic = r.string("topic")
    if not topic and version == V311:
        raise ProtocolError(MALFORMED, "empty PUBLISH topic")  # [MQTT-3.3.2-1]
    _topic_name(topic, "PUBLISH topic")
    packet_id = 0
    if qos:
        packet_id = r.u16("packet id")
        if packet_id == 0:
            raise ProtocolError(MALFORMED, "packet id 0")  # [MQTT-2.2.1-3]
    return topic, packet_id, r.pos


def decode_publish(flags: int, body: bytes, version: int = V5) -> Publish:
    """A PUBLISH: topic, packet id, properties (MQTT 5 only), payload."""
    topic, packet_id, pos = publish_header(flags, body, version)
    qos, dup, retain = (flags >> 1) & 0x03, bool(flags & 0x08), bool(flags & 0x01)
    if version == V311:
        return Publish(topic, body[pos:], qos, retain, dup, packet_id, {}, b"")
    r = _Reader(body, pos)
    props, forward = _props(r, PUBLISH)
    if SUBSCRIPTION_ID in props:
        raise ProtocolError(PROTOCOL_ERROR, "a client PUBLISH carries a Subscription Identifier")  # [MQTT-3.3.4-6]
    if props.get(TOPIC_ALIAS) == 0:
        raise ProtocolError(TOPIC_ALIAS_INVALID, "Topic Alias 0")  # [MQTT-3.3.2-8]
    response = props.get(RESPONSE_TOPIC)
    if response is not None:
        _topic_name(response, "Response Topic")  # [MQTT-3.3.2-14]
    return Publish(topic, body[r.pos:], qos, retain, dup, packet_id, props, forward)


def decode_ack(ptype: int, body: bytes, version: int = V5) -> Ack:
    """PUBACK, PUBREC, PUBREL or PUBCOMP: packet id, then (MQTT 5) an optional reason code and properties
    [MQTT-3.4.2]; a 3.1.1 acknowledgement is the packet id alone."""
    r = _Reader(body)
    packet_id = r.u16("packet id")
    if packet_id == 0:
        raise ProtocolError(MALFORMED, "packet id 0")
    reason, props = 0, Props()
    if r.left and version == V5:
        reason = r.u8("reason code")
        if reason not in _ACK_CODES[ptype]:
            raise ProtocolError(MALFORMED, f"reason code {reason:#04x} is not valid in packet type {ptype}")
        if r.left:
            props, _ = _props(r, ptype)
    if r.left:
        raise ProtocolError(MALFORMED, f"{r.left} bytes after packet type {ptype}")
    return Ack(packet_id, reason, props)


def split_shared(topic_filter: str) -> tuple[str | None, str]:
    """`$share/{group}/{filter}` -> (group, filter); any other filter, `$share` alone included -> (None, filter)."""
    parts = shared_parts(topic_filter) if topic_filter != SHARE_LEVEL else None
    return (None, topic_filter) if parts is None else parts


def _filter(r: _Reader, kind: str, version: int) -> str:
    topic_filter = r.string("topic filter")
    if version == V311:  # a bad `$share/` ShareName is answered with SUBACK 0x80 by the index, not closed
        if not well_formed_filter(topic_filter):
            raise ProtocolError(MALFORMED, f"{kind} topic filter {topic_filter!r} is malformed")
        return topic_filter
    group, inner = split_shared(topic_filter)
    if group is not None and (not group or "+" in group or "#" in group or not inner):
        raise ProtocolError(MALFORMED, f"{kind} shared subscription {topic_filter!r} is malformed")  # [MQTT-4.8.2-1/2]
    if not valid_filter(inner):
        raise ProtocolError(MALFORMED, f"{kind} topic filter {topic_filter!r} is malformed")  # [MQTT-4.7.1]
    return topic_filter


def _subscription_header(r: _Reader, ptype: int, version: int) -> tuple[int, Props]:
    """A (UN)SUBSCRIBE's packet id and (MQTT 5) properties; at least one topic filter must follow."""
    packet_id = r.u16("packet id")
    if packet_id == 0:
        raise ProtocolError(MALFORMED, "packet id 0")
    props: Props = {}
    if version == V5:
        props, _ = _props(r, ptype)
    if not r.left:
        name = "SUBSCRIBE" if ptype == SUBSCRIBE else "UNSUBSCRIBE"
        raise ProtocolError(PROTOCOL_ERROR, f"{name} without a topic filter")
    return packet_id, props


def decode_subscribe(body: bytes, version: int = V5) -> Subscribe:
    """A SUBSCRIBE: packet id, properties (MQTT 5), then (filter, options) pairs [MQTT-3.8]; a 3.1.1
    options byte is the requested QoS, its reserved bits 0 [MQTT-3.8.3-4]."""
    r = _Reader(body)
    packet_id, props = _subscription_header(r, SUBSCRIBE, version)  # [MQTT-3.8.3-2]
    subs: list[Subscription] = []
    while r.left:
        topic_filter = _filter(r, "SUBSCRIBE", version)
        options = r.u8("subscription options")
        qos, no_local, rap, handling = options & 0x03, bool(options & 0x04), bool(options & 0x08), (options >> 4) & 3
        if version == V311:
            if options > 2:
                raise ProtocolError(MALFORMED, f"requested QoS {options:#04x}")  # [MQTT-3.8.3-4]
            subs.append(Subscription(topic_filter, qos, False, False, 0))
            continue
        if options & 0xC0 or qos == 3 or handling == 3:
            raise ProtocolError(MALFORMED, f"subscription options {options:#04x}")  # [MQTT-3.8.3-5], QoS 3, RH 3
        if no_local and split_shared(topic_filter)[0] is not None:
            raise ProtocolError(PROTOCOL_ERROR, "No Local on a shared subscription")  # [MQTT-3.8.3-4]
        subs.append(Subscription(topic_filter, qos, no_local, rap, handling))
    return Subscribe(packet_id, subs, props.get(SUBSCRIPTION_ID), props)


def decode_unsubscribe(body: bytes, version: int = V5) -> tuple[int, list[str], Props]:
    """An UNSUBSCRIBE: (packet id, filters, properties) [MQTT-3.10]; no properties in 3.1.1."""
    r = _Reader(body)
    packet_id, props = _subscription_header(r, UNSUBSCRIBE, version)  # [MQTT-3.10.3-2]
    filters: list[str] = []
    while r.left:
        filters.append(_filter(r, "UNSUBSCRIBE", version))
    return packet_id, filters, props


def decode_disconnect(body: bytes, version: int = V5) -> Disconnect:
    """A client DISCONNECT: no body means reason 0x00 [MQTT-3.14.2.1]; a 3.1.1 one has no body."""
    r = _Reader(body)
    reason, props = 0, Props()
    if r.left and version == V5:
        reason = r.u8("reason code")
        if reason not in _CLIENT_DISCONNECT_CODES:
            raise ProtocolError(MALFORMED, f"DISCONNECT reason code {reason:#04x}")
        if r.left:
            props, _ = _props(r, DISCONNECT)
    if r.left:
        raise ProtocolError(MALFORMED, f"{r.left} bytes after DISCONNECT")
    return Disconnect(reason, props)
