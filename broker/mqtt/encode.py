"""MQTT packets the broker writes, 3.1.1 and 5 (the reading side, and the tables both share, are in `codec`).

Each encoder takes the connection's `version` where the wire differs: 3.1.1 packets carry no properties
and no reason codes (CONNACK's return code 0-5, SUBACK's 0/1/2/0x80, an UNSUBACK without payload), and a
3.1.1 server sends no DISCONNECT (it closes the socket)."""

from __future__ import annotations

from typing import Any

from broker.mqtt.codec import _BIN, _BYTE, _PROPS, _STR, _U16, _U32, _VARINT, PUBREL, V5, V311, Props

__all__ = ["encode_ack", "encode_connack", "encode_disconnect", "encode_props", "encode_publish", "encode_suback",
           "encode_unsuback", "expiry_property", "packet", "property_bytes", "varint"]


def varint(n: int) -> bytes:
    """MQTT's variable byte integer: the fixed header's Remaining Length, and (MQTT 5) property lengths."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _s(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def _prop(ident: int, value: Any) -> bytes:
    kind = _PROPS[ident][0]
    if kind == _BYTE:
        return bytes((ident, value))
    if kind == _U16:
        return bytes((ident,)) + int(value).to_bytes(2, "big")
    if kind == _U32:
        return bytes((ident,)) + int(value).to_bytes(4, "big")
    if kind == _VARINT:
        return bytes((ident,)) + varint(value)
    if kind == _STR:
        return bytes((ident,)) + _s(value)
    if kind == _BIN:
        return bytes((ident,)) + len(value).to_bytes(2, "big") + bytes(value)
    return bytes((ident,)) + _s(value[0]) + _s(value[1])


def property_bytes(ident: int, value: Any) -> bytes:
    """One encoded property (identifier and value)."""
    return _prop(ident, value)


def encode_props(props: Props, raw: bytes = b"") -> bytes:
    """A property block (length included): `props` encoded, followed by already-encoded `raw` ones."""
    parts = [raw] if raw else []
    for ident, value in props.items():
        if isinstance(value, list):
            parts.extend(_prop(ident, v) for v in value)
        else:
            parts.append(_prop(ident, value))
    block = b"".join(parts)
    return varint(len(block)) + block


def expiry_property(seconds: int) -> bytes:
    """An encoded Message Expiry Interval property."""
    return b"\x02" + seconds.to_bytes(4, "big")


def packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


def encode_connack(session_present: bool, reason: int, props: Props, version: int = V5) -> bytes:
    """CONNACK; `reason` is a 3.1.1 return code (0-5) for `version` 4, a reason code for 5."""
    if version == V311:
        return bytes((0x20, 2, int(session_present), reason))
    return packet(0x20, bytes((int(session_present), reason)) + encode_props(props))


def encode_publish(topic_b: bytes, payload: bytes, qos: int, packet_id: int, retain: bool, dup: bool,
                   props_raw: bytes | None) -> bytes:
    """A PUBLISH; `props_raw` is the encoded v5 properties without the length prefix, None for 3.1.1 (no block)."""
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    pid = packet_id.to_bytes(2, "big") if qos else b""
    head = len(topic_b).to_bytes(2, "big") + topic_b + pid
    if props_raw is not None:
        head += varint(len(props_raw)) + props_raw if props_raw else b"\x00"
    return bytes((first,)) + varint(len(head) + len(payload)) + head + payload


def encode_ack(ptype: int, packet_id: int, reason: int = 0, props: Props | None = None, version: int = V5) -> bytes:
    """PUBACK / PUBREC / PUBREL / PUBCOMP; the short form when reason is 0 and there are no properties, and
    always in 3.1.1 (which has no reason: the reason is dropped)."""
    first = (ptype << 4) | (0x02 if ptype == PUBREL else 0)
    if (not reason and not props) or version == V311:
        return bytes((first, 2)) + packet_id.to_bytes(2, "big")
    body = packet_id.to_bytes(2, "big") + bytes((reason,))
    if props:
        body += encode_props(props)
    return packet(first, body)


def encode_suback(packet_id: int, codes: list[int], props: Props | None = None, version: int = V5) -> bytes:
    """SUBACK; in 3.1.1 every failure is 0x80 and there are no properties."""
    if version == V311:
        return packet(0x90, packet_id.to_bytes(2, "big") + bytes(min(code, 0x80) for code in codes))
    return packet(0x90, packet_id.to_bytes(2, "big") + encode_props(props or {}) + bytes(codes))


def encode_unsuback(packet_id: int, codes: list[int], props: Props | None = None, version: int = V5) -> bytes:
    """UNSUBACK; a 3.1.1 one is the packet id alone."""
    if version == V311:
        return b"\xb0\x02" + packet_id.to_bytes(2, "big")
    return packet(0xB0, packet_id.to_bytes(2, "big") + encode_props(props or {}) + bytes(codes))


def encode_disconnect(reason: int, props: Props | None = None) -> bytes:
    if not reason and not props:
        return b"\xe0\x00"
    return packet(0xE0, bytes((reason,)) + encode_props(props or {}))

