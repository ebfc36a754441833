"""Settings: broker.yaml, then CLI flags, then env vars for secrets; validated by pydantic."""

from __future__ import annotations

import ipaddress
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from broker.ids import Id

__all__ = ["ConfigError", "Settings", "load_settings"]

Port = int


class ConfigError(Exception):
    """The configuration file or a flag has a bad value; the message says which."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    mqtt_port: Port = Field(1883, ge=0, le=65535)
    ws_port: Port | None = Field(8083, ge=0, le=65535)
    http_port: Port = Field(8080, ge=0, le=65535)
    data_dir: Path = Path("data")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class AuthConfig(_Strict):
    allow_anonymous_on_loopback: bool = True
    pbkdf2_iterations: int = Field(10_000, ge=1_000, le=1_000_000)
    # MQTT client ids must be `{role}-{id}`; with this on, `{role}-{id}/<anything>` too.
    client_id_suffixes: bool = True


class Rate(_Strict):
    """A token bucket: `burst` at once, refilled at `per_s` per second."""

    per_s: float = Field(gt=0, le=100_000)
    burst: int = Field(ge=1, le=1_000_000)


class FlappingConfig(_Strict):
    max_connects: int = Field(20, ge=2)
    window_s: float = Field(60.0, gt=0)
    ban_s: float = Field(300.0, ge=0)


class LimitsConfig(_Strict):
    """Broker and REST limits; see docs/security.md."""

    max_packet_bytes: int = Field(64 * 1024, ge=1024, le=256 * 1024 * 1024)
    connect_timeout_s: float = Field(10.0, gt=0, le=600)
    keepalive_factor: float = Field(1.5, ge=1.0, le=10)
    max_keepalive_s: int = Field(3600, ge=1, le=65535)
    max_connections: int = Field(10_000, ge=1)
    max_subscriptions_per_client: int = Field(32, ge=1)
    max_inflight_messages: int = Field(32, ge=1, le=65535)
    max_queued_messages: int = Field(1000, ge=1)
    session_expiry_s: int = Field(7 * 86400, ge=60)
    connect_rate: Rate = Rate(per_s=20, burst=100)
    auth_failures: Rate = Rate(per_s=0.2, burst=10)
    flapping: FlappingConfig = FlappingConfig()
    http_per_ip: Rate = Rate(per_s=50, burst=200)
    http_per_principal: Rate = Rate(per_s=20, burst=100)
    # MQTT commands per principal (unlock, dnd, calls_seen, a station's ack): each may write the database
    mqtt_commands_per_principal: Rate = Rate(per_s=5, burst=20)
    exempt_networks: list[str] = ["127.0.0.0/8", "::1/128"]
    # REST connections (broker/http_site.py): a request head must arrive within this of accepting the
    # connection or of its previous response, a request body within body_timeout_s of its head.
    http_header_timeout_s: float = Field(10.0, gt=0, le=600)
    http_body_timeout_s: float = Field(10.0, gt=0, le=600)
    # Open REST connections; past it a new one evicts the oldest waiting for a request head. Fitted to a
    # quarter of `ulimit -n` (the MQTT listeners keep the rest).
    max_http_connections: int = Field(1000, ge=1)
    # MQTT 5: how many Topic Aliases a v5 client may set per connection (CONNACK's Topic Alias
    # Maximum; 0 = none). The other v5 limits in CONNACK are the keys above: max_inflight_messages (Receive
    # Maximum), max_packet_bytes (Maximum Packet Size), max_keepalive_s (Server Keep Alive), session_expiry_s.
    topic_alias_maximum: int = Field(32, ge=0, le=65535)
    # Per principal (all its client ids `{role}-{id}/<suffix>` together; broker/mqtt/quota.py): persistent
    # sessions, and the payload bytes they hold in memory and sessions.db. Over a cap: CONNACK 3 / MQTT 5 0x97,
    # QoS 2 not held (MQTT 5 PUBREC 0x97), a message not queued, QoS>0 deliveries wait (see docs/security.md).
    max_sessions_per_principal: int = Field(8, ge=1, le=100_000)
    max_held_bytes_per_principal: int = Field(4 * 1024 * 1024, ge=64 * 1024)
    max_queued_bytes_per_principal: int = Field(16 * 1024 * 1024, ge=64 * 1024)
    max_inflight_bytes_per_principal: int = Field(16 * 1024 * 1024, ge=64 * 1024)

    @field_validator("exempt_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for net in v:
            ipaddress.ip_network(net, strict=False)
        return v


class AclRule(_Strict):
    """Topic patterns for one role or integrator; `%u` = principal id, `%c` = client id."""

    publish: list[str] = []
    subscribe: list[str] = []
    deny: list[str] = []  # refused for publish and subscribe even if allowed above (checked first)


class Integrator(_Strict):
    token_hash: str = Field(pattern=r"^\$7\$")
    acl: AclRule = AclRule()


class AclConfig(_Strict):
    # Replaces the built-in table for a role when set (keys: device, resident, admin).
    roles: dict[Literal["device", "resident", "admin"], AclRule] = {}
    integrators: dict[str, Integrator] = {}
    # Local-only mode: the rule for anonymous clients; unset = everything but `$` topics.
    anonymous: AclRule | None = None


class TlsConfig(_Strict):
    certfile: Path
    keyfile: Path
    cafile: Path | None = None
    require_client_cert: bool = False


class CallsConfig(_Strict):
    ring_timeout_s: float = Field(30.0, gt=0, le=3600)
    max_duration_s: float = Field(600.0, gt=0, le=86400)
    reject_policy: Literal["member", "household"] = "member"
    party_offline_grace_s: float = Field(15.0, ge=0, le=3600)
    history_limit_max: int = Field(500, ge=1)
    # Admission (broker/core/admission.py): past any of these a call setup gets 503 + Retry-After.
    max_setups_per_s: float = Field(2000.0, gt=0)
    setup_burst: int = Field(2000, ge=1)
    max_active_calls: int = Field(10_000, ge=1)
    max_loop_lag_ms: float = Field(500.0, gt=0)


class DoorsConfig(_Strict):
    """Door unlock (broker/core/doors.py)."""

    ack_timeout_s: float = Field(5.0, gt=0, le=60)  # no ack from the station by then: 504
    unlock_ends_call: bool = True  # a successful unlock ends the call, reason `door_opened`
    allow_unlock_without_call: bool = False  # residents may open their doors with no call ringing
    max_relay: int = Field(4, ge=1, le=64)  # relays are numbered from 1, as 2N's switches


class SnapshotsConfig(_Strict):
    """Visitor snapshots (broker/core/snapshots.py), stored under server.data_dir/snapshots."""

    max_bytes: int = Field(512 * 1024, ge=1024, le=16 * 1024 * 1024)
    retention_days: float = Field(30.0, gt=0, le=3650)
    # quotas: an upload that would go over one first deletes the oldest snapshots (the device's, then anyone's)
    device_quota_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    total_quota_bytes: int = Field(1024 * 1024 * 1024, ge=1024)
    # uploads are refused (507) while the disk holding data_dir would have less than this free after them
    min_free_bytes: int = Field(128 * 1024 * 1024, ge=0)

    @model_validator(mode="after")
    def _quotas_hold_a_snapshot(self) -> SnapshotsConfig:
        if self.device_quota_bytes < self.max_bytes:
            raise ValueError("snapshots.device_quota_bytes must be at least snapshots.max_bytes")
        if self.total_quota_bytes < self.device_quota_bytes:
            raise ValueError("snapshots.total_quota_bytes must be at least snapshots.device_quota_bytes")
        return self


class HistoryConfig(_Strict):
    """Call history and door events (broker/core/retention.py): kept forever unless retention_days is set."""

    retention_days: float | None = Field(None, gt=0, le=36500)
    status_days: float = Field(30.0, gt=0, le=36500)  # device online/battery changes (the console shows 7 days)
    prune_interval_s: float = Field(3600.0, ge=1)
    prune_batch: int = Field(500, ge=1, le=100_000)  # rows per transaction: the longest the loop waits for the lock


class BackupConfig(_Strict):
    """Scheduled backups (broker/backup.py): `intercom-broker backup` into `dir`, keeping the newest `keep`."""

    dir: Path | None = None
    schedule: Literal["hourly", "daily", "weekly"] | None = None
    keep: int = Field(7, ge=1, le=1000)

    @model_validator(mode="after")
    def _dir_for_schedule(self) -> BackupConfig:
        if self.schedule is not None and self.dir is None:
            raise ValueError("dir: required when schedule is set")
        return self


class TrtcConfig(_Strict):
    sdk_app_id: int = Field(1400000001, ge=1)
    secret_key: SecretStr | None = None
    expire_s: int = Field(86400, ge=60, le=180 * 86400)


class MqttTlsConfig(TlsConfig):
    port: Port = Field(8883, ge=0, le=65535)
    plain: bool = True  # keep the plain TCP/WS listeners next to the TLS one


_CLASS_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


class MqttConfig(_Strict):
    max_payload_bytes: int = Field(64 * 1024, ge=256, le=16 * 1024 * 1024)
    tls: MqttTlsConfig | None = None
    # Extra amqtt plugins, in amqtt's own format: {class path: its Config fields}; loaded after ours, they get
    # amqtt's events for MQTT 3.1.1 and 5 clients alike (docs/architecture.md "amqtt plugins").
    plugins: dict[str, dict[str, Any] | None] = {}

    @field_validator("plugins")
    @classmethod
    def _plugins_shape(cls, v: dict[str, dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
        """The shape only: that each names an amqtt plugin that loads is the engine's to check
        (broker/mqtt/plugin_config.py, at start and on reload), as amqtt is the engine's library."""
        for path in v:
            if not _CLASS_PATH.fullmatch(path):
                raise ValueError(f"{path!r} is not a class path (module.Class)")
            if path.startswith("plugins."):
                raise ValueError(f"{path!r}: the broker's own plugins (plugins.*) are loaded already")
        return {path: options or {} for path, options in v.items()}


