"""Minimal raw-asyncio MQTT 3.1.1 / 5 client used as the benchmark load generator.

Only what the benchmarks need: CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH at
QoS 0/1 (with PUBACK in both directions) and DISCONNECT. With ``protocol=5``
the same packets are MQTT 5 ones, with empty property blocks.  It is an
``asyncio.Protocol`` (no streams) with an incremental parser, batched PUBACKs
and pre-encodable PUBLISH packets so one Python process can push a few
hundred thousand small messages per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import cast

MessageHandler = Callable[["MqttClient", bytes, bytes], None]
PubackHandler = Callable[["MqttClient", int], None]

_U16 = struct.Struct("!H")
DISCONNECT = b"\xe0\x00"


class MqttError(Exception):
    """Protocol-level failure (refused CONNECT, failed SUBSCRIBE, malformed packet)."""


def encode_remaining_length(n: int) -> bytes:
    """Encode the MQTT variable-length 'remaining length' field."""
    if n < 0 or n > 268_435_455:
        raise ValueError(f"remaining length out of range: {n}")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return _U16.pack(len(b)) + b


def encode_packet(header: int, body: bytes) -> bytes:
    return bytes((header,)) + encode_remaining_length(len(body)) + body


def encode_connect(
    client_id: str,
    keepalive: int = 600,
    clean_session: bool = True,
    username: str | None = None,
    password: str | None = None,
    protocol: int = 4,
) -> bytes:
    flags = 0x02 if clean_session else 0
    payload = encode_string(client_id)
    if username is not None:
        flags |= 0x80
        payload += encode_string(username)
        if password is not None:
            flags |= 0x40
            payload += encode_string(password)
    props = b"\x00" if protocol == 5 else b""  # MQTT 5: an empty property block
    var = encode_string("MQTT") + bytes((protocol, flags)) + _U16.pack(keepalive) + props
    return encode_packet(0x10, var + payload)


def encode_subscribe(packet_id: int, topics: list[tuple[str, int]], protocol: int = 4) -> bytes:
    props = b"\x00" if protocol == 5 else b""
    body = _U16.pack(packet_id) + props + b"".join(encode_string(t) + bytes((q,)) for t, q in topics)
    return encode_packet(0x82, body)


def encode_publish(topic: str | bytes, payload: bytes, qos: int = 0, packet_id: int = 0, protocol: int = 4) -> bytes:
    """Encode a PUBLISH packet (no DUP/RETAIN)."""
    t = encode_string(topic)
    props = b"\x00" if protocol == 5 else b""
    if qos:
        body_len = len(t) + 2 + len(props) + len(payload)
        return b"".join((bytes((0x30 | (qos << 1),)), encode_remaining_length(body_len), t, _U16.pack(packet_id),
                         props, payload))
    return b"".join((b"\x30", encode_remaining_length(len(t) + len(props) + len(payload)), t, props, payload))


class PublishTemplate:
    """Pre-encoded PUBLISH prefix for one topic and fixed payload size (fast path)."""

    def __init__(self, topic: str, payload_len: int, qos: int, protocol: int = 4) -> None:
        t = encode_string(topic)
        self.props = b"\x00" if protocol == 5 else b""
        body_len = len(t) + (2 if qos else 0) + len(self.props) + payload_len
        self.qos = qos
        self.payload_len = payload_len
        self.prefix = bytes((0x30 | (qos << 1),)) + encode_remaining_length(body_len) + t
        if not qos:
            self.prefix += self.props

    def encode(self, payload: bytes, packet_id: int = 0) -> bytes:
        if len(payload) != self.payload_len:
            raise ValueError("payload size does not match template")
        if self.qos:
            return self.prefix + _U16.pack(packet_id) + self.props + payload
        return self.prefix + payload


class MqttClient(asyncio.Protocol):
    """One MQTT connection. Create with :func:`connect`."""

    def __init__(self, client_id: str, protocol: int = 4) -> None:
        self.client_id = client_id
        self.protocol = protocol
        self.on_message: MessageHandler | None = None
        self.on_puback: PubackHandler | None = None
        self.transport: asyncio.Transport | None = None
        self.received = 0
        self.pubacks = 0
        self._buf = bytearray()
        loop = asyncio.get_running_loop()
        self._connack: asyncio.Future[int] = loop.create_future()
        self._acks: dict[int, asyncio.Future[bytes]] = {}
        self.closed: asyncio.Future[None] = loop.create_future()
        self._next_id = 0
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transport is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        err = exc or ConnectionResetError("connection closed")
        for fut in (self._connack, *self._acks.values()):
            if not fut.done():
                fut.set_exception(err)
                fut.exception()  # mark retrieved: nobody may be waiting any more
        self._acks.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        self._wake_drain()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drain()

    def _wake_drain(self) -> None:
        for w in self._drain_waiters:
            if not w.done():
                w.set_result(None)
        self._drain_waiters.clear()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        n = len(buf)
        pos = 0
        acks: list[bytes] | None = None
        on_message = self.on_message
        v5 = self.protocol == 5
        while n - pos >= 2:
            header = buf[pos]
            i = pos + 1
            rl = 0
            shift = 0
            complete = False
            while i < n:
                b = buf[i]
                i += 1
                rl |= (b & 0x7F) << shift
                if b < 0x80:
                    complete = True
                    break
                shift += 7
                if shift > 21:
                    self._fail(MqttError("malformed remaining length"))
                    return
            if not complete or n - i < rl:
                break  # incomplete packet: wait for more data
            end = i + rl
            ptype = header & 0xF0
            if ptype == 0x30:
                qos = (header >> 1) & 0x03
                tlen = (buf[i] << 8) | buf[i + 1]
                topic = bytes(buf[i + 2 : i + 2 + tlen])
                p = i + 2 + tlen
                if qos:
                    if acks is None:
                        acks = []
                    acks.append(b"\x40\x02" + bytes(buf[p : p + 2]))
                    p += 2
                if v5:
                    p = _skip_props(buf, p)
                self.received += 1
                if on_message is not None:
                    on_message(self, topic, bytes(buf[p:end]))
            elif ptype == 0x40:
                self.pubacks += 1
                if self.on_puback is not None:
                    self.on_puback(self, (buf[i] << 8) | buf[i + 1])
            elif ptype == 0x20:
                if not self._connack.done():
                    self._connack.set_result(buf[i + 1] if rl >= 2 else 255)
            elif ptype == 0x90:
                fut = self._acks.pop((buf[i] << 8) | buf[i + 1], None)
                if fut is not None and not fut.done():
                    fut.set_result(bytes(buf[_skip_props(buf, i + 2) if v5 else i + 2 : end]))
            # PINGRESP (0xd0), UNSUBACK (0xb0) etc. are ignored.
            pos = end
        if pos:
            del buf[:pos]
        if acks and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(acks))

    def _fail(self, exc: Exception) -> None:
        if not self._connack.done():
            self._connack.set_exception(exc)
            self._connack.exception()
        if self.transport is not None:
            self.transport.abort()

    # -- API --------------------------------------------------------------
    def next_packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError(f"{self.client_id}: not connected")
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        while self._paused and self.transport is not None and not self.transport.is_closing():
            fut = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(fut)
            await fut

    def publish(self, topic: str | bytes, payload: bytes, qos: int = 0) -> int:
        """Send a PUBLISH; return its packet id (0 for QoS 0)."""
        pid = self.next_packet_id() if qos else 0
        self.write(encode_publish(topic, payload, qos, pid, self.protocol))
        return pid

    async def subscribe(self, topics: list[tuple[str, int]], limit_s: float = 10.0) -> bytes:
        pid = self.next_packet_id()
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._acks[pid] = fut
        self.write(encode_subscribe(pid, topics, self.protocol))
        codes = await asyncio.wait_for(fut, limit_s)
        if any(c & 0x80 for c in codes):
            raise MqttError(f"{self.client_id}: SUBSCRIBE refused: {codes!r}")
        return codes

    async def _handshake(self, packet: bytes, limit_s: float) -> None:
        self.write(packet)
        rc = await asyncio.wait_for(asyncio.shield(self._connack), limit_s)
        if rc != 0:
            raise MqttError(f"{self.client_id}: CONNACK return code {rc}")

    async def disconnect(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            self.transport.write(DISCONNECT)
        finally:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def connect(
    host: str,
    port: int,
    client_id: str,
    *,
    keepalive: int = 600,
    username: str | None = None,
    password: str | None = None,
    limit_s: float = 10.0,
    protocol: int = 4,
) -> MqttClient:
    """Open a TCP connection and complete the MQTT CONNECT handshake (`protocol` 4: 3.1.1, 5: MQTT 5)."""
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(lambda: MqttClient(client_id, protocol), host, port), limit_s)
    try:
        await proto._handshake(encode_connect(client_id, keepalive, True, username, password, protocol), limit_s)
    except BaseException:
        proto.abort()
        raise
    return proto


def _skip_props(buf: bytearray, p: int) -> int:
    """The offset after an MQTT 5 property block starting at `p`."""
    length, shift = 0, 0
    while True:
        b = buf[p]
        p += 1
        length |= (b & 0x7F) << shift
        if b < 0x80:
            return p + length
        shift += 7


def install_uvloop() -> bool:
    """Use uvloop for new event loops if it is installed; return whether it is."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True
