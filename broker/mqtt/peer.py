"""What a packet handler sees of the connection a packet came on, for either protocol version.

`connection.Connection` is one. The handlers (`handle_subscribe`, `handle_qos2`) and the router take a `Peer`, not
the class, so they sit below the connection in the import graph: the connection calls them, never the reverse.
"""

from __future__ import annotations

from typing import Protocol

from broker.mqtt.session import Session

__all__ = ["Peer"]


class Peer(Protocol):
    """The session, the version it speaks, and a way to write bytes to it."""

    @property
    def session(self) -> Session: ...

    @property
    def version(self) -> int: ...

    def write(self, data: bytes) -> None: ...