class DeliveryConfig(_Strict):
    """Outgoing messages per MQTT connection (broker/mqtt/outlet.py): the QoS 1 window and the backlog bound."""

    max_inflight: int = Field(100, ge=1, le=65535)
    max_queued: int = Field(10_000, ge=1, le=1_000_000)
    write_buffer_bytes: int = Field(256 * 1024, ge=1024, le=64 * 1024 * 1024)
    # the backlog's bound in payload bytes (past it, as past max_queued: the oldest QoS 0 is dropped)
    max_queued_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024, le=1024 * 1024 * 1024)
    # a backlog at its bound this long (a subscriber that stopped reading) closes the connection
    max_full_s: float = Field(5.0, gt=0, le=3600)


class HttpConfig(_Strict):
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    tls: TlsConfig | None = None
    # CORS allow-list (http_api/cors.py): exact origins such as "https://console.example", or "*".
    cors_origins: list[str] = []
    # Names and addresses a request's Host may name (broker/web_guard.py), any port; server.host and the
    # address a connection arrived on are allowed too. "*" = any (behind a proxy that checks Host).
    allowed_hosts: list[str] = ["localhost", "127.0.0.1", "::1"]

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        out = []
        for host in v:
            name = host.strip().lower().removeprefix("[").removesuffix("]")
            if name != "*" and not (_is_ip(name) or re.fullmatch(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?\.?", name)):
                raise ValueError(f"an allowed host is a host name, an IP address or '*', got {host!r}")
            out.append(name)
        return out

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for origin in v:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin.rstrip("/")):
                raise ValueError(f"a CORS origin is 'scheme://host[:port]' or '*', got {origin!r}")
        return [o.rstrip("/") for o in v]


class StoreConfig(_Strict):
    """The sqlite files (intercom.db, sessions.db); see docs/reliability.md."""

    # How long one sqlite call waits, on the event loop, for a lock another process holds. After a write
    # fails on a lock, writes fail at once (REST 503 + Retry-After) until a backing-off probe succeeds.
    busy_timeout_ms: int = Field(100, ge=0, le=10_000)
    # PRAGMA quick_check on both files at start (reads every page: seconds for a very large history).
    quick_check_on_start: bool = True
    # postgresql://user@host:port/db: the call store (directory, calls, history) in PostgreSQL instead of
    # intercom.db, shared by several call-service instances (docs/scale-out.md). The password goes in
    # PGPASSWORD or ~/.pgpass, never here. sessions.db stays sqlite.
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(f"store.url must be postgresql://user@host:port/database, got scheme {parts.scheme!r}")
        if parts.password:
            raise ValueError("store.url must not hold the password: put it in PGPASSWORD or ~/.pgpass")
        return v


class SiteResident(_Strict):
    resident_id: Id
    name: str | None = None


class SiteDevice(_Strict):
    device_id: Id
    name: str | None = None
    # door: a unit's own door station, calls its household only; lobby: a building entrance or gate,
    # calls any household of the site, or only those in `households` (broker/core/device_kinds.py)
    # not set (the default): calls any household of the site, as the seed's `household_number` says
    kind: Literal["door", "lobby"] | None = None
    households: list[Id] | None = None

    # emergency devices: an emergency device (fire panel, guard station) rings residents in do-not-disturb too
    emergency: bool = False

    @model_validator(mode="after")
    def _households_for_lobbies(self) -> SiteDevice:
        if self.households is not None and self.kind != "lobby":
            raise ValueError("households: only a lobby panel (kind: lobby) has a households list")
        return self


class SiteHousehold(_Strict):
    household_number: Id
    name: str | None = None
    residents: list[SiteResident] = []
    devices: list[SiteDevice] = []
    # no-answer forwarding for this household (null: the site's); applied when the household
    # has no forwarding set through the REST API yet
    forward_to: list[Id] | None = None
    forward_after_s: float | None = Field(None, gt=0, le=3600)


class SiteConfig(_Strict):
    households: list[SiteHousehold] = []
    # do-not-disturb: the site's time zone for do-not-disturb schedules (IANA name); null = the machine's own
    timezone: str | None = None
    # no-answer forwarding: residents (a concierge, a guard) rung when nobody answers within
    # forward_after_s (null: calls.ring_timeout_s); a household's own setting replaces it
    forward_to: list[Id] = []
    forward_after_s: float | None = Field(None, gt=0, le=3600)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {v!r} (an IANA name such as 'Asia/Shanghai')") from exc
        return v


class LoggingConfig(_Strict):
    """Log output (broker/ops/logs.py): text or one JSON object per line, on stderr and optionally a file."""

    format: Literal["text", "json"] = "text"
    file: Path | None = None  # also write to this file, rotated by size
    max_bytes: int = Field(10 * 1024 * 1024, ge=4096)  # rotate the file past this size...
    backups: int = Field(5, ge=0, le=1000)  # ...keeping this many old files (name.1 .. name.N)


class MetricsConfig(_Strict):
    """`/metrics` and `$SYS` (broker/ops/metrics.py)."""

    # A bearer token for /metrics besides the admin token (from INTERCOM_METRICS_TOKEN; a scraper needs no admin).
    token: SecretStr | None = None
    sys_interval_s: float = Field(10.0, ge=0, le=3600)  # $SYS/broker/... published this often; 0 = never
    max_loop_lag_ms: float = Field(1000.0, gt=0)  # /healthz says unhealthy while the loop runs this late


class Settings(_Strict):
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    calls: CallsConfig = CallsConfig()
    trtc: TrtcConfig = TrtcConfig()
    mqtt: MqttConfig = MqttConfig()
    http: HttpConfig = HttpConfig()
    site: SiteConfig = SiteConfig()
    limits: LimitsConfig = LimitsConfig()
    acl: AclConfig = AclConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    store: StoreConfig = StoreConfig()
    doors: DoorsConfig = DoorsConfig()
    snapshots: SnapshotsConfig = SnapshotsConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    history: HistoryConfig = HistoryConfig()
    backup: BackupConfig = BackupConfig()
    admin_token: SecretStr | None = None

    @field_validator("server")
    @classmethod
    def _host_is_an_address(cls, v: ServerConfig) -> ServerConfig:
        if v.host not in ("localhost", "") and not _is_ip(v.host):
            raise ValueError(f"server.host must be an IP address or 'localhost', got {v.host!r}")
        return v

    @property
    def loopback_only(self) -> bool:
        return _loopback(self.server.host)

    @property
    def local_only(self) -> bool:
        """Mosquitto 2.x's rule: anonymous access only while nothing listens beyond loopback."""
        return self.loopback_only and self.auth.allow_anonymous_on_loopback


@lru_cache(maxsize=8)
def _loopback(host: str) -> bool:
    """Whether `host` is a loopback name or address (asked on every CONNECT: parsed once)."""
    return host == "localhost" or (_is_ip(host) and ipaddress.ip_address(host).is_loopback)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


_ENV = {
    "INTERCOM_TRTC_SDK_APP_ID": ("trtc", "sdk_app_id"),
    "INTERCOM_TRTC_SECRET_KEY": ("trtc", "secret_key"),
    "INTERCOM_ADMIN_TOKEN": (None, "admin_token"),
    "INTERCOM_METRICS_TOKEN": ("metrics", "token"),
}


def load_settings(
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Settings:
    """Read the YAML file (if any), apply `server.*` overrides and env secrets, validate."""
    raw: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {config_file}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{config_file}: top level must be a mapping")
        raw = loaded or {}
    server = dict(raw.get("server") or {})
    server.update({k: v for k, v in (overrides or {}).items() if v is not None})
    raw["server"] = server
    for var, (section, key) in _ENV.items():
        value = (env if env is not None else os.environ).get(var)
        if value:
            if section is None:
                raw[key] = value
            else:
                raw.setdefault(section, {})
                raw[section] = {**(raw[section] or {}), key: value}
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        where = config_file or "defaults"
        raise ConfigError(f"invalid configuration ({where}):\n" + "\n".join(lines)) from exc
