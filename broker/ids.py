"""The one id type of the API: households, residents, devices, calls, TRTC user and room ids.

A value type with no behaviour beyond validation, so every layer may use it: the configuration (site
directory entries), the core (every model in `broker.core.wire`, `parse_id`) and the adapters accept and
refuse the same ids.
"""

from __future__ import annotations

import math
import unicodedata
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

__all__ = ["Id"]


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
