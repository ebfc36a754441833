"""The web console: its page, its static files (shipped inside the package) and what the page must know.

The page talks to the box only: the CSP allows this origin and the embedded broker's WebSocket
listener, nothing else. Sign-in, data and MQTT all happen in the browser with the admin token
(authenticated mode) or anonymously (local-only mode), so these views hold no secret.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from aiohttp import web

from broker.core.errors import NotFound
from http_api.envelope import ok
from http_api.keys import SERVICES, WS_PORT
from http_api.site_scope import scope_of

__all__ = ["FEATURES", "STATIC", "config", "index", "static_file"]

STATIC = Path(__file__).parent / "console" / "static"
WS_PATH = "/mqtt"  # any path reaches amqtt's WebSocket listener; MQTT.js and paho default to this one

# What the box can do beyond the seed, read by the page from /api/console/config: each turns on its part of
# the console (http_api/console/static/extensions.js). Every intercom feature is in: door unlock, do-not-disturb,
# no-answer forwarding, visitor snapshots, door/lobby device kinds, missed-call counters.
FEATURES: dict[str, bool] = {
    "door_unlock": True,
    "dnd": True,
    "forwarding": True,
    "snapshots": True,
    "device_kind": True,
    "missed_calls": True,
}

_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml",
          ".png": "image/png", ".md": "text/plain", ".txt": "text/plain"}


def _files() -> dict[str, Path]:
    """Every servable file by its URL name: only what the package ships, so no path can escape it."""
    return {p.relative_to(STATIC).as_posix(): p for p in STATIC.rglob("*") if p.is_file()}


_FILES = _files()


def _headers(request: web.Request) -> dict[str, str]:
    host = request.url.host or "localhost"
    host = f"[{host}]" if ":" in host else host
    ws = request.app.get(WS_PORT)
    sockets = f" ws://{host}:{ws} wss://{host}:{ws}" if ws else ""
    return {
        "Content-Security-Policy": (
            f"default-src 'self'; connect-src 'self'{sockets}; img-src 'self' data: blob:; style-src 'self'; "
            # MQTT.js runs its keepalive timer in a Worker made from a blob: URL
            "script-src 'self'; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


async def index(request: web.Request) -> web.FileResponse:
    """The console's single page."""
    return web.FileResponse(STATIC / "index.html", headers={**_headers(request), "Content-Type": "text/html"})


async def static_file(request: web.Request) -> web.FileResponse:
    """A script, style sheet or vendored library of the console."""
    name = request.match_info["name"]
    path = _FILES.get(name)
    if path is None:
        raise NotFound(f"no console file '{name}'")
    kind = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return web.FileResponse(path, headers={**_headers(request), "Content-Type": kind})


async def config(request: web.Request) -> web.Response:
    """What the page needs before sign-in: the mode, where the MQTT WebSocket listener is, call timers, features."""
    settings = request.app[SERVICES].settings
    scope = scope_of(request.app)
    tls = settings.mqtt.tls
    return ok({
        "mode": "local-only" if settings.local_only else "authenticated",
        # bridge mode: MQTT is the external broker's, which the browser cannot reach; the pages work over REST
        "site_id": scope.site_id,
        "bridge": scope.external_broker is not None,
        "mqtt": {
            "ws_port": request.app.get(WS_PORT),
            "ws_path": WS_PATH,
            "ws_scheme": "wss" if tls is not None and not tls.plain else "ws",
            # the admin's client id is `admin`; with suffixes allowed each tab uses its own `admin/<suffix>`
            "client_id_suffixes": settings.auth.client_id_suffixes,
        },
        "calls": {"ring_timeout_s": settings.calls.ring_timeout_s, "max_duration_s": settings.calls.max_duration_s,
                  "history_limit_max": settings.calls.history_limit_max},
        "features": FEATURES,
    })
