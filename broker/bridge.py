"""Bridge mode: the same call service attached to an external broker (Mosquitto, EMQX) as an MQTT client.

`intercom-broker --external-broker mqtt://host:port` starts no embedded broker. The service subscribes
to the call topics and feeds every message to `plugins.call_router.on_publish`, exactly as the embedded
call plugin does; what it publishes goes through `BridgePublisher`, whose `publish()` is synchronous
like the embedded broker's. Identity comes from the topic only: the external broker's ACL must make
sure a client can publish on its own topics only (on the embedded broker our ACL plugin does that).
With `shared_group` set, the subscriptions are `$share/<group>/...`, so several service instances
can split the load on a clustered broker.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections import deque
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aiomqtt
from aiohttp import web
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from broker.app import build_services, require_credentials, start_http
from broker.config import ConfigError, Settings
from broker.core.group_commit import Meta
from broker.core.services import Services
from broker.core.tokens import Principal
from broker.core.topics import CALL_SERVICE_FILTERS
from plugins.call_router import on_publish

__all__ = ["Bridge", "BridgePublisher", "BridgedServer", "ExternalBroker", "parse_broker_url"]

log = logging.getLogger("intercom.bridge")

_RECONNECT_S = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class ExternalBroker:
    host: str
    port: int
    username: str | None = None
    password: str | None = None


def parse_broker_url(url: str) -> ExternalBroker:
    """`mqtt://[user[:password]@]host[:port]`; the port defaults to 1883."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ConfigError(f"--external-broker must look like mqtt://host:port, got {url!r}")
    try:
        port = parts.port or 1883
    except ValueError as exc:
        raise ConfigError(f"--external-broker has a bad port: {url!r}") from exc
    return ExternalBroker(parts.hostname, port, unquote(parts.username) if parts.username else None,
                          unquote(parts.password) if parts.password else None)


def _properties(meta: Meta | None) -> Properties | None:
    """The MQTT 5 PUBLISH properties for `meta` (the bridge's client speaks MQTT 5)."""
    if meta is None:
        return None
    props = Properties(PacketTypes.PUBLISH)
    if meta.expiry_s is not None:
        props.MessageExpiryInterval = meta.expiry_s
    if meta.correlation is not None:
        props.CorrelationData = meta.correlation
    return props


class BridgePublisher:
    """The services' `Publisher` in bridge mode: `publish()` never blocks; one task forwards in order.

    Messages wait in a bounded queue (oldest dropped first) while the external broker is unreachable.
    """

    def __init__(self, max_queued: int = 10_000) -> None:
        self.max_queued = max_queued
        self.dropped = 0
        self._queue: deque[tuple[str, bytes, int, bool, Meta | None]] = deque()
        self._ready = asyncio.Event()
        self._sending: set[asyncio.Task[None]] = set()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, meta: Meta | None = None) -> None:
        if len(self._queue) >= self.max_queued:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("bridge publish queue full (%d): dropped %d message(s) so far",
                            self.max_queued, self.dropped)
        self._queue.append((topic, payload, qos, retain, meta))
        self._ready.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def forward(self, client: aiomqtt.Client) -> None:
        """Send queued messages through `client` until cancelled (one connection's lifetime)."""
        while True:  # until cancelled
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                topic, payload, qos, retain, meta = self._queue.popleft()
                # aiomqtt hands the message to paho before its first await, so tasks keep the order
                task = asyncio.ensure_future(self._send(client, topic, payload, qos, retain, meta))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)

    async def _send(self, client: aiomqtt.Client, topic: str, payload: bytes, qos: int, retain: bool,
                    meta: Meta | None = None) -> None:
        try:
            await client.publish(topic, payload, qos=qos, retain=retain, properties=_properties(meta), timeout=30)
        except aiomqtt.MqttError as exc:
            log.warning("bridge could not publish on %s: %s", topic, exc)


