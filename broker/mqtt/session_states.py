"""A light replacement for the `transitions.Machine` amqtt 0.12.1 builds inside every `Session`.

amqtt's `Session._init_states` creates a full `transitions.Machine` per session: ~1.5 ms of CPU and
~23 KB of memory each, i.e. most of the cost of a connection. Sessions only ever use `.state`,
`.connect()`, `.disconnect()` and `.is_connected()` / `.is_new()` / `.is_disconnected()`, with the
same three states and transitions, so this class implements exactly that, raising `MachineError`
where `transitions` would (amqtt's connect loop relies on it) and calling the same enter callbacks.
"""

from __future__ import annotations

from typing import Any

from amqtt.session import Session
from transitions import MachineError

__all__ = ["AMQTT_INIT_STATES", "SessionStates", "install"]

AMQTT_INIT_STATES = Session._init_states  # amqtt's own, kept for comparison tests


class SessionStates:
    """new -> connected <-> disconnected, as in amqtt's `Session._init_states`."""

    __slots__ = ("_session", "state")

    def __init__(self, session: Session) -> None:
        self._session = session
        self.state = "new"

    def connect(self) -> bool:
        if self.state == "connected":
            raise MachineError(f"Can't trigger event connect from state {self.state}!")
        self.state = "connected"
        self._session._on_enter_connected()
        return True

    def disconnect(self) -> bool:
        self.state = "disconnected"  # from new, connected and disconnected alike, as amqtt's table says
        self._session._on_enter_disconnected()
        return True

    def is_new(self) -> bool:
        return self.state == "new"

    def is_connected(self) -> bool:
        return self.state == "connected"

    def is_disconnected(self) -> bool:
        return self.state == "disconnected"


def _init_states(self: Session) -> None:
    self.transitions = SessionStates(self)


def install() -> None:
    """Make every amqtt `Session` created from now on use `SessionStates` (idempotent, process-wide)."""
    session_cls: Any = Session
    session_cls._init_states = _init_states
