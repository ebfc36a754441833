"""Bridge mode: the same call service attached to an external broker (Mosquitto, EMQX) as an MQTT client.

`intercom-broker --external-broker mqtt[s]://host:port` starts no embedded broker. The service subscribes
to the call topics and feeds every message to `plugins.call_router.on_publish`, exactly as the embedded
call plugin does; what it publishes goes through `BridgePublisher`, whose `publish()` is synchronous
like the embedded broker's. Identity comes from the topic only: the external broker's ACL must make
sure a client can publish on its own topics only (on the embedded broker our ACL plugin does that).
With `shared_group` set, the subscriptions are `$share/<group>/...`, so several service instances
can split the load on a clustered broker. With `site_id` set, every topic lives under the mount point
`sites/{site_id}/` on the external broker (the service subscribes only there and strips the prefix), so several
sites share one broker without cross-talk. See docs/scale-out.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import secrets
import socket
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
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
from broker.ops.metrics import Monitor
from http_api.keys import MONITOR, SiteScope
from plugins.call_router import on_publish

if TYPE_CHECKING:
    from broker.scale.lease import SiteLease

__all__ = ["Bridge", "BridgePublisher", "BridgedServer", "ExternalBroker", "backoff_delay", "parse_broker_url",
           "site_prefix"]

log = logging.getLogger("intercom.bridge")

# Reconnect back-off: doubles from the first delay up to the cap, each delay jittered down by up to half so
# that N service instances cut off by the same broker restart do not come back in lock-step.
# `auto`: MQTT 5 (no_local, message expiry, $share groups); a broker that drops an MQTT 5 CONNECT (RabbitMQ 3.x)
# is tried with 3.1.1 next, and whichever connects first is kept.
PROTOCOLS = {"5": aiomqtt.ProtocolVersion.V5, "3.1.1": aiomqtt.ProtocolVersion.V311}
BACKOFF_FIRST_S = 0.2
BACKOFF_CAP_S = 30.0
PASSWORD_ENV = "INTERCOM_BROKER_PASSWORD"  # the external broker password when the URL names only the user
SITE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# With leases (PostgreSQL store): how long the broker keeps the site's session while no instance is connected.
# Long enough for any take-over; short enough that requests of a site left down are not served much later.
SESSION_EXPIRY_S = 120


def backoff_delay(attempt: int, rng: random.Random | None = None) -> float:
    """The wait before reconnect attempt `attempt` (1 = the first retry after a failure)."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** max(0, min(attempt - 1, 20)))
    return float(ceiling * (0.5 + 0.5 * (rng or random).random()))


def site_prefix(site_id: str | None) -> str:
    """The mount point `sites/{site_id}/` ('' without a site id); refuses ids that are not a plain topic level."""
    if site_id is None:
        return ""
    if not SITE_ID.fullmatch(site_id):
        raise ConfigError(f"--site-id must be 1-64 letters, digits, '-' or '_', got {site_id!r}")
    return f"sites/{site_id}/"


@dataclass(frozen=True)
class ExternalBroker:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False  # mqtts://: the broker's certificate is verified (system CAs, or `ca_file`)
    ca_file: Path | None = None
    cert_file: Path | None = None  # a client certificate, for brokers that require one (require_certificate)
    key_file: Path | None = None
    others: tuple[tuple[str, int], ...] = ()  # more nodes of the broker's cluster, tried in turn on reconnect

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(self.host, self.port), *self.others]

    @property
    def url(self) -> str:
        """For logs: never the credentials."""
        return f"{'mqtts' if self.tls else 'mqtt'}://" + ",".join(f"{h}:{p}" for h, p in self.addresses)

    def url_of(self, address: tuple[str, int]) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{address[0]}:{address[1]}"

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file is not None:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def _host_port(url: str, shown: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"--external-broker must look like mqtt://host:port or mqtts://host:port, got {shown!r}")
    try:
        return parts.hostname, parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError as exc:
        raise ConfigError(f"--external-broker has a bad port: {shown!r}") from exc


