"""The two bases of every wire model: what the server reads (lenient about extras) and what it writes (exact)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["In", "Out", "RequestId"]

# A client's correlation id for a request it will match an answer to; echoed as sent.
RequestId = Annotated[str, Field(max_length=64)]


class In(BaseModel):
    """Inbound payloads: unknown fields are ignored (clients send extras), types are strict-ish."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class Out(BaseModel):
    """Outbound payloads: a field the model does not declare is a bug, not an extension."""

    model_config = ConfigDict(extra="forbid")