class Bridge:
    """One MQTT client connection to the external broker, re-established until `run()` is cancelled."""

    def __init__(self, services: Services, publisher: BridgePublisher, target: ExternalBroker,
                 client_id: str | None = None, shared_group: str | None = None) -> None:
        self.services = services
        self.publisher = publisher
        self.target = target
        self.client_id = client_id or f"intercom-service-{secrets.token_hex(4)}"
        self.shared_group = shared_group
        self.connected = asyncio.Event()
        self.received = 0

    def filters(self) -> list[str]:
        prefix = f"$share/{self.shared_group}/" if self.shared_group else ""
        return [prefix + t for t in CALL_SERVICE_FILTERS]

    async def run(self) -> None:
        attempt = 0
        while True:  # until cancelled
            try:
                await self._session()
                attempt = 0
            except aiomqtt.MqttError as exc:
                log.warning("external broker %s:%d: %s", self.target.host, self.target.port, exc)
                attempt += 1
            self.connected.clear()
            await asyncio.sleep(_RECONNECT_S[min(attempt, len(_RECONNECT_S) - 1)])

    async def _session(self) -> None:
        t = self.target
        async with aiomqtt.Client(t.host, t.port, identifier=self.client_id, username=t.username,
                                  password=t.password, protocol=aiomqtt.ProtocolVersion.V5,
                                  max_queued_incoming_messages=100_000,
                                  # paho leaves Nagle on: every reply would wait ~40 ms for a delayed ACK
                                  socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]) as client:
            # no_local: our own replies on devices/+/calls/control do not come back to us
            await client.subscribe([(f, SubscribeOptions(qos=1, noLocal=True)) for f in self.filters()],
                                   timeout=10)
            forward = asyncio.ensure_future(self.publisher.forward(client))
            self.connected.set()
            log.info("bridged to mqtt://%s:%d as %s", t.host, t.port, self.client_id)
            try:
                async for message in client.messages:
                    self.received += 1
                    payload = message.payload
                    data = payload if isinstance(payload, bytes) else str(payload or "").encode()
                    on_publish(self.services, None, str(message.topic), data)
            finally:
                forward.cancel()
                await asyncio.gather(forward, return_exceptions=True)


class BridgedServer:
    """The REST app and the call service, with MQTT through an external broker instead of an embedded one."""

    def __init__(self, settings: Settings, url: str, shared_group: str | None = None) -> None:
        self.settings = settings
        self.target = parse_broker_url(url)
        self.shared_group = shared_group
        self.services: Services | None = None
        self.bridge: Bridge | None = None
        self.publisher = BridgePublisher()
        self._task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.http_port = 0

    @property
    def mqtt_port(self) -> int:
        return self.target.port

    async def start(self, connect_timeout: float = 10.0) -> None:
        s = self.settings
        require_credentials(s)
        self.services = build_services(s, self.publisher)
        self.services.directory.on_revoked(self._revoked)
        self.bridge = Bridge(self.services, self.publisher, self.target, shared_group=self.shared_group)
        self._task = asyncio.create_task(self.bridge.run())
        try:
            await asyncio.wait_for(self.bridge.connected.wait(), connect_timeout)
        except TimeoutError:
            log.warning("external broker mqtt://%s:%d not reachable yet; still trying",
                        self.target.host, self.target.port)
        recovered = self.services.calls.recover()
        self._runner, self.http_port = await start_http(self.services)
        log.info("intercom-broker (bridge) http://%s:%d external=mqtt://%s:%d recovered_calls=%d",
                 s.server.host, self.http_port, self.target.host, self.target.port, recovered)

    def _revoked(self, principal: Principal) -> None:
        # MQTT logins are the external broker's: our tokens do not open its sessions, so we cannot end them.
        log.warning("token of %s %s revoked: REST refuses it now; its MQTT sessions on mqtt://%s:%d are the external "
                    "broker's to end (e.g. Mosquitto dynamic security: deleteClient / setClientPassword)",
                    principal.role, principal.id, self.target.host, self.target.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.services is not None:
            self.services.calls.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.services is not None:
            self.services.store.close()
            self.services = None