def parse_broker_url(url: str, ca_file: Path | None = None, cert_file: Path | None = None,
                     key_file: Path | None = None) -> ExternalBroker:
    """`mqtt[s]://[user[:password]@]host[:port][,host2[:port2]...]`; the port defaults to 1883 (mqtts: 8883). A user
    without a password in the URL takes it from $INTERCOM_BROKER_PASSWORD. Several hosts: the nodes of one broker
    cluster (same credentials and TLS), tried in turn on reconnect.

    The TLS files are checked here (readable, a matching key) so a bad path is a start-up error, not a retry loop.
    """
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    first, *more = hosts.split(",")
    head = f"{parts.scheme}://{userinfo}{at}{first}"
    host, port = _host_port(head, url)
    parts = urlsplit(head)
    tls = parts.scheme == "mqtts"
    others = tuple(_host_port(f"{parts.scheme}://{h}", url) for h in more)
    if not tls and (ca_file or cert_file or key_file):
        raise ConfigError("--broker-ca/--broker-cert/--broker-key need an mqtts:// --external-broker")
    if key_file is not None and cert_file is None:
        raise ConfigError("--broker-key needs --broker-cert")
    password = unquote(parts.password) if parts.password else None
    if parts.username and password is None:
        # kept out of the command line (which every local user can read in /proc): the environment instead
        password = os.environ.get(PASSWORD_ENV) or None
    target = ExternalBroker(host, port, unquote(parts.username) if parts.username else None,
                            password, tls, ca_file, cert_file, key_file, others)
    try:
        target.tls_context()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"external broker TLS files: {exc}") from exc
    return target


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

    def __init__(self, max_queued: int = 10_000, prefix: str = "") -> None:
        self.max_queued = max_queued
        self.prefix = prefix  # the site's mount point, put before every topic the services publish on
        self.v5 = True  # False on an MQTT 3.1.1 link: no PUBLISH properties
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
        self._queue.append((self.prefix + topic, payload, qos, retain, meta))
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
            props = _properties(meta) if self.v5 else None
            await client.publish(topic, payload, qos=qos, retain=retain, properties=props, timeout=30)
        except aiomqtt.MqttError as exc:
            log.warning("bridge could not publish on %s: %s", topic, exc)


