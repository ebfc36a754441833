"""What a device reports about itself (`devices/{id}/status`) and the seed's system messages (`system/{type}`)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, StrictBool, field_validator

from broker.core.fields import Timestamp
from broker.core.ids import Id
from broker.core.wire.base import In

__all__ = ["MAX_PROPERTIES_BYTES", "DeviceStatus", "SystemMessage"]

MAX_PROPERTIES_BYTES = 16 * 1024  # a device's merged `properties`, JSON-encoded (it is retained and re-sent)


def _battery(v: Any) -> Any:
    if v is None:
        return v
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not 0 <= v <= 100:
        raise ValueError("must be a number from 0 to 100, or null to clear it")
    return v


class DeviceStatus(In):
    """A status report: a patch of the stored status (see StatusService.update).

    A field left out keeps its stored value, an explicit `null` clears it (`online` cannot be null),
    and `properties` merges by key, a `null` value removing that key.
    """

    device_id: Id
    online: StrictBool | None = None
    battery: Annotated[int | float | None, BeforeValidator(_battery)] = None
    properties: dict[str, Any] | None = None

    @field_validator("online", mode="before")
    @classmethod
    def _online_not_null(cls, v: Any) -> Any:
        if v is None:
            raise ValueError("must be true or false")
        return v


class SystemMessage(In):
    type: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    level: Literal["info", "warning", "error"]
    message: Annotated[str, Field(min_length=1, max_length=4096)]
    data: dict[str, Any] = Field(default_factory=dict)
    timestamp: Timestamp | None = None
