"""One MQTT network connection as an `asyncio.Protocol`: no task and no coroutine frame while it idles.

The event loop calls `data_received` with what the socket delivered; `packet_guard.Framer` cuts it into
validated packets and each is handled at once, synchronously, where its handler is synchronous (a plain
PUBLISH, PUBACK / PUBREC / PUBCOMP, PINGREQ). A packet whose handler must await (the CONNECT, SUBSCRIBE, a
PUBLISH an asynchronous ACL decides, a PUBREL barrier) runs in a short-lived task; bytes arriving meanwhile
wait unframed, in order, and past `BACKLOG_BYTES` the socket is not read (back-pressure). A client that
pipelines many packets yields the loop every `fairness.SLICE_S`. One task per loop
(`deadlines.DeadlineSweeper`) watches the CONNECT and keepalive deadlines of every connection.

The accept-time refusals (`accept_gate.AcceptGate`) run in `connection_made`, before anything else is made.
Every end (socket lost, DISCONNECT, keepalive expiry, a protocol error, a takeover, a revocation) goes one
way: the broker's `close_session` (Will, session cleanup, takeover's `Connection.done`), then the socket closes.
A WebSocket connection is the same object, fed by a small pump task (`ws_listener`) through a
`pumped.PumpedTransport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Protocol, cast

from broker.config import LimitsConfig
from broker.limiter import LogThrottle
from broker.mqtt.accept_gate import AcceptGate
from broker.mqtt.deadlines import loop_sweeper
from broker.mqtt.fairness import CHECK_EVERY, SLICE_S
from broker.mqtt.outlet import write_batch
from broker.mqtt.packet_guard import Framer, Malformed
from broker.mqtt.pumped import PumpedTransport
from broker.mqtt.reason import ProtocolError, Reason

if TYPE_CHECKING:
    from broker.mqtt.connection import Connection

__all__ = ["BACKLOG_BYTES", "ConnectionHost", "MqttProtocol"]

log = logging.getLogger("intercom.guard")
_quiet = LogThrottle(1.0)
BACKLOG_BYTES = 64 * 1024  # unframed bytes held while a packet's handler awaits; past it, reading pauses
_CLOSE_WAIT_S = 2.0  # a close waits this long for unsent bytes to leave, then the socket is aborted


class ConnectionHost(Protocol):
    """What the broker offers a connection (`handle_connect.ConnectMixin`)."""

    limits: LimitsConfig

    async def open_session(self, listener: str, wire: MqttProtocol, packet: tuple[int, bytes]) -> bool:
        """Handle the CONNECT; True when the connection is registered (`wire.start_session` was called)."""
        ...

    async def close_session(self, conn: Connection) -> None:
        """The registered connection has ended: its Will, session cleanup and the listener's slot."""
        ...


class _Resumed:
    """A coroutine already run to its first suspension (`first`: what it yielded), for a task to await on."""

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self._coro, self._first
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation: into the coroutine, as `await` would
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                value = coro.send(sent)
            except StopIteration as stop:
                return stop.value


