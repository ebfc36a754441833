"""Query strings of the REST listings and lookups: every value arrives as text; an empty value
(`?device_id=`) counts as absent."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from broker.core.ids import Id
from broker.core.wire.base import In

__all__ = ["ActiveQuery", "AdminListQuery", "DoorEventsQuery", "HistoryQuery", "ResidentCallsQuery", "SessionQuery",
           "SiteQuery"]


def _bool_text(v: Any) -> Any:
    if isinstance(v, str):
        if v.lower() in ("true", "1"):
            return True
        if v.lower() in ("false", "0"):
            return False
        raise ValueError(f"must be true or false, got {v!r}")
    return v



def _positive_int(v: Any) -> Any:
    if isinstance(v, str) and not (v.isascii() and v.isdigit() and len(v) <= 9):
        raise ValueError(f"must be a positive integer, got {v!r}")
    return v


class SessionQuery(In):
    call_id: Id
    resident_id: Id | None = None  # local-only mode: who is asking, for its own TRTC credentials


class HistoryQuery(In):
    household_number: Id | None = None
    device_id: Id | None = None
    status: Literal["ringing", "connected", "ended"] | None = None
    limit: Annotated[int, BeforeValidator(_positive_int), Field(ge=1)] = 50


class ActiveQuery(In):
    resident_id: Id | None = None
    device_id: Id | None = None


class ResidentCallsQuery(In):
    missed: Annotated[bool, BeforeValidator(_bool_text)] = False
    limit: Annotated[int, BeforeValidator(_positive_int), Field(ge=1)] = 50


class AdminListQuery(In):
    household_number: Id | None = None


class DoorEventsQuery(In):
    device_id: Id | None = None
    household_number: Id | None = None
    limit: Annotated[int, BeforeValidator(_positive_int), Field(ge=1)] = 50


class SiteQuery(In):
    devices: Annotated[bool, BeforeValidator(_bool_text)] = False  # add every device's last status
