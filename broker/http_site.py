"""The REST listener, hardened against slow and piled-up clients (see docs/security.md).

- A connection must deliver a complete request head within `limits.http_header_timeout_s` of being
  accepted or of its previous response, or it is closed: aiohttp's keep-alive timer (default: an hour)
  closes a connection still waiting for a request, so it is set to that timeout. A client sending one
  header line every few seconds is cut off like nginx's `client_header_timeout` does.
- The body deadline (`limits.http_body_timeout_s`) is `http_api.read_deadline`'s middleware.
- At most `limits.max_http_connections` are open, fitted to a quarter of `ulimit -n`
  (`broker.fd_budget.http_fd_share`; the MQTT listeners are fitted to the rest). Past it a new
  connection evicts the oldest one that is waiting for a request head (slow or idle keep-alive); if
  every connection is busy with a request, the new one is closed at once.
- Connections are accepted by `broker.accept_loop`, which survives EMFILE.
"""

from __future__ import annotations

import logging
import ssl

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from broker.accept_loop import serve
from broker.config import LimitsConfig
from broker.fd_budget import http_fd_share
from broker.limiter import LogThrottle

__all__ = ["HttpConnections", "HttpSite", "start_http"]

log = logging.getLogger("intercom.http")
_quiet = LogThrottle()


def _waiting_for_request(handler: RequestHandler) -> bool:
    """The connection has no request in hand: its request loop awaits the next request head.

    aiohttp exposes no such flag; `_waiter` is the future that loop awaits, the same test aiohttp's own
    keep-alive timer makes before closing an idle connection.
    """
    waiter = handler._waiter
    return waiter is not None and not waiter.done()


class HttpConnections:
    """Keeps the REST listener's open connections at `cap`, evicting the oldest waiting for a request."""

    def __init__(self, server: web.Server, cap: int) -> None:
        self.server = server
        self.cap = cap
        self.evicted = 0

    def make_room(self) -> bool:
        """Called after each accept: True if the new connection may stay."""
        live = [h for h in self.server.connections if h.transport is not None and not h.transport.is_closing()]
        if len(live) < self.cap:  # the new connection is not in the list yet
            return True
        for handler in live:  # oldest first
            if _waiting_for_request(handler):
                handler.force_close()
                self.evicted += 1
                _quiet.log(log, logging.WARNING, "evict", "REST connections at limits.max_http_connections (%d): "
                           "closed the oldest one waiting for a request", self.cap)
                return True
        return False


class HttpSite(web.BaseSite):
    """aiohttp's TCPSite, served by our accept loop with a connection cap."""

    __slots__ = ("_cap", "_host", "_port", "connections")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, cap: int,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._cap = cap
        self.connections: HttpConnections | None = None

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self.connections = HttpConnections(server, self._cap)
        # AcceptServer is the subset of asyncio.Server that aiohttp's site uses (broker/accept_loop.py)
        self._server = await serve(  # type: ignore[assignment]
            "REST listener", server, self._host, self._port, ssl_context=self._ssl_context,
            backlog=self._backlog, make_room=self.connections.make_room)


async def start_http(app: web.Application, host: str, port: int, limits: LimitsConfig,
                     ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, HttpSite]:
    """Set up and start the REST app on `host:port`; returns the runner (for cleanup) and the site."""
    # lingering_time: after answering a request whose body was not read (e.g. a 408), read what is left
    # for at most 1 s, not aiohttp's 10 s, before closing.
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           keepalive_timeout=limits.http_header_timeout_s, lingering_time=1.0)
    await runner.setup()
    site = HttpSite(runner, host, port, http_fd_share(limits.max_http_connections), ssl_context)
    await site.start()
    return runner, site
