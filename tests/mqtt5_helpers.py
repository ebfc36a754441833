"""Raw MQTT 5 bytes, written by hand (not with the broker's codec), for the byte-level v5 tests."""

from __future__ import annotations

import struct

from tests.raw_mqtt import Raw, packet, varint
from tests.raw_mqtt import utf8 as s

CONNACK, PUBLISH, PUBACK, PUBREC, SUBACK, UNSUBACK, DISCONNECT = 0x20, 0x30, 0x40, 0x50, 0x90, 0xB0, 0xE0


def prop(ident: int, value: int | str | bytes | tuple[str, str], kind: str) -> bytes:
    """One property: kind is b(yte), h (u16), i (u32), v(arint), s(tring), d(ata) or p(air)."""
    head = bytes([ident])
    if kind == "b":
        return head + bytes([int(value)])  # type: ignore[arg-type]
    if kind == "h":
        return head + struct.pack("!H", value)
    if kind == "i":
        return head + struct.pack("!I", value)
    if kind == "v":
        return head + varint(int(value))  # type: ignore[arg-type]
    if kind == "p":
        k, v = value  # type: ignore[misc]
        return head + s(k) + s(v)
    return head + s(value)  # type: ignore[arg-type]


def props(*parts: bytes) -> bytes:
    block = b"".join(parts)
    return varint(len(block)) + block


def connect5(client_id: str | bytes = "raw5", keepalive: int = 60, clean: bool = True, properties: bytes = b"\x00",
             will: tuple[str | bytes, bytes, int, bool, bytes] | None = None, flags: int | None = None,
             username: str | None = None, password: bytes | None = None, extra: bytes = b"") -> bytes:
    f = (0x02 if clean else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    payload = s(client_id)
    if will is not None:
        topic, message, qos, retain, will_props = will
        f |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += will_props + s(topic) + s(message)
    if username is not None:
        payload += s(username)
    if password is not None:
        payload += s(password)
    body = s("MQTT") + bytes([5, f if flags is None else flags]) + struct.pack("!H", keepalive) + properties
    return packet(0x10, body + payload + extra)


def publish5(topic: str | bytes, payload: bytes = b"x", qos: int = 0, packet_id: int = 1, properties: bytes = b"\x00",
             flags: int | None = None) -> bytes:
    body = s(topic) + (struct.pack("!H", packet_id) if qos else b"") + properties + payload
    return packet(0x30 | (qos << 1) if flags is None else 0x30 | flags, body)


def subscribe5(filters: list[tuple[str | bytes, int]], packet_id: int = 1, properties: bytes = b"\x00") -> bytes:
    return packet(0x82, struct.pack("!H", packet_id) + properties + b"".join(s(f) + bytes([o]) for f, o in filters))


def unsubscribe5(filters: list[str], packet_id: int = 1, properties: bytes = b"\x00") -> bytes:
    return packet(0xA2, struct.pack("!H", packet_id) + properties + b"".join(s(f) for f in filters))


def read_props(body: bytes, at: int) -> tuple[dict[int, object], int]:
    """Decode a property block at `at` (ids with a u8/u16/u32/string value only): (props, end offset)."""
    length, mult, i = 0, 1, at
    while True:
        b = body[i]
        i += 1
        length += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            break
    end = i + length
    out: dict[int, object] = {}
    widths = {0x21: 2, 0x22: 2, 0x13: 2, 0x27: 4, 0x11: 4, 0x02: 4, 0x24: 1, 0x25: 1, 0x28: 1, 0x29: 1, 0x2A: 1,
              0x01: 1, 0x23: 2}
    while i < end:
        ident = body[i]
        i += 1
        if ident in widths:
            w = widths[ident]
            out[ident] = int.from_bytes(body[i:i + w], "big")
            i += w
        elif ident == 0x0B:
            value, mult = 0, 1
            while True:
                b = body[i]
                i += 1
                value += (b & 0x7F) * mult
                mult *= 128
                if not b & 0x80:
                    break
            out.setdefault(ident, []).append(value)  # type: ignore[union-attr]
        else:  # a string or binary (0x12, 0x1F, 0x03, 0x08, 0x09, 0x26 key then value)
            n = int.from_bytes(body[i:i + 2], "big")
            value_b = body[i + 2:i + 2 + n]
            i += 2 + n
            if ident == 0x26:
                m = int.from_bytes(body[i:i + 2], "big")
                out.setdefault(ident, []).append((value_b.decode(), body[i + 2:i + 2 + m].decode()))  # type: ignore[union-attr]
                i += 2 + m
            else:
                out[ident] = value_b
    return out, end


async def connack5(raw: Raw, data: bytes) -> tuple[int, dict[int, object]] | None:
    """Send a CONNECT; (reason code, CONNACK properties), or None if the broker closed without a CONNACK."""
    await raw.send(data)
    got = await raw.read_packet()
    if got is None or got[0] != CONNACK:
        return None
    return got[1][1], read_props(got[1], 2)[0]


async def disconnect_reason(raw: Raw, timeout: float = 3.0) -> int | None:
    """Read until the broker's DISCONNECT; its reason code (None if the connection ended without one)."""
    while True:
        got = await raw.read_packet(timeout)
        if got is None:
            return None
        if got[0] == DISCONNECT:
            return got[1][0] if got[1] else 0
