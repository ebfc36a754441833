"""Who a browser may be when it talks to the box: the `Host` it names and the `Origin` of its page.

Shared by the REST app (`http_api/web_guard.py`) and the MQTT-over-WebSocket listener
(`broker/mqtt/ws_listener.py`), so both apply one rule (see docs/security.md, "Browsers"):

* `Host` must name the box: one of `http.allowed_hosts` (default `localhost`, `127.0.0.1`, `::1`), the
  configured `server.host`, or the address the connection arrived on; any port. A DNS-rebinding page
  reaches the box under the attacker's name, so its requests carry that name and are refused.
* A browser `Origin` must be the box's own (an allowed host on the REST listener's port, where the console
  is served, or on the port the connection arrived on, which serves no page: paho-mqtt sends its own
  WebSocket URL as `Origin`) or one of `http.cors_origins`. No `Origin` at all is a client that is not a
  web page (curl, devices, most MQTT libraries) and passes.
"""

from __future__ import annotations

import ipaddress
from typing import TypeAlias

from yarl import URL

from broker.config import Settings

__all__ = ["Local", "WebGuard", "host_name", "local_of"]

DEFAULT_PORTS = {"http": 80, "https": 443}
Local: TypeAlias = tuple[str, int] | None  # (address, port) a connection arrived on


def local_of(sockname: object) -> Local:
    """A transport's `sockname` extra info as (address, port), or None."""
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return str(sockname[0]), int(sockname[1])
    return None


def host_name(host: str) -> str:
    """`Host`-header or URL host without port and brackets, lower case: `[::1]:80` -> `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        host = name
    return host.rstrip(".")


def _canonical(host: str) -> str:
    """An IP address in one spelling (`::0001` is `::1`), a name as given."""
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        return host


class WebGuard:
    """The `Host` and `Origin` rules for one box. `http_port` is set once the REST listener is bound."""

    def __init__(self, hosts: list[str], cors_origins: list[str], http_port: int | None = None) -> None:
        self.any_host = "*" in hosts
        self.hosts = frozenset(_canonical(host_name(h)) for h in hosts if h != "*")
        self.cors_origins = frozenset(o.rstrip("/") for o in cors_origins)
        self.http_port = http_port or None

    @classmethod
    def from_settings(cls, settings: Settings) -> WebGuard:
        hosts = [*settings.http.allowed_hosts]
        if settings.server.host:  # a specific bound address (empty: every interface)
            hosts.append(settings.server.host)
        return cls(hosts, settings.http.cors_origins, settings.server.http_port)

    def _known(self, name: str, local: Local) -> bool:
        name = _canonical(name)
        return name in self.hosts or (local is not None and name == _canonical(local[0]))

    def host_allowed(self, host: str | None, local: Local) -> bool:
        """The request's `Host` names the box (`local`: where this connection arrived)."""
        if self.any_host:
            return True
        return bool(host) and self._known(host_name(host or ""), local)

    def origin_allowed(self, origin: str | None, local: Local) -> bool:
        """No `Origin` (not a web page), the box's own origin, or one of `http.cors_origins`."""
        if origin is None:
            return True
        origin = origin.strip().rstrip("/")
        if origin in self.cors_origins or "*" in self.cors_origins:
            return True
        try:
            url = URL(origin)
        except ValueError:
            return False
        if url.scheme not in DEFAULT_PORTS or not url.host or url.path not in ("", "/"):
            return False
        port = url.port if url.explicit_port is not None else DEFAULT_PORTS[url.scheme]
        own = port is not None and (port == self.http_port or (local is not None and port == local[1]))
        return own and self._known(host_name(url.host), local)
