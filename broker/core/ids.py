"""The one id type of the API: households, residents, devices, calls, TRTC user and room ids.

Used by every model in `broker.core.payloads` (bodies, queries, paths, topics) and by `parse_id` for
ids outside a model, so every endpoint and topic accepts and refuses the same ids.
"""

from __future__ import annotations

import math
import unicodedata
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, TypeAdapter, ValidationError

from broker.core.errors import BadRequest

__all__ = ["Id", "parse_id", "validation_detail"]


def _id_from_number(v: Any) -> Any:
    """A JSON number where an id belongs means its decimal string (`101` -> "101", `1.5` -> "1.5")."""
    if isinstance(v, bool):
        raise ValueError("an id must be a string or a number, not a boolean")
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError("an id must be a finite number")
        return format(Decimal(repr(v)), "f")
    return v


def _id_rules(v: str) -> str:
    v = v.strip()
    if not v:
        raise ValueError("an id may not be empty")
    if len(v) > 64:
        raise ValueError(f"an id is at most 64 characters, got {len(v)}")
    for ch in v:
        # `/`, `+`, `#` would change an MQTT topic's meaning; control characters and lone surrogates
        # (a JSON "\ud800") cannot be carried in a topic or a log line.
        if ch in "/+#" or unicodedata.category(ch) in ("Cc", "Cs"):
            raise ValueError(f"an id may not contain '/', '+', '#', NUL or control characters (found {ch!r})")
    return v


# The one id type: households, residents, devices, calls, TRTC user and room ids, in bodies, queries,
# paths and topics. Any non-empty text of at most 64 characters (not bytes) without `/ + #` or
# control characters; a JSON number means its decimal string.
Id = Annotated[
    str,
    BeforeValidator(_id_from_number),
    AfterValidator(_id_rules),
]
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
