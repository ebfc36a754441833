"""A listening socket served by our own accept loop, which survives running out of file descriptors.

The event loops' own accept paths do not serve well there: asyncio retries an accept that failed with
EMFILE only after 1 s, logging a traceback each time, and uvloop (libuv's "EMFILE trick") accepts and at
once closes every pending connection, legitimate ones included, for as long as descriptors are short.
Here the listening socket is read by a reader callback that accepts in batches:

- EMFILE/ENFILE/ENOBUFS/ENOMEM pause accepting for `PAUSE_S` (one throttled log line); the pending
  connections wait in the kernel's backlog, and accepting resumes by itself;
- after each accept, `make_room()` (if given) frees a slot if the listener is full (e.g. by evicting an
  idle connection) or says no, and the new connection is closed at once.

Each accepted socket becomes a transport through `loop.connect_accepted_socket`, so TLS and both loops
behave as with `loop.create_server`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable

from broker.limiter import LogThrottle

__all__ = ["PAUSE_S", "AcceptServer", "serve"]

log = logging.getLogger("intercom.accept")
_quiet = LogThrottle()

PAUSE_S = 0.1
_BATCH = 32  # accepts per readiness event: other connections' reads run in between
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class AcceptServer:
    """The listening sockets of one listener; the subset of `asyncio.Server` that amqtt and aiohttp use."""

    def __init__(self, name: str, sockets: list[socket.socket], protocol_factory: Callable[[], asyncio.BaseProtocol],
                 ssl_context: ssl.SSLContext | None, ssl_handshake_timeout: float | None,
                 make_room: Callable[[], bool] | None) -> None:
        self.name = name
        self.sockets = tuple(sockets)
        self._factory = protocol_factory
        self._ssl = ssl_context
        self._handshake_timeout = ssl_handshake_timeout if ssl_context is not None else None
        self._make_room = make_room
        self._loop = asyncio.get_running_loop()
        self._serving = False
        self._resume: asyncio.TimerHandle | None = None
        self._connecting: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._serving = True
        for sock in self.sockets:
            self._loop.add_reader(sock.fileno(), self._on_readable, sock)

    def is_serving(self) -> bool:
        return self._serving

    def close(self) -> None:
        if not self._serving:
            return
        self._serving = False
        if self._resume is not None:
            self._resume.cancel()
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    async def wait_closed(self) -> None:
        if self._connecting:
            await asyncio.gather(*self._connecting, return_exceptions=True)

    def _on_readable(self, sock: socket.socket) -> None:
        for _ in range(_BATCH):
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause(f"accept failed: {exc.strerror}")
                    return
                continue  # the peer went away before we accepted (ECONNABORTED ...)
            if self._make_room is not None and not self._make_room():
                conn.close()  # refused: the reserve of descriptors covers this one for an instant
                _quiet.log(log, logging.WARNING, f"{self.name} full",
                           "%s: refused a connection from %s: every connection is busy", self.name, address[0])
                continue
            conn.setblocking(False)
            task = self._loop.create_task(self._connect(conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn, ssl=self._ssl,
                                                     ssl_handshake_timeout=self._handshake_timeout)
        except (OSError, ssl.SSLError, TimeoutError) as exc:  # a failed TLS handshake, a reset: that peer's loss
            log.debug("%s: connection not set up: %s", self.name, exc)
            conn.close()
        except Exception:  # a bug in the protocol: one throttled traceback, not an unretrieved task per connection
            _quiet.log(log, logging.ERROR, f"{self.name} set-up error", "%s: connection set-up failed", self.name,
                       exc_info=True)
            conn.close()

    def _pause(self, why: str) -> None:
        """Stop reading the listening sockets for PAUSE_S; the kernel keeps the pending connections."""
        _quiet.log(log, logging.WARNING, f"{self.name} {why}", "%s: %s; pausing accepts for %.1f s", self.name, why,
                   PAUSE_S)
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())
        self._resume = self._loop.call_later(PAUSE_S, self._restart)

    def _restart(self) -> None:
        self._resume = None
        if self._serving:
            for sock in self.sockets:
                self._loop.add_reader(sock.fileno(), self._on_readable, sock)


async def serve(name: str, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str | None, port: int, *,
                ssl_context: ssl.SSLContext | None = None, ssl_handshake_timeout: float | None = None,
                backlog: int = 128, make_room: Callable[[], bool] | None = None) -> AcceptServer:
    """Listen on every address of `host` (all interfaces if None) and serve with our accept loop."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            if port == 0 and sockets:  # port 0: every address on the port the first one got
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    server = AcceptServer(name, sockets, protocol_factory, ssl_context, ssl_handshake_timeout, make_room)
    server.start()
    return server
