"""Packet guard: frames and validates every client packet before the codec decodes it.

`Framer` is sans-IO: the connection (`broker.mqtt.protocol`) feeds it the bytes it receives and takes
whole packets, each checked against the max packet size and the wire rules Mosquitto enforces;
`check_packet` (3.1.1) and `check_v5_frame` (5) are pure and hold every rule. A violation raises
`Malformed`, whose `code` is the MQTT 5 reason code the DISCONNECT carries before the connection
closes [MQTT-4.13]. (The CONNECT and keepalive deadlines are the connection's: `deadlines.loop_sweeper`.)
"""

from __future__ import annotations

from broker.mqtt import codec
from broker.mqtt.reason import ProtocolError, Reason
from broker.mqtt.topics import valid_topic_name

__all__ = ["Framer", "Malformed", "check_packet", "check_v5_frame", "protocol_level",
           "remaining_length", "valid_topic_name"]

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14
# Packets a broker only sends, and the two reserved types: a client sending one is broken or hostile.
_SERVER_ONLY = frozenset({0, CONNACK, SUBACK, UNSUBACK, PINGRESP, 15})
# Fixed-header flags are fixed for every type but PUBLISH [MQTT-2.2.2-1].
_FLAGS = {CONNECT: 0, PUBACK: 0, PUBREC: 0, PUBREL: 2, PUBCOMP: 0, SUBSCRIBE: 2, UNSUBSCRIBE: 2,
          PINGREQ: 0, DISCONNECT: 0}
_ACK_TYPES = frozenset({PUBACK, PUBREC, PUBREL, PUBCOMP})


class Malformed(Exception):
    """A client packet breaks MQTT; the message says which rule, `code` the MQTT 5 reason code."""

    def __init__(self, message: str, code: int = Reason.MALFORMED_PACKET) -> None:
        super().__init__(message)
        self.code = code


def remaining_length(buf: bytes | bytearray | memoryview, start: int, end: int) -> tuple[int, int] | None:
    """Decode the fixed header's Remaining Length at `buf[start:end]`: (length, offset of the body), or
    None while its bytes are incomplete; Malformed past four bytes [MQTT-2.2.3]."""
    i, length, mult = start, 0, 1
    while True:
        if i >= end:
            return None
        byte = buf[i]
        i += 1
        length += (byte & 0x7F) * mult
        if not byte & 0x80:
            return length, i
        if i - start >= 4:
            raise Malformed("remaining length longer than 4 bytes")
        mult *= 128


def check_packet(ptype: int, flags: int, body: bytes, first: bool) -> None:
    """Raise Malformed if this client packet of a 3.1.1 connection breaks a rule; `first` = it is the
    connection's first packet. The framing is checked here, the packet's fields by the codec's 3.1.1
    decoders: one set of wire rules for both versions."""
    if first != (ptype == CONNECT):
        raise Malformed("first packet must be CONNECT" if first else "second CONNECT on one connection")
    if ptype in _SERVER_ONLY:
        raise Malformed(f"packet type {ptype} may not be sent by a client")
    if ptype != PUBLISH and flags != _FLAGS[ptype]:
        raise Malformed(f"bad fixed-header flags {flags:#x} for packet type {ptype}")
    try:
        if ptype == PUBLISH:
            pass  # the connection's `codec.decode_publish` validates it when it reads it: one parse, not two
        elif ptype == CONNECT:
            _check_connect(body)
        elif ptype in _ACK_TYPES:
            if len(body) == 2 and body != b"\x00\x00":
                return  # the only well-formed 3.1.1 acknowledgement: a non-zero packet id (one per QoS 1 message)
            codec.decode_ack(ptype, body, codec.V311)
            if len(body) != 2:
                raise Malformed(f"{len(body) - 2} unexpected bytes after packet type {ptype}")
        elif ptype == SUBSCRIBE:
            codec.decode_subscribe(body, codec.V311)
        elif ptype == UNSUBSCRIBE:
            codec.decode_unsubscribe(body, codec.V311)
        elif body:  # PINGREQ, DISCONNECT
            raise Malformed(f"{len(body)} unexpected bytes after packet type {ptype}")
    except ProtocolError as exc:
        raise Malformed(str(exc), exc.code) from None


