"""The process's file descriptors, shared out between the REST and MQTT listeners.

Both listeners take their caps from here (neither imports the other), so accept never hits EMFILE whatever
the clients of one listener do: REST gets at most a quarter of what is left after a fixed reserve, the MQTT
listeners the rest.
"""

from __future__ import annotations

import logging
import resource

__all__ = ["fd_bounded", "http_fd_share"]

log = logging.getLogger("intercom.broker")
_RESERVED_FDS = 64  # sqlite, listeners, logs, an accepted socket about to be refused


def http_fd_share(max_http_connections: int) -> int:
    """The REST listener's connection cap: at most a quarter of the descriptors left after the reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_http_connections
    share = min(max_http_connections, max((soft - _RESERVED_FDS) // 4, 1))
    if share < max_http_connections:
        log.warning("limits.max_http_connections %d exceeds a quarter of the open-file limit %d: using %d "
                    "(raise `ulimit -n`)", max_http_connections, soft, share)
    return share


def fd_bounded(max_connections: int, http_share: int = 0) -> int:
    """max_connections, lowered to fit the process's file-descriptor limit next to the REST listener's
    `http_share` (so accept never hits EMFILE, whatever REST clients do)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = soft - _RESERVED_FDS - http_share if soft != resource.RLIM_INFINITY else max_connections
    if max_connections > room:
        log.warning("limits.max_connections %d exceeds the open-file limit %d: using %d (raise `ulimit -n`)",
                    max_connections, soft, max(room, 1))
        return max(room, 1)
    return max_connections
