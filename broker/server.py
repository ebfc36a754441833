"""One process, one loop: the amqtt broker, the aiohttp app and the sqlite store."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from aiohttp import web

from broker.config import ConfigError, Settings
from broker.core.calls import CallService
from broker.core.directory import Directory
from broker.core.presence import Presence
from broker.core.services import Services
from broker.core.status import StatusService
from broker.core.store import Store
from broker.core.trtc import Trtc
from broker.mqtt.engine import IntercomBroker
from broker.mqtt.outlet import DeliveryLimits
from broker.mqtt.session_persistence import SessionDB, SessionPersistence
from broker.tls import server_context
from http_api import create_app
from http_api.keys import HEALTH

__all__ = ["IntercomServer"]

log = logging.getLogger("intercom")

PLUGINS = ("plugins.auth.IntercomAuthPlugin", "plugins.acl.TopicAclPlugin", "plugins.call_plugin.CallPlugin",
           "plugins.persistence.PersistencePlugin")


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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


class IntercomServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.broker: IntercomBroker | None = None
        self.services: Services | None = None
        self.presence: Presence | None = None
        self.persistence: SessionPersistence | None = None
        self._runner: web.AppRunner | None = None
        self.mqtt_port = 0
        self.ws_port: int | None = None
        self.mqtts_port: int | None = None
        self.http_port = 0

    def broker_config(self) -> dict[str, Any]:
        s = self.settings.server
        listeners: dict[str, Any] = {"default": {"type": "tcp", "bind": _bind(s.host, s.mqtt_port)}}
        if s.ws_port is not None:
            listeners["ws"] = {"type": "ws", "bind": _bind(s.host, s.ws_port)}
        tls = self.settings.mqtt.tls
        if tls is not None:
            listeners["tls" if tls.plain else "default"] = {"type": "tcp", "bind": _bind(s.host, tls.port)}
        return {"listeners": listeners, "plugins": {p: {} for p in PLUGINS}, "timeout_disconnect_delay": 0,
                "session_expiry_interval": self.settings.limits.session_expiry_s}

    async def start(self) -> None:
        s = self.settings
        if not s.local_only and s.admin_token is None:
            raise ConfigError(
                f"refusing to listen on {s.server.host} without credentials: set INTERCOM_ADMIN_TOKEN "
                "(anonymous access is only allowed when every listener is on loopback)"
            )
        data_dir = s.server.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        if s.trtc.secret_key is None:
            key = dev_secret_key(data_dir)
            log.warning("INTERCOM_TRTC_SECRET_KEY is not set: using a generated dev key from %s; "
                        "UserSigs are only valid locally, not with Tencent's servers", data_dir)
        else:
            key = s.trtc.secret_key.get_secret_value()
        admin = s.admin_token.get_secret_value() if s.admin_token else None

        store = Store(data_dir / "intercom.db")
        directory = Directory(store, s.auth.pbkdf2_iterations, admin)
        directory.seed_site(s.site)
        broker = IntercomBroker(self.broker_config())
        broker.limits = s.limits
        broker.delivery_limits = DeliveryLimits(**s.delivery.model_dump())
        if s.mqtt.tls is not None:
            ctx = server_context(s.mqtt.tls)
            broker.tls_contexts = {"tls": ctx} if s.mqtt.tls.plain else {"default": ctx, "ws": ctx}
        trtc = Trtc(s.trtc.sdk_app_id, key, s.trtc.expire_s)
        calls = CallService(store, directory, trtc, s.calls, broker, site=s.site)
        self.services = Services(s, store, directory, trtc, calls, StatusService(store, directory, broker))
        limits = getattr(s, "limits", None)
        self.persistence = SessionPersistence(SessionDB(data_dir / "sessions.db"),
                                              getattr(limits, "max_queued_messages", 1000),
                                              getattr(limits, "session_expiry_s", 7 * 86400))
        self.presence = Presence(calls, self.services.status, s.calls.party_offline_grace_s)
        for plugin in broker.plugins_manager.plugins:
            if hasattr(plugin, "bind"):
                plugin.bind(self.services)
            if hasattr(plugin, "bind_presence"):
                plugin.bind_presence(self.presence)
            if hasattr(plugin, "bind_persistence"):
                plugin.bind_persistence(self.persistence)
        self.broker = broker
        await broker.start()
        self.mqtt_port = broker.bound_port("default")
        self.ws_port = broker.bound_port("ws") if s.server.ws_port is not None else None
        if s.mqtt.tls is not None:
            self.mqtts_port = broker.bound_port("tls" if s.mqtt.tls.plain else "default")
        recovered = calls.recover()
        # A crash skips every disconnect: devices start offline, and parties of live calls get their grace.
        self.presence.restore_device_status()
        self.presence.arm_recovered(store.active_calls())

        app = create_app(self.services)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        http_tls = server_context(s.http.tls) if s.http.tls is not None else None
        site = web.TCPSite(self._runner, s.server.host, s.server.http_port, ssl_context=http_tls)
        await site.start()
        self.http_port = int(self._runner.addresses[0][1])
        app[HEALTH]["broker"] = True
        ws = f" ws://{_bind(s.server.host, self.ws_port)}" if self.ws_port is not None else ""
        log.info("intercom-broker serving mqtt://%s%s http://%s data=%s mode=%s recovered_calls=%d",
                 _bind(s.server.host, self.mqtt_port), ws, _bind(s.server.host, self.http_port),
                 data_dir / "intercom.db", "local-only" if s.local_only else "authenticated", recovered)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.presence is not None:
            self.presence.close()
        if self.services is not None:
            self.services.calls.close()
        if self.broker is not None:
            try:
                await asyncio.wait_for(self.broker.shutdown(), timeout=4)
            except (TimeoutError, Exception):
                log.exception("broker shutdown did not finish cleanly")
            self.broker = None
        if self.persistence is not None:
            self.persistence.close()
            self.persistence = None
        if self.services is not None:
            self.services.store.close()
            self.services = None
