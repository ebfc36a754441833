"""The commands a resident publishes on `users/{id}/commands` and a station's ack on `devices/{id}/commands/ack`.

Each resident command is one model keyed by its `command` field; `broker.core.commands` maps the name to the
model and its handler. The resident is always the topic's (or the REST path's), never the body's.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool

from broker.core.wire.base import In, RequestId
from broker.core.wire.directory import DndIn
from broker.core.wire.doors import UnlockFields

__all__ = ["CallStatusCommand", "CommandAck", "DndCommand", "DoorCommandRequest", "SeenCommand"]


class DoorCommandRequest(UnlockFields):
    """`{"command":"unlock", "device_id", "call_id"?, "relay"?}`: open a door, as `POST /api/doors/unlock`."""

    command: Literal["unlock"]
    request_id: RequestId | None = None


class SeenCommand(In):
    """`{"command":"calls_seen"}`: every missed call seen, as `POST /api/residents/{id}/calls/seen`."""

    command: Literal["calls_seen"]
    request_id: RequestId | None = None


class DndCommand(DndIn):
    """`{"command":"dnd", "enabled", "schedule"?}`: its own do-not-disturb, as `PUT /api/residents/{id}/dnd`."""

    command: Literal["dnd"]
    request_id: RequestId | None = None


class CallStatusCommand(In):
    """`{"command":"call_status"}`: its ringing and connected calls, as `GET /api/residents/{id}/calls/active`
    (an app that starts mid-ring shows the call)."""

    command: Literal["call_status"]
    request_id: RequestId | None = None


class CommandAck(In):
    """A door station's publish on `devices/{id}/commands/ack`."""

    command_id: Annotated[str, Field(min_length=1, max_length=64)]
    ok: StrictBool
    error: Annotated[str, Field(max_length=256)] | None = None
