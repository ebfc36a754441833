"""Typed application state."""

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from broker.core.services import Services
from broker.web_guard import WebGuard


class Monitor(Protocol):
    """What the REST views read of the box's monitor (broker/ops/metrics.py, built by the assembly: it reads
    the engine, which the REST adapter must not import)."""

    def scrape(self) -> bytes: ...

    def problems(self) -> list[str]: ...


@dataclass(frozen=True)
class SiteScope:
    """Which site this instance serves (None: a box without `--site-id`) and its external broker (bridge mode)."""

    site_id: str | None = None
    external_broker: str | None = None  # the URL without credentials; None: the embedded broker


__all__ = ["HEALTH", "HTTP_TLS", "MONITOR", "PRINCIPAL", "SERVICES", "SITE_SCOPE", "UNBAN", "WEB_GUARD", "WS_PORT",
           "SiteScope"]

SERVICES = web.AppKey("services", Services)
# Set by the server once the broker listens; /healthz reads it.
HEALTH = web.AppKey("health", dict)

# The caller resolved by the auth middleware (None: anonymous, local-only mode).
PRINCIPAL = web.RequestKey("principal", object)

# The embedded broker's bound MQTT-over-WebSocket port, set by the server (absent: no WS listener).
WS_PORT = web.AppKey("ws_port", int)

# /metrics, /healthz and $SYS readings (broker/ops/metrics.py), set by the server (absent: an app built alone).
MONITOR = web.AppKey("monitor", Monitor)
# The REST listener's TLS context (absent: plain HTTP), kept so a reload can load a renewed certificate into it.
HTTP_TLS = web.AppKey("http_tls", ssl.SSLContext)
# Lifts an MQTT client id's flapping ban (True: it was banned), set by the embedded server (absent in bridge mode).
UNBAN: web.AppKey[Callable[[str], bool]] = web.AppKey("unban")
# The Host and Origin rules (broker/web_guard.py), shared with the MQTT WebSocket listener.
WEB_GUARD = web.AppKey("web_guard", WebGuard)
# The site this instance serves (http_api/site_scope.py); absent: a box without a site id.
SITE_SCOPE = web.AppKey("site_scope", SiteScope)
