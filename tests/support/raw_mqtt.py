"""The one raw MQTT test client: one packet builder for MQTT 3.1.1 and 5 and a bare client on asyncio streams.

Tests that need to misbehave (never acknowledge, never ping, send malformed bytes, vanish with a TCP reset) build
packets here and send them with `Raw`; well-behaved parties use aiomqtt or paho instead. Nothing is acknowledged,
pinged or retried unless the test says so. `SyncRaw` runs the same client for synchronous (paho-driven) tests.
The builders speak 3.1.1 by default; `version=5` (or the `connect5`/`publish5`/... spellings) adds the property
blocks, written by hand (`prop`, `props`), not with the broker's codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")

# first bytes of the fixed header (packet type << 4 | the flags a server sends)
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 0x10, 0x20, 0x30, 0x40, 0x50, 0x62, 0x70
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGRESP = 0x82, 0x90, 0xA2, 0xB0, 0xD0
PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"

# (topic, message) for a QoS 0 Will, or (topic, message, qos, retain), or in MQTT 5 (..., will properties)
Will = (tuple[str | bytes, bytes] | tuple[str | bytes, bytes, int, bool]
        | tuple[str | bytes, bytes, int, bool, bytes])
NO_PROPS = b"\x00"  # an empty MQTT 5 property block


# -- encoders ---------------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """The remaining-length encoding: 7 bits a byte, high bit set while more follow."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(text: str | bytes) -> bytes:
    """An MQTT string: 2-byte length, then the bytes (bytes are sent as they are, valid UTF-8 or not)."""
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


def packet(first: int, body: bytes) -> bytes:
    """A whole packet: fixed-header byte, remaining length, body."""
    return bytes([first]) + varint(len(body)) + body


