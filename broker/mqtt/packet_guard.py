"""Packet guard: frames and validates every client packet before amqtt (3.1.1) or the v5 codec parses it.

`GuardedReader` wraps amqtt's `ReaderAdapter`. It reads one whole packet at a time from the socket,
enforces the CONNECT timeout, keepalive (x factor), the max packet size and the wire rules Mosquitto
enforces, and only then hands the bytes to amqtt. On any violation it reports end-of-stream, so
amqtt treats the client as gone (abnormal disconnect: its Will is published) and the socket closes.
`check_packet` is pure and holds every rule.

A connection whose CONNECT says protocol level 5 is MQTT 5 (`GuardedReader.protocol`): its packets are
framed and checked here with `check_v5_frame` (types, fixed-header flags, size) and decoded strictly by
`broker.mqtt.codec`; the reason code of a refusal is kept in `GuardedReader.code`, for the DISCONNECT
MQTT 5 sends before closing [MQTT-4.13].
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
import weakref
from dataclasses import dataclass

from amqtt.adapters import ReaderAdapter

from broker.limiter import LogThrottle
from broker.mqtt import codec
from broker.mqtt.deadlines import DeadlineSweeper
from broker.mqtt.reason import ProtocolError, Reason
from broker.mqtt.topics import valid_topic_name

__all__ = ["GuardLimits", "GuardedReader", "Malformed", "check_packet", "check_v5_frame", "protocol_level",
           "remaining_length", "valid_topic_name"]

log = logging.getLogger("intercom.guard")
_quiet = LogThrottle(1.0)

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14
# Packets a broker only sends, and the two reserved types: a client sending one is broken or hostile.
_SERVER_ONLY = frozenset({0, CONNACK, SUBACK, UNSUBACK, PINGRESP, 15})
# Fixed-header flags are fixed for every type but PUBLISH [MQTT-2.2.2-1].
_FLAGS = {CONNECT: 0, PUBACK: 0, PUBREC: 0, PUBREL: 2, PUBCOMP: 0, SUBSCRIBE: 2, UNSUBSCRIBE: 2,
          PINGREQ: 0, DISCONNECT: 0}
_ACK_TYPES = frozenset({PUBACK, PUBREC, PUBREL, PUBCOMP})
_CHUNK = 64 * 1024


class Malformed(Exception):
    """A client packet breaks MQTT; the message says which rule, `code` the MQTT 5 reason code."""

    def __init__(self, message: str, code: int = Reason.MALFORMED_PACKET) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class GuardLimits:
    max_packet_bytes: int = 64 * 1024
    connect_timeout_s: float = 10.0
    keepalive_factor: float = 1.5
    max_inflight_messages: int = 32
    max_keepalive_s: int = 3600


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


class GuardedReader(ReaderAdapter):
    """Serves amqtt only whole, validated packets; see the module docstring.

    Bytes arrive in chunks into `_raw`; complete packets are validated synchronously and moved to
    `_buf`, which amqtt reads. A read cancelled while it waits for the socket loses nothing (bytes
    only move once they arrived), so the wait runs in the reader's own task: no task per wait. The
    CONNECT/keepalive deadline is watched by a `DeadlineSweeper`, which interrupts that wait.
    """

    def __init__(self, inner: ReaderAdapter, limits: GuardLimits, peer: str = "?",
                 sweeper: DeadlineSweeper | None = None) -> None:
        self._inner = inner
        self._limits = limits
        self._peer = peer
        self._raw = bytearray()  # received, not yet validated; valid from `_off`
        self._off = 0
        self._buf = bytearray()  # validated packets, for amqtt
        self._waiting: asyncio.Task[object] | None = None  # the task blocked on the socket, if any
        self._interrupted = False
        self._eof = False
        self._packets = 0
        self._deadline: float | None = time.monotonic() + limits.connect_timeout_s
        self.keepalive_s = 0
        self.inflight: asyncio.Queue[object] | None = None  # the session's incoming queue, for back-pressure
        self.reason: str | None = None
        self.protocol = 4  # 5 once the CONNECT says MQTT 5
        self.code: int | None = None  # MQTT 5 reason code of a refusal (sent before closing)
        self._expired: str | None = None
        self._last: tuple[int, bytes] = (0, b"")
        self.watch_token = 0
        self._sweeper = sweeper or _default_sweeper()
        self._sweeper.watch(self)

    @property
    def deadline(self) -> float | None:
        return None if self._eof else self._deadline

    def expire(self) -> bool:
        """Called by the sweeper once the deadline passed: end the pending wait for bytes."""
        if self._waiting is None:
            return False  # busy with a packet; asked again next tick
        self._expired = "CONNECT timeout" if self._packets == 0 else "keepalive expired"
        if self._packets:
            self.code = Reason.KEEP_ALIVE_TIMEOUT
        self._interrupt()
        return True

    def _interrupt(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            self._interrupted = True
            waiting.cancel()

    def start_session(self, keepalive_s: int, inflight: asyncio.Queue[object]) -> None:
        """CONNECT accepted: switch from the CONNECT timeout to keepalive x factor.

        A keepalive of 0 (MQTT: no keepalive) or above `max_keepalive_s` is enforced as
        `max_keepalive_s`, so a connection can never idle forever."""
        cap = self._limits.max_keepalive_s
        self.keepalive_s = keepalive_s if 0 < keepalive_s <= cap else cap
        self.inflight = inflight
        self._arm()
        self._sweeper.watch(self)  # the keepalive deadline may come before the CONNECT one

    def _arm(self) -> None:
        k = self.keepalive_s
        self._deadline = time.monotonic() + k * self._limits.keepalive_factor if k > 0 else None

    async def await_connect(self) -> int | None:
        """Wait for the first packet (the CONNECT) and validate its framing, leaving it to be read; the
        protocol level it declares (5: MQTT 5), or None when the connection ended or was refused."""
        while not self._buf and not self._eof:
            if self._take_packet():
                break
            if not self._eof:
                await self._receive()
        return self.protocol if self._buf else None

    async def read(self, n: int = -1) -> bytes:
        want = max(n, 1)
        while len(self._buf) < want and not self._eof:
            q = self.inflight
            if q is not None and q.qsize() >= self._limits.max_inflight_messages:
                await self._wait_for_room(q)
            if self._take_packet():
                continue
            if self._eof:  # the packet was refused
                break
            await self._receive()
        if n < 0:
            n = len(self._buf)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def feed_eof(self) -> None:
        self._eof = True
        self._inner.feed_eof()

    def close(self) -> None:
        """Stop reading: a pending read ends as end-of-stream."""
        self._eof = True
        self._interrupt()

    def take_packet(self) -> tuple[int, bytes] | None:
        """The next whole, valid packet as (first byte, body) if one has fully arrived, else None."""
        if self._buf:  # bytes already moved for `read()` come first (rare: only around CONNECT)
            return _split(self._buf)
        if self._next_packet() is None:
            return None
        return self._last

    async def read_packet(self) -> tuple[int, bytes] | None:
        """The next whole, valid packet as (first byte, body); None at end of stream (or refusal).

        One call per packet, where amqtt's `read(1)`, `read(1)`..., `read(n)` took three or more."""
        while not self._eof or self._buf:
            packet = self.take_packet()
            if packet is not None:
                return packet
            if self._eof:
                break
            q = self.inflight
            if q is not None and q.qsize() >= self._limits.max_inflight_messages:
                await self._wait_for_room(q)
            await self._receive()
        return None

    def _take_packet(self) -> bool:
        """Move one complete, valid packet from `_raw` to `_buf` (for `read()`); False if none is there."""
        start = self._off
        if self._next_packet() is None:
            return False
        self._buf += self._raw[start:self._off]
        return True

    def _next_packet(self) -> int | None:
        """Validate and consume one complete packet from `_raw` (kept in `_last`); its end offset, or
        None if none is complete yet (or it was refused: then the reader is at end of stream)."""
        raw, off = self._raw, self._off
        end = len(raw)
        if off >= end:
            return None
        try:
            header = remaining_length(raw, off + 1, end)
            if header is None:
                return None
            length, i = header
            if i - off + length > self._limits.max_packet_bytes:
                raise Malformed(f"packet of {length} bytes exceeds max_packet_bytes {self._limits.max_packet_bytes}",
                                Reason.PACKET_TOO_LARGE)
            if end - i < length:
                return None
            first = raw[off]
            body = bytes(raw[i:i + length])
            if self._packets == 0 and first >> 4 == CONNECT and protocol_level(body) == 5:
                self.protocol = 5
            if self.protocol == 5:
                check_v5_frame(first >> 4, first & 0x0F, body, first=self._packets == 0)
            else:
                check_packet(first >> 4, first & 0x0F, body, first=self._packets == 0)
        except Malformed as exc:
            self.code = exc.code
            self._stop(f"malformed packet: {exc}")
            return None
        self._last = (first, body)
        self._off = i + length
        self._packets += 1
        self._arm()
        return self._off

    async def _receive(self) -> None:
        """Wait for more bytes (until the CONNECT or keepalive deadline)."""
        if self._off:
            del self._raw[:self._off]
            self._off = 0
        self._waiting = asyncio.current_task()
        try:
            chunk = await self._chunk()
        except asyncio.CancelledError:
            if not self._interrupted:
                raise
            # our own interrupt (deadline or close), not the caller's: the read just sees end-of-stream
            self._interrupted = False
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            self._stop(self._expired)
            return
        except (asyncio.IncompleteReadError, ConnectionError, OSError, EOFError):
            chunk = b""
        finally:
            self._waiting = None
        if not chunk:
            self._stop(None)
            return
        self._raw += chunk

    async def _chunk(self) -> bytes:
        # amqtt (pinned) adapters keep the stream privately; reading what is there beats byte-wise reads.
        stream = getattr(self._inner, "_reader", None)
        if isinstance(stream, asyncio.StreamReader):
            return await stream.read(_CHUNK)
        first = bytes(await self._inner.read(1))
        leftover = getattr(self._inner, "_stream", None)  # WebSocketsReader's buffer of the current message
        if first and isinstance(leftover, io.BytesIO):
            return first + leftover.read()
        return first

    async def _wait_for_room(self, q: asyncio.Queue[object]) -> None:
        """Back-pressure: stop reading while the session has max_inflight messages unprocessed."""
        while q.qsize() >= self._limits.max_inflight_messages:  # noqa: ASYNC110 - amqtt's queue has no "below N" signal
            await asyncio.sleep(0.005)
        self._arm()  # waiting on us is not client silence

    def _stop(self, reason: str | None) -> None:
        self._eof = True
        self.reason = reason
        if reason is not None:
            _quiet.log(log, logging.WARNING, self._peer.rpartition(":")[0], "closing MQTT connection from %s: %s",
                       self._peer, reason)


def _split(buf: bytearray) -> tuple[int, bytes]:
    """Take the first packet off `buf`, which holds whole packets only."""
    header = remaining_length(buf, 1, len(buf))
    if header is None:
        raise Malformed("incomplete packet")
    length, i = header
    first, body = buf[0], bytes(buf[i:i + length])
    del buf[:i + length]
    return first, body


_SWEEPERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, DeadlineSweeper] = weakref.WeakKeyDictionary()


def _default_sweeper() -> DeadlineSweeper:
    """One sweeper per event loop for readers not given one."""
    loop = asyncio.get_running_loop()
    sweeper = _SWEEPERS.get(loop)
    if sweeper is None:
        sweeper = _SWEEPERS[loop] = DeadlineSweeper()
    return sweeper
