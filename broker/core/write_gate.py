"""The database write gate as the core uses it: a lock is a 503 domain error (`StoreUnavailable`).

The mechanics (close on a lock, probe with a doubling pause) are the neutral `broker.write_gate`, which the
engine's session store shares; here its refusal becomes an `Overloaded` the adapters map to 503 with
`Retry-After`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from broker import write_gate
from broker.core.errors import Overloaded
from broker.write_gate import FIRST_PAUSE_S, MAX_PAUSE_S, StoreError

__all__ = ["FIRST_PAUSE_S", "MAX_PAUSE_S", "StoreError", "StoreUnavailable", "WriteGate"]


class StoreUnavailable(write_gate.StoreUnavailable, Overloaded):
    """Another process holds the database locked: 503 with `Retry-After` (REST header; MQTT error text)."""


class WriteGate(write_gate.WriteGate):
    """A gate whose refusals are the core's `StoreUnavailable`."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic,
                 meanwhile: str = "writes are refused (REST 503)") -> None:
        super().__init__(name, clock, meanwhile, unavailable=StoreUnavailable)
