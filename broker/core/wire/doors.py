"""Door unlock: the request (REST, and the resident's `unlock` command's fields) and the command the server
publishes on `devices/{id}/commands`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictInt

from broker.core.ids import Id
from broker.core.wire.base import In, Out

__all__ = ["DoorCommand", "Relay", "UnlockFields", "UnlockRequest"]


Relay = Annotated[StrictInt, Field(ge=1)]  # numbered from 1 (2N's switches); the top is doors.max_relay


class UnlockFields(In):
    device_id: Id
    call_id: Id | None = None
    relay: Relay = 1


class UnlockRequest(UnlockFields):
    """`POST /api/doors/unlock`; `resident_id` names the opener when the caller holds no resident token."""

    resident_id: Id | None = None


class DoorCommand(Out):
    """What the server publishes on `devices/{id}/commands`."""

    origin: Literal["server"] = "server"
    command: Literal["unlock"] = "unlock"
    relay: int
    by: str
    call_id: str | None
    command_id: str
    expires_at: int  # epoch ms (doors.ack_timeout_s after sending): a station ignores the command after it