class MqttProtocol:
    """One client socket, from accept to close (see the module docstring). An `asyncio.Protocol` by its methods,
    not by inheritance: the compiled build (`broker.native_build`) makes it a native class, which cannot extend
    asyncio's Python classes (`asyncio.Protocol` declares `__slots__`)."""

    __slots__ = (
        "_admitted",
        "_deadline",
        "_discard",
        "_drain_waiters",
        "_ending",
        "_gate",
        "_host",
        "_listener",
        "_loop",
        "_lost",
        "_lost_waiter",
        "_read_paused",
        "_sweeper",
        "_task",
        "_write_paused",
        "_writes",
        "_yielding",
        "accepted_at",
        "conn",
        "framer",
        "keepalive_s",
        "peer",
        "transport",
        "watch_token",
    )

    def __init__(self, host: ConnectionHost, listener: str, gate: AcceptGate, accepted_at: float | None = None) -> None:
        self._host = host
        self._listener = listener
        self._gate = gate
        self._loop = asyncio.get_running_loop()
        self._sweeper = loop_sweeper()
        self._writes = write_batch(self._loop)
        self.accepted_at = time.monotonic() if accepted_at is None else accepted_at  # before any TLS handshake
        self.transport: asyncio.Transport | None = None
        self.framer = Framer(host.limits.max_packet_bytes)
        self.conn: Connection | None = None  # once the CONNECT is accepted and registered
        self.peer: tuple[str, int] | None = None
        self.keepalive_s = 0
        self.watch_token = 0
        self._deadline: float | None = None
        self._task: asyncio.Task[None] | None = None  # the handler of one packet that must await, if any
        self._admitted = False
        self._lost = False
        self._ending = False
        self._discard = False  # a closing connection reads and drops what still comes
        self._yielding = False
        self._read_paused = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] | None = None
        self._lost_waiter: asyncio.Future[None] | None = None

    # -- accept --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast("asyncio.Transport", transport)  # uvloop's do not subclass asyncio's
        peer = transport.get_extra_info("peername")
        self.peer = peer if isinstance(peer, tuple) and len(peer) >= 2 else None  # (IPv6: 4 items)
        if self._gate.admit(self.peer[0] if self.peer else None) is not None:
            transport.abort()  # refused before anything else is made for it
            return
        self._admitted = True  # (both loops set TCP_NODELAY on their TCP transports themselves)
        # the CONNECT deadline runs from the TCP accept: TLS and WebSocket handshakes count against it
        self._deadline = self.accepted_at + self._host.limits.connect_timeout_s
        self._sweeper.watch(self)

    # -- reading -------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._discard or self._ending:
            return
        self.framer.feed(data)
        if self._task is None and not self._yielding:
            self._pump()
        elif not self._read_paused and self.framer.buffered() > BACKLOG_BYTES:
            self._pause_reading()

    def eof_received(self) -> bool | None:
        return None  # the client half-closed: the transport closes, connection_lost follows

    def _pump(self) -> None:
        """Handle every whole packet buffered, until one must await (then its task continues), or the slice ends."""
        framer = self.framer
        conn = self.conn
        got = 0
        started = self._loop.time()
        writes = self._writes
        writes.held = True  # what the handlers write leaves when this call ends: no end-of-iteration callback
        try:
            while not self._ending and not self._discard:
                packet = framer.next()
                if packet is None:
                    break
                got += 1
                if conn is None:  # the CONNECT: admission and session adoption await
                    self._spawn(self._open(packet))
                    return
                if conn.closed:  # being ended (a takeover's DISCONNECT still draining): nothing more is handled
                    break
                pending = conn.handle(packet[0], packet[1])
                if conn.goodbye is not None:  # the client's DISCONNECT
                    self._end()
                    return
                if pending is not None and not self._start(pending):
                    break  # its task handles what follows once it is done
                if got % CHECK_EVERY == 0 and self._loop.time() - started >= SLICE_S:
                    self._yielding = True  # the others' turn; the rest is handled in the next iteration
                    self._loop.call_soon(self._next_turn)
                    break
        except Malformed as bad:  # each `except` its own name: the compiled build types a name once
            self._malformed(bad)
        except ProtocolError as error:
            self._protocol_error(error)
        except Exception:
            log.debug("MQTT connection from %s: a packet's handler failed", self.peer, exc_info=True)
            self.close()
        finally:
            writes.held = False
            writes.flush()  # the answers (PUBACKs, deliveries) leave now, not an iteration later
            if got and self.keepalive_s:
                self._arm()
        if self._task is None and not self._yielding:
            if self._read_paused:
                self._resume_reading()
        elif not self._read_paused and framer.buffered() > BACKLOG_BYTES:
            self._pause_reading()

    def _next_turn(self) -> None:
        self._yielding = False
        if self._task is None and not self._lost:
            self._pump()

    def _start(self, pending: Awaitable[Any]) -> bool:
        """Run a handler up to its first suspension now, so it acts in arrival order with every other connection's
        packets; True if it finished without one (most do: an ACL answering synchronously), else a task carries it
        on."""
        if not isinstance(pending, Coroutine):
            self._spawn(self._await(pending))
            return False
        try:
            first = pending.send(None)
        except StopIteration:
            return True
        self._spawn(self._await(_Resumed(pending, first)))
        return False

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._task = self._loop.create_task(coro)

    async def _open(self, packet: tuple[int, bytes]) -> None:
        registered = False
        try:
            registered = await self._host.open_session(self._listener, self, packet)
        except Exception:
            log.debug("MQTT connection from %s ended with an error", self.peer, exc_info=True)
        self._task = None
        if not registered:
            self.close()  # refused (CONNACK sent) or broken: connection_lost follows
            return
        self._continue()

    async def _await(self, pending: Awaitable[Any]) -> None:
        try:
            await pending
        except ProtocolError as exc:
            self._task = None
            self._protocol_error(exc)
            return
        except Exception:
            log.debug("MQTT connection from %s: a packet's handler failed", self.peer, exc_info=True)
            self._task = None
            self.close()
            return
        self._task = None
        self._continue()

    def _continue(self) -> None:
        """A packet's task is done: end if the connection was lost meanwhile, else handle what came since."""
        if self._lost or (self.conn is not None and self.conn.goodbye is not None):
            self._end()
        else:
            self._pump()

    # -- deadlines (DeadlineSweeper) -----------------------------------------------------------

    @property
    def deadline(self) -> float | None:
        return self._deadline

    def start_session(self, conn: Connection, keepalive_s: int) -> None:
        """CONNECT accepted and registered: from now on the client's silence is bounded by keepalive x factor.

        A keepalive of 0 (MQTT: no keepalive) or above `max_keepalive_s` is enforced as `max_keepalive_s`, so a
        connection can never idle forever."""
        self.conn = conn
        cap = self._host.limits.max_keepalive_s
        self.keepalive_s = keepalive_s if 0 < keepalive_s <= cap else cap
        before = self._deadline
        self._arm()
        if before is None or self._deadline is None or self._deadline < before:
            self._sweeper.watch(self)  # else its entry is pushed back when the CONNECT deadline comes due

    def _arm(self) -> None:
        self._deadline = time.monotonic() + self.keepalive_s * self._host.limits.keepalive_factor

    def expire(self) -> bool:
        """Called by the sweeper once the deadline passed; False while a packet's handler runs (asked again)."""
        if self._task is not None:
            return False
        self._deadline = None
        conn = self.conn
        if conn is None:
            self._log("CONNECT timeout")
            self.close()
        else:
            self._log("keepalive expired")
            self._spawn(self._await(conn.disconnect(Reason.KEEP_ALIVE_TIMEOUT)))
        return True

    # -- ending --------------------------------------------------------------------------------

    def _log(self, why: str) -> None:
        address = self.peer[0] if self.peer else "?"
        _quiet.log(log, logging.WARNING, address, "closing MQTT connection from %s: %s",
                   f"{address}:{self.peer[1] if self.peer else '?'}", why)

    def _malformed(self, exc: Malformed) -> None:
        self._log(f"malformed packet: {exc}")
        self.framer.clear()
        self._discard = True
        if self.conn is None:
            self.close()
        else:
            self._spawn(self._await(self.conn.disconnect(exc.code)))

    def _protocol_error(self, exc: ProtocolError) -> None:
        """The one place a protocol error of a registered connection becomes DISCONNECT (MQTT 5) and a close."""
        conn = self.conn
        if conn is None:
            self.close()
            return
        _quiet.log(log, logging.WARNING, self.peer[0] if self.peer else "?",
                   "closing MQTT %s connection of %r: %s (reason %#04x)", "5" if conn.version == 5 else "3.1.1",
                   conn.session.client_id, exc, exc.code)
        self.framer.clear()
        self._spawn(self._await(conn.disconnect(exc.code, linger=True)))

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._deadline = None
        self._sweeper.forget(self)
        self.framer.clear()
        if self._admitted:
            self._admitted = False
            self._gate.release()
        self._wake_drains()
        if self._lost_waiter is not None and not self._lost_waiter.done():
            self._lost_waiter.set_result(None)
        if self._task is None:
            self._end()

    def _end(self) -> None:
        """Once: the broker lets the session go (if one was registered), then the socket closes."""
        if self._ending:
            return
        self._ending = True
        self._deadline = None
        self._sweeper.forget(self)
        if self.conn is None:
            self.close()
            return
        self._spawn(self._finish(self.conn))

    async def _finish(self, conn: Connection) -> None:
        try:
            await self._host.close_session(conn)
        except Exception:
            log.debug("MQTT connection from %s: ending its session failed", self.peer, exc_info=True)
        finally:
            self._task = None
            conn.writer.flush()
            self.close()

    def close(self) -> None:
        """Stop reading and close the socket once what was written left (aborted past `_CLOSE_WAIT_S`)."""
        self._discard = True
        self.framer.clear()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.close()
        if transport.get_write_buffer_size():
            self._loop.call_later(_CLOSE_WAIT_S, transport.abort)

    def abort(self) -> None:
        self._discard = True
        if self.transport is not None:
            self.transport.abort()

    async def linger(self, seconds: float) -> None:
        """Half-close and read and drop what the client still sends, for up to `seconds` or until it closes: a
        client that has not seen our DISCONNECT yet then reads it instead of a reset."""
        transport = self.transport
        if transport is None or self._lost:
            return
        self._discard = True
        self.framer.clear()
        if self._read_paused:
            self._resume_reading()
        with contextlib.suppress(Exception):
            if transport.can_write_eof():
                transport.write_eof()
        self._lost_waiter = self._loop.create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._lost_waiter), seconds)

    # -- writing -------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            try:
                transport.write(data)
            except (OSError, RuntimeError):  # uvloop raises RuntimeError on a closed handle
                return

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drains()

    def _wake_drains(self) -> None:
        for waiter in self._drain_waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark (or the connection is gone)."""
        transport = self.transport
        if isinstance(transport, PumpedTransport):
            await transport.drain()
            return
        if self._lost:
            raise ConnectionResetError("connection lost")
        if not self._write_paused:
            return
        waiter = self._loop.create_future()
        waiters = self._drain_waiters
        if waiters is None:
            waiters = self._drain_waiters = []
        waiters.append(waiter)
        try:
            await waiter
        finally:
            waiters.remove(waiter)

    def get_peer_info(self) -> tuple[str, int] | None:
        return self.peer

    def get_ssl_info(self) -> Any:
        return self.transport.get_extra_info("ssl_object") if self.transport is not None else None

    # -- back-pressure -------------------------------------------------------------------------

    def _pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        self._read_paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