def connect(client_id: str | bytes = "raw", username: str | None = None, password: str | bytes | None = None,
            keepalive: int = 60, clean: bool = True, will: Will | None = None, flags: int | None = None,
            extra: bytes = b"", proto: bytes = b"MQTT", version: int = 4, properties: bytes = NO_PROPS) -> bytes:
    """CONNECT; `flags` replaces the computed connect flags, `extra` is appended to the payload.

    `version=5` sends `properties` after the keep-alive and a Will's properties (its 5th item) before its topic."""
    f = (0x02 if clean else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    payload = utf8(client_id)
    if will is not None:
        topic, message, qos, retain, will_props = (*will, 0, False, NO_PROPS)[:5] if len(will) == 2 else \
            (*will, NO_PROPS)[:5]
        f |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += (will_props if version == 5 else b"") + utf8(topic) + utf8(message)
    if username is not None:
        payload += utf8(username)
    if password is not None:
        payload += utf8(password)
    head = utf8(proto) + bytes([version, f if flags is None else flags]) + struct.pack("!H", keepalive)
    return packet(CONNECT, head + (properties if version == 5 else b"") + payload + extra)


def publish(topic: str | bytes, payload: bytes = b"x", qos: int = 0, packet_id: int | None = 1,
            retain: bool = False, dup: bool = False, flags: int | None = None, version: int = 4,
            properties: bytes = NO_PROPS) -> bytes:
    """PUBLISH; the packet id is sent for QoS > 0 only; `flags` replaces the computed DUP/QoS/RETAIN bits."""
    if flags is None:
        flags = (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = utf8(topic) + (struct.pack("!H", packet_id) if qos and packet_id is not None else b"")
    return packet(PUBLISH | flags, body + (properties if version == 5 else b"") + payload)


def subscribe(filters: list[tuple[str | bytes, int]], packet_id: int = 1, first: int = SUBSCRIBE, version: int = 4,
              properties: bytes = NO_PROPS) -> bytes:
    """SUBSCRIBE for (filter, requested QoS or MQTT 5 options) pairs; `first` replaces the fixed-header byte."""
    head = struct.pack("!H", packet_id) + (properties if version == 5 else b"")
    return packet(first, head + b"".join(utf8(f) + bytes([q]) for f, q in filters))


def unsubscribe(filters: list[str], packet_id: int = 1, version: int = 4, properties: bytes = NO_PROPS) -> bytes:
    head = struct.pack("!H", packet_id) + (properties if version == 5 else b"")
    return packet(UNSUBSCRIBE, head + b"".join(utf8(f) for f in filters))


def ack(first: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP (`first` is the fixed-header byte) for `packet_id`."""
    return packet(first, struct.pack("!H", packet_id))


# -- MQTT 5 -----------------------------------------------------------------------------------------


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
        return head + utf8(k) + utf8(v)
    return head + utf8(value)  # type: ignore[arg-type]


def props(*parts: bytes) -> bytes:
    block = b"".join(parts)
    return varint(len(block)) + block


def connect5(client_id: str | bytes = "raw5", **kw: Any) -> bytes:
    return connect(client_id, version=5, **kw)


def publish5(topic: str | bytes, payload: bytes = b"x", qos: int = 0, packet_id: int | None = 1, **kw: Any) -> bytes:
    return publish(topic, payload, qos, packet_id, version=5, **kw)


def subscribe5(filters: list[tuple[str | bytes, int]], packet_id: int = 1, **kw: Any) -> bytes:
    return subscribe(filters, packet_id, version=5, **kw)


def unsubscribe5(filters: list[str], packet_id: int = 1, **kw: Any) -> bytes:
    return unsubscribe(filters, packet_id, version=5, **kw)


def read_varint(body: bytes, i: int) -> tuple[int, int]:
    """A variable byte integer at `i`: (value, the offset after it)."""
    value, mult = 0, 1
    while True:
        b = body[i]
        i += 1
        value += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            return value, i


def read_props(body: bytes, at: int) -> tuple[dict[int, object], int]:
    """Decode a property block at `at` (ids with a u8/u16/u32/string value only): (props, end offset)."""
    length, i = read_varint(body, at)
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
            value, i = read_varint(body, i)
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


# -- decoding ---------------------------------------------------------------------------------------


class Publish(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    packet_id: int  # 0 at QoS 0
    retain: bool
    dup: bool


def parse_publish(first: int, body: bytes) -> Publish:
    """A received PUBLISH (first byte, body) decoded."""
    qos, tlen = (first >> 1) & 3, struct.unpack("!H", body[:2])[0]
    rest = body[2 + tlen:]
    packet_id = struct.unpack("!H", rest[:2])[0] if qos else 0
    return Publish(body[2:2 + tlen].decode(), rest[2:] if qos else rest, qos, packet_id, bool(first & 0x01),
                   bool(first & 0x08))


# -- the client -------------------------------------------------------------------------------------


class Raw:
    """One raw TCP (or TLS) connection to the broker."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.session_present: bool | None = None  # from the last CONNACK read by `connack()`
        self._early: deque[tuple[int, bytes]] = deque()  # packets that arrived before an awaited SUBACK
        self._last_id = 0

    @classmethod
    async def open(cls, port: int, tls: ssl.SSLContext | None = None) -> Raw:
        """A TCP connection to 127.0.0.1:`port`, nothing sent yet."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
        return cls(reader, writer)

    @classmethod
    async def connected(cls, port: int, client_id: str | bytes = "raw", timeout: float = 5.0, **kw: Any) -> Raw:
        """A connection whose CONNECT (`connect()`'s keywords) got CONNACK 0."""
        raw = await cls.open(port)
        code = await raw.connack(connect(client_id, **kw), timeout)
        assert code == 0, f"CONNACK {code} for {client_id!r}"
        return raw

    def next_packet_id(self) -> int:
        self._last_id = self._last_id % 65535 + 1
        return self._last_id

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_packet(self, timeout: float | None = 3.0) -> tuple[int, bytes] | None:
        """The next packet as (first byte, body), or None once the broker closed the connection.

        TimeoutError if nothing complete arrives within `timeout` seconds."""
        if self._early:
            return self._early.popleft()
        try:
            async with asyncio.timeout(timeout):
                first = await self.reader.readexactly(1)
                length, mult = 0, 1
                while True:
                    b = (await self.reader.readexactly(1))[0]
                    length += (b & 0x7F) * mult
                    mult *= 128
                    if not b & 0x80:
                        break
                return first[0], await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def connack(self, connect_bytes: bytes, timeout: float = 3.0) -> int | None:
        """Send CONNECT; the CONNACK return code, or None if the broker closed without one."""
        await self.send(connect_bytes)
        got = await self.read_packet(timeout)
        if got is None or got[0] != CONNACK:
            return None
        self.session_present = bool(got[1][0] & 1)
        return got[1][1]

    async def subscribe(self, filters: list[tuple[str | bytes, int]], packet_id: int | None = None,
                        timeout: float = 5.0) -> list[int]:
        """SUBSCRIBE and wait for its SUBACK: the granted QoS per filter (0x80 refused).

        Packets arriving before the SUBACK are kept, in order, for the next reads."""
        pid = self.next_packet_id() if packet_id is None else packet_id
        await self.send(subscribe(filters, pid))
        early: list[tuple[int, bytes]] = []
        while True:
            got = await self.read_packet(timeout)
            assert got is not None, "connection closed before the SUBACK"
            if got[0] == SUBACK and got[1][:2] == struct.pack("!H", pid):
                self._early.extend(early)
                return list(got[1][2:])
            early.append(got)

    async def publish(self, topic: str | bytes, payload: bytes = b"x", qos: int = 0, packet_id: int | None = None,
                      retain: bool = False, dup: bool = False) -> int:
        """Send a PUBLISH; its packet id (a fresh one for QoS > 0 unless given; 0 at QoS 0)."""
        pid = (self.next_packet_id() if packet_id is None else packet_id) if qos else 0
        await self.send(publish(topic, payload, qos, pid, retain=retain, dup=dup))
        return pid

    async def puback(self, packet_id: int) -> None:
        await self.send(ack(PUBACK, packet_id))

    async def pubrec(self, packet_id: int) -> None:
        await self.send(ack(PUBREC, packet_id))

    async def pubrel(self, packet_id: int) -> None:
        await self.send(ack(PUBREL, packet_id))

    async def pubcomp(self, packet_id: int) -> None:
        await self.send(ack(PUBCOMP, packet_id))

    async def pingreq(self) -> None:
        await self.send(PINGREQ)

    async def next_publish(self, timeout: float = 5.0) -> Publish:
        """The next PUBLISH (other packets are skipped), not acknowledged."""
        while True:
            got = await self.read_packet(timeout)
            assert got is not None, "connection closed before a PUBLISH"
            if got[0] & 0xF0 == PUBLISH:
                return parse_publish(*got)

    async def publishes(self, quiet_s: float = 0.5) -> list[bytes]:
        """Payloads of the PUBLISHes received until the connection is quiet for `quiet_s` (or closed),
        each acknowledged as a client does (PUBACK; PUBREC, the PUBREL, PUBCOMP)."""
        out: list[bytes] = []
        while (got := await self.poll(quiet_s)) is not None:
            if got[0] & 0xF0 != PUBLISH:
                continue
            p = parse_publish(*got)
            out.append(p.payload)
            if p.qos == 1:
                await self.puback(p.packet_id)
            elif p.qos == 2:
                await self.pubrec(p.packet_id)
                await self.poll(quiet_s)  # the PUBREL
                await self.pubcomp(p.packet_id)
        return out

    async def publishes_within(self, seconds: float) -> list[Publish]:
        """Every PUBLISH arriving within `seconds`, none acknowledged."""
        got: list[Publish] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            p = await self.poll(left)
            if p is not None and p[0] & 0xF0 == PUBLISH:
                got.append(parse_publish(*p))
        return got

    async def poll(self, timeout: float) -> tuple[int, bytes] | None:
        """The next packet; None on timeout or close."""
        with contextlib.suppress(TimeoutError):
            return await self.read_packet(timeout)
        return None

    async def closed(self, timeout: float = 3.0) -> bool:
        """True if the broker closes the connection within `timeout` (packets before that are skipped)."""
        self._early.clear()
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(4096):
                    pass
            return True
        except ConnectionError:
            return True
        except TimeoutError:
            return False

    def abort(self) -> None:
        """Drop the connection with a TCP reset and no DISCONNECT, like a phone leaving Wi-Fi."""
        self.writer.transport.abort()

    async def close(self, disconnect: bool = False) -> None:
        """Close the socket, after a DISCONNECT if asked (without one the broker publishes the Will)."""
        if disconnect:
            with contextlib.suppress(ConnectionError, OSError):
                await self.send(DISCONNECT)
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


class SyncRaw:
    """`Raw` for synchronous tests: each call runs to completion on the client's own event loop.

    Between calls nothing runs: what the broker sends waits in the socket until the next read."""

    def __init__(self, port: int, client_id: str | bytes, **kw: Any) -> None:
        """Connect and send CONNECT (`connect()`'s keywords); the reply, if any, is in `connack`."""
        self._loop = asyncio.new_event_loop()
        self.raw = self._run(Raw.open(port))
        self.send(connect(client_id, **kw))
        self.connack = self.read(timeout=5)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coro)

    def send(self, data: bytes) -> None:
        self._run(self.raw.send(data))

    def read(self, timeout: float = 2.0) -> tuple[int, bytes] | None:
        """One packet as (first byte, body), or None on timeout or close."""
        return self._run(self.raw.poll(timeout))

    def subscribe(self, filters: list[tuple[str | bytes, int]]) -> list[int]:
        return self._run(self.raw.subscribe(filters))

    def publishes_within(self, seconds: float) -> list[Publish]:
        return self._run(self.raw.publishes_within(seconds))

    def close(self, disconnect: bool = True) -> None:
        try:
            self._run(self.raw.close(disconnect))
        finally:
            self._loop.close()


# -- MQTT 5 replies ---------------------------------------------------------------------------------


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
        if got[0] == DISCONNECT[0]:
            return got[1][0] if got[1] else 0