def _check_connect(body: bytes) -> None:
    try:
        codec.decode_connect(body)
    except ProtocolError as exc:
        # a known protocol name at a level not served: amqtt answers it with CONNACK 1, so it passes here
        if exc.code != Reason.UNSUPPORTED_PROTOCOL_VERSION or _protocol_name(body) not in ("MQTT", "MQIsdp"):
            raise


def _protocol_name(body: bytes) -> str:
    return body[2:2 + int.from_bytes(body[:2], "big")].decode("utf-8", "replace") if len(body) >= 2 else ""


_V5_SERVER_ONLY = frozenset({0, CONNACK, SUBACK, UNSUBACK, PINGRESP})
_V5_FLAGS = {**_FLAGS, 15: 0}


def protocol_level(body: bytes) -> int:
    """The protocol level a CONNECT body declares (0 when it is too short to say)."""
    if len(body) < 2:
        return 0
    at = 2 + int.from_bytes(body[:2], "big")
    return body[at] if at < len(body) else 0


def check_v5_frame(ptype: int, flags: int, body: bytes, first: bool) -> None:
    """The framing rules of an MQTT 5 connection; the codec validates the rest when it decodes."""
    if first != (ptype == CONNECT):
        if first:
            raise Malformed("first packet must be CONNECT", 0x82)
        raise Malformed("second CONNECT on one connection", 0x82)  # [MQTT-3.1.0-2]
    if ptype in _V5_SERVER_ONLY:
        raise Malformed(f"packet type {ptype} may not be sent by a client")
    if ptype != PUBLISH and flags != _V5_FLAGS[ptype]:
        raise Malformed(f"bad fixed-header flags {flags:#x} for packet type {ptype}")  # [MQTT-2.1.3-1]
    if ptype == PINGREQ and body:
        raise Malformed("PINGREQ with a body")


class Framer:
    """Sans-IO framing of one client's byte stream: `feed` what the socket delivered, then take whole,
    validated packets with `next` until it says None (more bytes needed).

    `next` raises `Malformed` (with the MQTT 5 reason code) for a packet that breaks a rule; the
    connection then ends. The first packet must be a CONNECT; when it says protocol level 5 the
    connection is MQTT 5 (`protocol`) and later packets are checked with `check_v5_frame`. Bytes not
    yet framed stay in one buffer (None when there are none: an idle connection holds no buffer).
    """

    __slots__ = ("_buf", "_max", "_off", "packets", "protocol")

    def __init__(self, max_packet_bytes: int) -> None:
        self._buf: bytes | bytearray | None = None
        self._off = 0
        self._max = max_packet_bytes
        self.packets = 0  # packets taken so far
        self.protocol = 4  # 5 once the CONNECT says MQTT 5

    def feed(self, data: bytes) -> None:
        buf = self._buf
        if buf is None:
            self._buf, self._off = data, 0  # the common case: framed straight from the chunk received
            return
        if isinstance(buf, bytes):
            buf = bytearray(buf[self._off:])
        elif self._off:
            del buf[:self._off]
        buf += data
        self._buf, self._off = buf, 0

    def buffered(self) -> int:
        """Bytes received and not framed yet."""
        return len(self._buf) - self._off if self._buf is not None else 0

    def clear(self) -> None:
        self._buf, self._off = None, 0

    def next(self) -> tuple[int, bytes] | None:
        """The next whole, valid packet as (first byte, body), or None until more bytes arrive."""
        buf, off = self._buf, self._off
        if buf is None:
            return None
        end = len(buf)
        header = remaining_length(buf, off + 1, end) if off < end else None
        if header is None:
            if off >= end:
                self._buf, self._off = None, 0
            return None
        length, i = header
        if i - off + length > self._max:
            raise Malformed(f"packet of {length} bytes exceeds max_packet_bytes {self._max}", Reason.PACKET_TOO_LARGE)
        if end - i < length:
            return None
        first = buf[off]
        body = bytes(buf[i:i + length])
        first_packet = self.packets == 0
        if first_packet and first >> 4 == CONNECT and protocol_level(body) == 5:
            self.protocol = 5
        if self.protocol == 5:
            check_v5_frame(first >> 4, first & 0x0F, body, first=first_packet)
        else:
            check_packet(first >> 4, first & 0x0F, body, first=first_packet)
        self.packets += 1
        off = i + length
        if off >= end:
            self._buf, self._off = None, 0
        else:
            self._off = off
        return first, body
