"""One process, one loop: the amqtt broker, the aiohttp app and the sqlite store."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from aiohttp import web

from broker.app import PLUGINS, bind_plugins, build_services, require_credentials, start_http
from broker.config import Settings
from broker.core.presence import Presence
from broker.core.services import Services
from broker.core.tokens import Principal
from broker.mqtt import amqtt_compat
from broker.mqtt.engine import IntercomBroker
from broker.mqtt.outlet import DeliveryLimits
from broker.mqtt.plugin_config import check_plugins
from broker.mqtt.quota import QuotaLimits, Quotas
from broker.mqtt.session_persistence import SessionDB, SessionPersistence
from broker.tls import server_context
from broker.web_guard import WebGuard
from http_api.keys import HTTP_TLS
from plugins.auth import owned_by

__all__ = ["IntercomServer"]

log = logging.getLogger("intercom")


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
        plugins = {**{p: {} for p in PLUGINS}, **self.settings.mqtt.plugins}  # ours first, then the integrator's
        return {"listeners": listeners, "plugins": plugins, "timeout_disconnect_delay": 0,
                "session_expiry_interval": self.settings.limits.session_expiry_s}

    async def start(self) -> None:
        s = self.settings
        require_credentials(s)
        check_plugins(s)
        amqtt_compat.install()
        broker = IntercomBroker(self.broker_config())
        broker.limits = s.limits
        broker.delivery_limits = DeliveryLimits(**s.delivery.model_dump())
        broker.web_guard = guard = WebGuard.from_settings(s)  # one Host/Origin rule for REST and WebSocket
        if s.mqtt.tls is not None:
            ctx = server_context(s.mqtt.tls)
            broker.tls_contexts = {"tls": ctx} if s.mqtt.tls.plain else {"default": ctx, "ws": ctx}
        self.services = services = build_services(s, broker)
        calls = services.calls
        self.persistence = SessionPersistence(SessionDB(s.server.data_dir / "sessions.db", s.store.busy_timeout_ms,
                                                        s.store.quick_check_on_start),
                                              s.limits.max_queued_messages, s.limits.session_expiry_s,
                                              Quotas(QuotaLimits(s.limits.max_held_bytes_per_principal,
                                                                 s.limits.max_queued_bytes_per_principal,
                                                                 s.limits.max_inflight_bytes_per_principal)))
        self.presence = Presence(calls, services.status, s.calls.party_offline_grace_s)
        calls.connected_clients = self.presence.clients
        bind_plugins(broker.plugins_manager.plugins, services, self.presence, self.persistence)
        broker._plugin_hooks()  # read the plugins' hooks now: a combination hooks.py forbids fails the start
        self.broker = broker
        services.directory.on_revoked(self._end_sessions_of)
        await broker.start()
        self.mqtt_port = broker.bound_port("default")
        self.ws_port = broker.bound_port("ws") if s.server.ws_port is not None else None
        if s.mqtt.tls is not None:
            self.mqtts_port = broker.bound_port("tls" if s.mqtt.tls.plain else "default")
        recovered = calls.recover()
        # A crash skips every disconnect: devices start offline, and parties of live calls get their grace.
        self.presence.restore_device_status()
        self.presence.arm_recovered(services.store.active_calls())

        self._runner, self.http_port = await start_http(services, ws_port=self.ws_port, broker=broker, guard=guard)
        ws = f" ws://{_bind(s.server.host, self.ws_port)}" if self.ws_port is not None else ""
        log.info("intercom-broker serving mqtt://%s%s http://%s data=%s mode=%s recovered_calls=%d",
                 _bind(s.server.host, self.mqtt_port), ws, _bind(s.server.host, self.http_port),
                 s.server.data_dir / "intercom.db", "local-only" if s.local_only else "authenticated", recovered)

    def tls_contexts(self) -> dict[str, list[ssl.SSLContext]]:
        """The TLS contexts the listeners serve with, by config section: a reload loads new certificates into them."""
        out: dict[str, list[ssl.SSLContext]] = {}
        if self.broker is not None and self.broker.tls_contexts:
            out["mqtt"] = list({id(c): c for c in self.broker.tls_contexts.values()}.values())
        if self._runner is not None and HTTP_TLS in self._runner.app:
            out["http"] = [self._runner.app[HTTP_TLS]]
        return out

    def _end_sessions_of(self, principal: Principal) -> None:
        """A token was re-issued or its holder deleted: close its MQTT sessions and drop their stored state."""
        broker, persistence = self.broker, self.persistence
        if broker is None:
            return
        ending = broker.revoke(owned_by(principal))

        def forget(task: asyncio.Task[list[str]]) -> None:
            if task.cancelled() or task.exception() is not None:
                log.error("could not end the sessions of %s %s", principal.role, principal.id,
                          exc_info=None if task.cancelled() else task.exception())
                return
            ended = task.result()
            if persistence is not None and persistence is self.persistence:
                for client_id in ended:
                    persistence.db.forget(client_id)
            if ended:
                log.info("ended %d MQTT sessions of %s %s: credentials revoked", len(ended), principal.role,
                         principal.id)

        ending.add_done_callback(forget)

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
