"""Ids outside a model: `parse_id` for URL paths and topics, and the one validation message format.

The `Id` type itself lives in `broker.ids` (a value type every layer may use); re-exported here for the
core's models, so every endpoint and topic accepts and refuses the same ids.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError

from broker.core.errors import BadRequest
from broker.ids import Id

__all__ = ["Id", "parse_id", "validation_detail"]


_ID = TypeAdapter(Id)


def parse_id(value: Any, field: str) -> str:
    """Validate an id from a URL path or a topic, outside a model (BadRequest naming `field`)."""
    try:
        return _ID.validate_python(value)
    except ValidationError as exc:
        raise BadRequest(validation_detail(exc, field)) from exc


def validation_detail(exc: ValidationError, prefix: str = "") -> str:
    """`field: what is wrong`, in English, for the first error (REST and MQTT say the same)."""
    first = exc.errors()[0]
    field = ".".join(str(p) for p in (prefix, *first["loc"]) if p != "") or "body"
    msg = "field required" if first["type"] == "missing" else first["msg"].removeprefix("Value error, ")
    return f"{field}: {msg}"
