"""The assembly: builds the call services once, and wires the adapters to them.

The embedded server (`broker.server`) and bridge mode (`broker.bridge`) both start here; only the
`Publisher` differs (the embedded MQTT engine, or a client of an external broker). This module and
those two are the only ones that know every layer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from broker import http_site
from broker.config import ConfigError, Settings
from broker.core.calls import CallService
from broker.core.directory import Directory
from broker.core.group_commit import Publisher
from broker.core.presence import Presence
from broker.core.services import Services
from broker.core.status import StatusService
from broker.core.store import Store
from broker.core.trtc import Trtc
from broker.db_open import StorageError
from broker.mqtt.session_persistence import SessionPersistence
from broker.ops.housekeeping import housekeeping_jobs
from broker.ops.metrics import Monitor
from broker.tls import server_context
from broker.web_guard import WebGuard
from http_api import create_app
from http_api.keys import HEALTH, HTTP_TLS, MONITOR, UNBAN, WEB_GUARD, WS_PORT, SiteScope
from plugins.acl import TopicAclPlugin
from plugins.auth import IntercomAuthPlugin
from plugins.call_plugin import CallPlugin
from plugins.persistence import PersistencePlugin

__all__ = ["PLUGINS", "bind_plugins", "build_services", "dev_secret_key", "private_data_dir", "require_credentials",
           "start_http"]

log = logging.getLogger("intercom")

# The amqtt plugins the embedded engine loads (amqtt instantiates them from these paths).
PLUGINS = tuple(f"{cls.__module__}.{cls.__qualname__}"
                for cls in (IntercomAuthPlugin, TopicAclPlugin, CallPlugin, PersistencePlugin))


def require_credentials(settings: Settings) -> None:
    if not settings.local_only and settings.admin_token is None:
        raise ConfigError(
            f"refusing to listen on {settings.server.host} without credentials: set INTERCOM_ADMIN_TOKEN "
            "(anonymous access is only allowed when every listener is on loopback)"
        )


def dev_secret_key(data_dir: Path) -> str:
    """A random TRTC key kept in the data dir, so local UserSigs stay stable across restarts."""
    path = data_dir / "trtc_dev_secret_key"
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key


# What the server keeps in the data dir (databases with their -wal/-shm and moved-aside copies, the dev key,
# snapshots); other entries an operator put there are left as they are.
_OWN = ("intercom.db", "sessions.db", "trtc_dev_secret_key", "snapshots")


def private_data_dir(data_dir: Path) -> None:
    """The data dir 0700 and the server's files in it 0600: the database holds token hashes. Tightens what an
    older release (or another umask) created; new files get these modes from the process umask (broker/cli.py)."""
    data_dir.chmod(0o700)
    for path in data_dir.iterdir():
        if path.name.startswith(_OWN) and not path.is_symlink():
            path.chmod(0o700 if path.is_dir() else 0o600)


def _trtc_key(settings: Settings) -> str:
    if settings.trtc.secret_key is not None:
        return settings.trtc.secret_key.get_secret_value()
    log.warning("INTERCOM_TRTC_SECRET_KEY is not set: using a generated dev key from %s; "
                "UserSigs are only valid locally, not with Tencent's servers", settings.server.data_dir)
    return dev_secret_key(settings.server.data_dir)


def open_store(s: Settings) -> Store:
    """intercom.db in the data dir, or the PostgreSQL database `store.url` names (docs/scale-out.md)."""
    if s.store.url is None:
        return Store(s.server.data_dir / "intercom.db", s.store.busy_timeout_ms, s.store.quick_check_on_start)
    try:
        from broker.scale.pg_store import PgStore  # psycopg: the `scale` extra, needed only here
    except ImportError as exc:
        raise ConfigError(f"store.url needs psycopg 3 ({exc}): pip install 'intercom-broker[scale]'") from exc

    return PgStore(s.store.url)


def build_services(settings: Settings, publisher: Publisher) -> Services:
    """The store, directory, TRTC, call and status services over one sqlite file in the data dir."""
    s = settings
    try:
        s.server.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        private_data_dir(s.server.data_dir)
        key = _trtc_key(s)
    except OSError as exc:
        raise StorageError(f"cannot use data dir {s.server.data_dir}: {exc}") from exc
    admin = s.admin_token.get_secret_value() if s.admin_token else None
    store = open_store(s)
    directory = Directory(store, s.auth.pbkdf2_iterations, admin)
    directory.seed_site(s.site)
    trtc = Trtc(s.trtc.sdk_app_id, key, s.trtc.expire_s)
    calls = CallService(store, directory, trtc, s.calls, publisher, site=s.site)
    return Services(s, store, directory, trtc, calls, StatusService(store, directory, publisher))


def bind_plugins(plugins: list[object], services: Services, presence: Presence,
                 persistence: SessionPersistence) -> None:
    """Give the plugins amqtt instantiated the services they adapt (amqtt builds them from class paths)."""
    for plugin in plugins:
        match plugin:
            case CallPlugin():
                plugin.bind(services)
                plugin.bind_presence(presence)
            case IntercomAuthPlugin() | TopicAclPlugin():
                plugin.bind(services)
            case PersistencePlugin():
                plugin.bind_persistence(persistence)


async def start_http(services: Services, ws_port: int | None = None,
                     broker: Any = None, guard: WebGuard | None = None,
                     scope: SiteScope | None = None) -> tuple[web.AppRunner, int]:
    """The REST app on the configured host and port; returns the runner and the bound port.

    `ws_port`: the embedded broker's MQTT-over-WebSocket port, where the console connects. `broker`: the
    embedded broker whose readings /metrics, /healthz and $SYS report (None in bridge mode). `guard`: the
    Host/Origin rules the WebSocket listener shares; it learns the bound REST port here (the console's origin).
    `scope`: bridge mode's site and external broker (REST under `/sites/{site_id}/`, the console over REST).
    """
    s = services.settings
    app = create_app(services, guard, scope)
    app.cleanup_ctx.append(_housekeeping(services))
    if ws_port is not None:
        app[WS_PORT] = ws_port
    monitor = Monitor(services, broker)
    app[MONITOR] = monitor
    monitor.start()

    async def stop_monitor(_app: web.Application) -> None:
        monitor.stop()

    app.on_cleanup.append(stop_monitor)
    if broker is not None:
        app[UNBAN] = broker.lift_ban
    http_tls = server_context(s.http.tls) if s.http.tls is not None else None
    if http_tls is not None:
        app[HTTP_TLS] = http_tls
    runner, _ = await http_site.start_http(app, s.server.host, s.server.http_port, s.limits, http_tls)
    app[HEALTH]["broker"] = True
    port = int(runner.addresses[0][1])
    app[WEB_GUARD].http_port = port
    return runner, port


def _housekeeping(services: Services) -> Callable[[web.Application], AsyncIterator[None]]:
    """Background jobs that live as long as the REST app: history retention and scheduled backups."""
    s = services.settings

    async def jobs(_: web.Application) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(job) for job in housekeeping_jobs(s)]  # sqlite or PostgreSQL alike
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    return jobs
