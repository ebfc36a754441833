"""Seed body fields with rules beyond their JSON type: the caller's `timestamp`, and the fields naming a party.

Shared by the REST views, the MQTT router and the payload models, so each rule is written once.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from pydantic import BeforeValidator

from broker.core.errors import BadRequest
from broker.core.ids import parse_id

__all__ = ["DEVICE_KEYS", "RESIDENT_KEYS", "TIMESTAMP_AHEAD_MS", "TIMESTAMP_MIN_MS", "Timestamp", "one_id"]

TIMESTAMP_MIN_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z: the seed's own example (2022) is later
TIMESTAMP_AHEAD_MS = 86_400_000  # a caller's clock may run up to a day ahead of the server's


def _epoch_ms(v: Any) -> Any:
    """The seed's optional `timestamp`: epoch milliseconds, an integer, from 2020 to a day past the server's clock."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"must be epoch milliseconds as a JSON integer (e.g. 1651234567890), got {v!r}")
    latest = int(time.time() * 1000) + TIMESTAMP_AHEAD_MS
    if TIMESTAMP_MIN_MS <= v <= latest:
        return v
    if 10**9 <= v < 10**11:
        raise ValueError(f"must be epoch milliseconds; {v} looks like seconds (send {v * 1000})")
    raise ValueError(f"must be epoch milliseconds from {TIMESTAMP_MIN_MS} (2020-01-01) to one day past the "
                     f"server's clock ({latest}), got {v}")


# Validated before pydantic's own int coercion, so "1651234567890" (a string) and 1.5 are refused too.
Timestamp = Annotated[int, BeforeValidator(_epoch_ms)]


# The body fields that name a party of each role (seed 000's `device_id`, seed 001's `device_device_id`).
DEVICE_KEYS = ("device_id", "device_device_id")
RESIDENT_KEYS = ("resident_id",)


def one_id(body: Any, keys: tuple[str, ...]) -> str | None:
    """The one id the fields `keys` (names of one party) give in `body`, or None; two different ids: 400."""
    if not isinstance(body, dict):
        return None
    ids = {k: parse_id(body[k], k) for k in keys if body.get(k) is not None}
    if len(set(ids.values())) > 1:
        named = ", ".join(f"{k} '{v}'" for k, v in ids.items())
        raise BadRequest(f"{', '.join(ids)}: two different ids for one party ({named}): send one")
    return next(iter(ids.values()), None)
