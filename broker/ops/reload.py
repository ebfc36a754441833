"""SIGHUP: re-read broker.yaml and apply what can change while the box runs; log what needs a restart.

Applied live: call timers and admission (for calls set up from now on), door and snapshot settings, the ACL
(roles, integrators, anonymous), the log level, CORS origins, the site directory (new households, residents,
devices; declared kinds and flags), site-wide forwarding, per-connection limits and delivery bounds (for
connections made from now on), and TLS certificates and keys (for handshakes from now on). Everything else
(listeners, data dir, store, TRTC, secrets, log output, ...) keeps its running value until a restart, and the
log says which keys those are. A file that does not load or validate is refused with one line and nothing
changes.
"""

from __future__ import annotations

import copy
import logging
import ssl
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from broker.config import ConfigError, Settings
from broker.core.admission import CallAdmission
from broker.core.errors import DomainError
from broker.core.presence import Presence
from broker.core.services import Services
from broker.mqtt.outlet import DeliveryLimits
from broker.ops.logs import set_level
from broker.tls import server_context

__all__ = ["LIVE_KEYS", "Reloader", "changed_keys"]

log = logging.getLogger("intercom")

# Applied on reload: exact keys, or every key under a prefix ending in ".".
LIVE_KEYS = (
    "server.log_level", "calls.", "doors.", "snapshots.", "acl.", "http.cors_origins", "site.households",
    "site.forward_to", "site.forward_after_s", "mqtt.max_payload_bytes", "delivery.", "auth.client_id_suffixes",
    "metrics.max_loop_lag_ms", "mqtt.tls.certfile", "mqtt.tls.keyfile", "http.tls.certfile", "http.tls.keyfile",
    # read for each new connection
    "limits.max_packet_bytes", "limits.connect_timeout_s", "limits.keepalive_factor", "limits.max_keepalive_s",
    "limits.max_inflight_messages", "limits.max_subscriptions_per_client", "limits.topic_alias_maximum",
)
# Compared as one value (dicts whose keys are names, not settings).
_WHOLE = frozenset({"acl.roles", "acl.integrators", "acl.anonymous", "site.households"})
_SECRET_WORDS = ("secret", "token")


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in _WHOLE:
            out.update(_flat(value, path + "."))
        else:
            out[path] = value
    return out


def changed_keys(old: Settings, new: Settings) -> list[str]:
    a, b = _flat(old.model_dump()), _flat(new.model_dump())
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _is_live(key: str, old: Settings, new: Settings) -> bool:
    if ".tls." in key:  # a certificate swap only; adding or removing TLS changes the listeners
        section = key.split(".")[0]
        if getattr(old, section).tls is None or getattr(new, section).tls is None:
            return False
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in LIVE_KEYS)


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def _describe(key: str, before: Any, after: Any) -> str:
    """`key old -> new`; secrets and whole tables (site, ACL) only as `key changed`."""
    if any(word in key for word in _SECRET_WORDS) or key.split(".")[0] in ("site", "acl"):
        return f"{key} changed"

    def short(value: Any) -> str:
        text = str(value) if hasattr(value, "__fspath__") else repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    return f"{key} {short(before)} -> {short(after)}"


class Reloader:
    """Holds what a reload touches; `reload()` is the SIGHUP handler's body."""

    def __init__(self, load: Callable[[], Settings], services: Services, broker: Any = None,
                 tls_contexts: Callable[[], Mapping[str, Iterable[ssl.SSLContext]]] = dict,
                 presence: Presence | None = None) -> None:
        self.load = load  # the same file, flags and environment as at start
        self.services = services
        self.broker = broker
        self.presence = presence
        self.tls_contexts = tls_contexts  # section ("mqtt", "http") -> the live contexts it serves with
        self.reloads = 0

    def reload(self) -> bool:
        """Apply the file's live changes; False (and one log line) if it is refused."""
        old = self.services.settings
        try:
            new = self.load()
        except ConfigError as exc:
            log.error("reload refused, running configuration kept: %s", " ".join(str(exc).split()))
            return False
        changed = changed_keys(old, new)
        live = [k for k in changed if _is_live(k, old, new)]
        restart = [k for k in changed if k not in live]
        merged = old.model_dump()
        flat_new = _flat(new.model_dump())
        for key in live:
            _set(merged, key, copy.deepcopy(flat_new.get(key)))
        try:
            applied = Settings.model_validate(merged)
            self._check_tls(applied, live)
            self._apply(old, applied, live)
        except (ConfigError, DomainError, ValueError) as exc:
            log.error("reload refused, running configuration kept: %s", " ".join(str(exc).split()))
            return False
        self.reloads += 1
        flat_old = _flat(old.model_dump())
        if live:
            log.info("reload: applied %s", "; ".join(_describe(k, flat_old.get(k), flat_new.get(k)) for k in live))
        if restart:
            log.warning("reload: needs a restart to take effect (running values kept): %s", ", ".join(restart))
        if not changed:
            log.info("reload: configuration unchanged")
        return True

    def _check_tls(self, applied: Settings, live: list[str]) -> None:
        """Load new certificates into scratch contexts first, so a bad one refuses the reload whole."""
        for section in ("mqtt", "http"):
            tls = getattr(applied, section).tls
            if tls is not None and any(k.startswith(f"{section}.tls.") for k in live):
                server_context(tls)

    def _apply(self, old: Settings, new: Settings, live: list[str]) -> None:
        svc = self.services
        if any(k.startswith("site.") for k in live):
            svc.directory.seed_site(new.site)  # BadRequest (a member moved household) refuses the reload
            svc.calls.forwarding.site = new.site
        svc.settings = new
        calls = svc.calls
        calls.config = new.calls
        calls.resident_calls.limit_max = new.calls.history_limit_max
        if self.presence is not None:
            self.presence.grace_s = new.calls.party_offline_grace_s  # for parties that drop from now on
        if any(k.startswith("calls.") for k in live):
            c, refused = new.calls, calls.admission.refused
            calls.admission = CallAdmission(c.max_setups_per_s, c.setup_burst, c.max_active_calls,
                                            c.max_loop_lag_ms / 1000, lag=lambda: calls.lag.lag_s)
            calls.admission.refused = refused
        svc.doors.config = new.doors
        svc.snapshots.config = new.snapshots
        if new.server.log_level != old.server.log_level:
            set_level(new.server.log_level)
        if self.broker is not None:
            self.broker.limits = new.limits
            self.broker.delivery_limits = DeliveryLimits(**new.delivery.model_dump())
        contexts = self.tls_contexts()
        for section in ("mqtt", "http"):
            tls = getattr(new, section).tls
            if tls is not None and any(k.startswith(f"{section}.tls.") for k in live):
                for ctx in contexts.get(section, ()):
                    ctx.load_cert_chain(tls.certfile, tls.keyfile)
