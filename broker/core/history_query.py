"""`GET /api/calls` query: filters, an ISO 8601 date range, a cursor, the format; unknown parameters refused."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field

from broker.core.wire.queries import HistoryQuery as _SeedHistoryQuery

__all__ = ["HistoryPageQuery", "Instant"]


def _instant(v: Any) -> Any:
    """ISO 8601 (`2026-12-01`, `2026-12-01T08:00:00Z`, with an offset; no offset = UTC) -> epoch seconds."""
    if not isinstance(v, str):
        return v
    try:
        when = datetime.fromisoformat(v)
    except ValueError:
        raise ValueError(f"must be an ISO 8601 date or time (2026-12-01T08:00:00Z), got {v!r}") from None
    return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()


Instant = Annotated[float, BeforeValidator(_instant)]


class HistoryPageQuery(_SeedHistoryQuery):
    """`GET /api/calls`: a parameter it does not know is a 400 (a misspelt filter would list everything)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    since: Instant | None = None  # calls started at or after
    until: Instant | None = None  # calls started before
    cursor: Annotated[str, Field(max_length=200)] | None = None  # from the previous page's X-Next-Cursor
    format: Literal["json", "csv"] = "json"
    q: Annotated[str, Field(max_length=128)] | None = None  # a call id prefix, or a device/household/resident id