class Bridge:
    """One MQTT client connection to the external broker, re-established until `run()` is cancelled."""

    def __init__(self, services: Services, publisher: BridgePublisher, target: ExternalBroker,
                 client_id: str | None = None, shared_group: str | None = None, site_id: str | None = None,
                 protocol: str = "auto") -> None:
        if protocol not in ("auto", *PROTOCOLS):
            raise ConfigError(f"--broker-protocol must be auto, 5 or 3.1.1, got {protocol!r}")
        self.services = services
        self.protocol = protocol  # auto until a connection succeeds, then the version that did
        self.publisher = publisher
        self.target = target
        self.client_id = client_id or f"intercom-service-{site_id + '-' if site_id else ''}{secrets.token_hex(4)}"
        self.shared_group = shared_group
        self.prefix = site_prefix(site_id)
        # keep the session this long after a disconnect (MQTT 5: clean_start off + session expiry; 3.1.1:
        # clean_session off, bounded broker-side), so the broker queues the site's requests while no instance is
        # connected (a take-over) and hands them to the next one with this id
        self.session_expiry_s: int | None = None
        publisher.prefix = self.prefix
        self.connected = asyncio.Event()
        self.received = 0
        self.attempts = 0  # failed connects since the link was last up
        self.last_error: str | None = None  # why the link is down (for /healthz), None while it is up
        self.next_delay_s = 0.0
        self.address = 0  # which of the target's addresses (cluster nodes) the next connect tries

    def filters(self) -> list[str]:
        share = f"$share/{self.shared_group}/" if self.shared_group else ""
        return [share + self.prefix + t for t in CALL_SERVICE_FILTERS]

    def down_reason(self) -> str | None:
        """Why the link to the external broker is down (None: it is up); /healthz reports it."""
        if self.connected.is_set():
            return None
        why = self.last_error or "not connected yet"
        return f"external broker {self.target.url} unreachable ({why}); reconnect attempt {self.attempts + 1} " \
               f"in {self.next_delay_s:.1f} s"

    def _version(self) -> aiomqtt.ProtocolVersion:
        if self.protocol in PROTOCOLS:
            return PROTOCOLS[self.protocol]
        if self.shared_group:
            return PROTOCOLS["5"]  # $share groups need MQTT 5
        return PROTOCOLS["3.1.1"] if self.attempts % 2 else PROTOCOLS["5"]  # auto: alternate until one connects

    async def run(self) -> None:
        while True:  # until cancelled
            try:
                await self._session()
                self.last_error = "connection closed"
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc) or type(exc).__name__
                log.warning("external broker %s: %s", self.target.url, self.last_error)
            except (OSError, ssl.SSLError) as exc:  # a TLS handshake refused, a certificate file gone
                self.last_error = str(exc) or type(exc).__name__
                log.warning("external broker %s: %s", self.target.url, self.last_error)
            if self.connected.is_set():
                self.attempts = 0  # the link was up: start the back-off from the beginning
            self.connected.clear()
            self.attempts += 1
            if self.protocol in PROTOCOLS or self.attempts % 2 == 0:  # auto: both versions on a node, then the next
                self.address = (self.address + 1) % len(self.target.addresses)
            self.next_delay_s = backoff_delay(self.attempts)
            await asyncio.sleep(self.next_delay_s)

    async def _session(self) -> None:
        t = self.target
        version = self._version()
        v5 = version is aiomqtt.ProtocolVersion.V5
        if not v5 and self.shared_group:
            # without $share every instance would get every request: calls started twice
            raise aiomqtt.MqttError("--shared-group needs MQTT 5 shared subscriptions, which this broker does not "
                                    "speak; run one instance per site instead (docs/scale-out.md)")
        # auto's MQTT 5 probe: RabbitMQ 3.x neither answers nor closes, so give up on it sooner than the 10 s
        probe_s = 3.0 if self.protocol == "auto" and v5 and not self.shared_group else 10.0
        session: dict[str, Any] = {}
        if self.session_expiry_s is not None and v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry_s
            session = {"clean_start": False, "properties": props}
        elif self.session_expiry_s is not None:
            # 3.1.1 has no session expiry: a persistent session (clean_session off), which the broker bounds to
            # SESSION_EXPIRY_S (the generated RabbitMQ policy; Mosquitto's persistent_client_expiration)
            session = {"clean_session": False}
        host, port = t.addresses[self.address % len(t.addresses)]
        client = aiomqtt.Client(host, port, identifier=self.client_id, username=t.username,
                                password=t.password, protocol=version, timeout=probe_s,
                                tls_context=t.tls_context(),
                                max_queued_incoming_messages=100_000,
                                # paho leaves Nagle on: every reply would wait ~40 ms for a delayed ACK
                                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)], **session)
        # A QoS 1 message is acknowledged once what it caused is committed, as the embedded engine's PUBACK is:
        # an instance killed in between leaves it in the site's session for the next holder. aiomqtt has no
        # option for it, so paho's own switch, set before CONNECT (a resumed session redelivers at once).
        ack = client._client.ack
        client._client.manual_ack_set(True)
        async with client:
            if v5:  # no_local: our own replies on devices/+/calls/control do not come back to us
                await client.subscribe([(f, SubscribeOptions(qos=1, noLocal=True)) for f in self.filters()],
                                       timeout=10)
            else:  # 3.1.1: they do, and the router drops them (origin "server", no client id)
                await client.subscribe([(f, 1) for f in self.filters()], timeout=10)
            self.publisher.v5 = v5
            if self.protocol == "auto":
                self.protocol = "5" if v5 else "3.1.1"
                log.info("external broker %s speaks MQTT %s: kept", t.url, self.protocol)
            forward = asyncio.ensure_future(self.publisher.forward(client))
            self.connected.set()
            self.last_error = None
            log.info("bridged to %s as %s%s", t.url_of((host, port)), self.client_id,
                     f" (site {self.prefix})" if self.prefix else "")
            cut = len(self.prefix)
            try:
                async for message in client.messages:
                    topic = str(message.topic)
                    if topic.startswith(self.prefix):  # else not this site's (a broker that over-delivers)
                        self.received += 1
                        payload = message.payload
                        data = payload if isinstance(payload, bytes) else str(payload or "").encode()
                        on_publish(self.services, None, topic[cut:], data)
                    if message.qos:
                        self.services.calls.after_commit(_acknowledge(ack, message.mid, message.qos))
            finally:
                forward.cancel()
                await asyncio.gather(forward, return_exceptions=True)


def _acknowledge(ack: Callable[[int, int], object], mid: int, qos: int) -> Callable[[], None]:
    def send() -> None:
        ack(mid, qos)  # on a link gone meanwhile paho does nothing: the broker redelivers to the next session
    return send


class BridgedServer:
    """The REST app and the call service, with MQTT through an external broker instead of an embedded one."""

    def __init__(self, settings: Settings, url: str | ExternalBroker, shared_group: str | None = None,
                 site_id: str | None = None, client_id: str | None = None, protocol: str = "auto",
                 lease_ttl_s: float = 6.0) -> None:
        self.settings = settings
        if not 0.5 <= lease_ttl_s <= 300:
            raise ConfigError(f"--lease-ttl must be 0.5-300 seconds, got {lease_ttl_s}")
        # With a PostgreSQL store several instances may serve one site: only the lease holder does (the others
        # wait in start() as standbys). `lost`: why this instance stopped serving; `on_lost` ends the process.
        self.lease_ttl_s = lease_ttl_s
        self.lease: SiteLease | None = None
        self.lost: str | None = None
        self.on_lost: Callable[[], None] | None = None
        self.target = parse_broker_url(url) if isinstance(url, str) else url
        self.shared_group = shared_group
        self.site_id = site_id
        self.client_id = client_id
        if protocol not in ("auto", *PROTOCOLS):
            raise ConfigError(f"--broker-protocol must be auto, 5 or 3.1.1, got {protocol!r}")
        self.protocol = protocol
        self.services: Services | None = None
        self.bridge: Bridge | None = None
        # prefixed from the start: the services may publish (retained state) while they are being built
        self.publisher = BridgePublisher(prefix=site_prefix(site_id))  # a bad site id is a start-up error
        self._task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.http_port = 0

    @property
    def mqtt_port(self) -> int:
        return self.target.port

    async def start(self, connect_timeout: float = 10.0) -> None:
        s = self.settings
        require_credentials(s)
        if s.store.url is not None:
            from broker.scale.lease import SiteLease  # psycopg: the scale extra, as the store itself

            self.lease = SiteLease(s.store.url, self.site_id or "", self.lease_ttl_s)
            self.lease.bind()  # StorageError: the database is another site's
            await self.lease.acquire()  # a standby until the site's lease is ours; then start as a restart does
        self.services = build_services(s, self.publisher)
        self.services.directory.on_revoked(self._revoked)
        client_id = self.client_id
        if self.lease is not None and client_id is None:  # every instance of the site: one session, in turn
            client_id = f"intercom-service-{self.site_id or 'default'}"
        self.bridge = Bridge(self.services, self.publisher, self.target, client_id=client_id,
                             shared_group=self.shared_group, site_id=self.site_id, protocol=self.protocol)
        recovered = 0
        if self.lease is not None:
            # The site's session may hold what was published during the take-over: the live calls are in memory
            # before the link hands it over (what recover() publishes waits in the publisher's queue meanwhile).
            self.bridge.session_expiry_s = SESSION_EXPIRY_S
            recovered = self.services.calls.recover()
        self._task = asyncio.create_task(self.bridge.run())
        try:
            await asyncio.wait_for(self.bridge.connected.wait(), connect_timeout)
        except TimeoutError:
            log.warning("external broker %s not reachable yet; still trying", self.target.url)
        if self.lease is None:
            recovered = self.services.calls.recover()
        # the console and REST scoped by site (`/sites/{site_id}/…`), told that MQTT is not the browser's here
        self._runner, self.http_port = await start_http(self.services, scope=SiteScope(self.site_id, self.target.url))
        monitor = self._runner.app[MONITOR]
        if isinstance(monitor, Monitor):
            monitor.checks.append(self.bridge.down_reason)  # /healthz: 503 while the link is down
        if self.lease is not None:
            self.lease.keep(self._lease_lost)
        log.info("intercom-broker (bridge) http://%s:%d external=%s site=%s recovered_calls=%d",
                 s.server.host, self.http_port, self.target.url, self.site_id or "-", recovered)

    def _lease_lost(self, reason: str) -> None:
        """Another instance may serve the site now: stop serving it at once (no subscriptions, no timers)."""
        log.critical("%s: this instance stops serving the site; restart it to become a standby", reason)
        self.lost = reason
        if self._task is not None:
            self._task.cancel()  # the MQTT link: no more requests taken, nothing more published
        if self.services is not None:
            self.services.calls.close()
        if self.on_lost is not None:
            self.on_lost()

    def _revoked(self, principal: Principal) -> None:
        # MQTT logins are the external broker's: our tokens do not open its sessions, so we cannot end them.
        log.warning("token of %s %s revoked: REST refuses it now; its MQTT sessions on %s are the external "
                    "broker's to end (e.g. Mosquitto dynamic security: deleteClient / setClientPassword)",
                    principal.role, principal.id, self.target.url)

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
        if self.lease is not None:
            await self.lease.release()  # after the last write: the next holder starts from all of it
            self.lease = None
