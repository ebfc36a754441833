"""One pydantic model per wire payload, shared by the MQTT plugin and the REST views.

Field names follow the seed API exactly (`tencen_rtc` included). Topic strings are built
only in `topics`, so no other module spells a topic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictInt,
    field_validator,
    model_serializer,
    model_validator,
)

from broker.core.fastjson import compact
from broker.core.ids import Id, parse_id, validation_detail

__all__ = [
    "CALL_SERVICE_FILTERS", "ActiveQuery", "AdminListQuery", "CallInfo", "CallRequest", "CommandAck",
    "ControlBody", "ControlMessage", "DeviceStatus", "DirectoryPatch", "DndCommand", "DndIn", "DoorCommand",
    "DoorCommandRequest", "DoorEventsQuery", "EndSessionRequest", "ErrorBody", "ForwardingIn", "HistoryQuery",
    "Id", "IncomingCall", "MqttCallRequest", "ResidentCallsQuery", "SeenCommand", "SessionQuery", "SystemMessage",
    "TencentRtc", "UnlockRequest", "control_notice", "incoming_call_encoder", "parse_id", "snapshot_url",
    "topics", "validation_detail",
]


Timestamp = Annotated[int, Field(ge=0, le=10**14)]
Reason = Annotated[str, Field(max_length=128)]
# An MQTT client id as a client names itself in a body (REST, bridge mode): `{role}-{id}[/<suffix>]`,
# checked against the acting party by broker.core.clients.
ClientId = Annotated[str, Field(min_length=1, max_length=128)]
MAX_PROPERTIES_BYTES = 16 * 1024  # a device's merged `properties`, JSON-encoded (it is retained and re-sent)


class _In(BaseModel):
    """Inbound payloads: unknown fields are ignored (clients send extras), types are strict-ish."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TencentRtc(_Out):
    sdk_app_id: int
    user_id: str
    user_sig: str
    room_id: str
    room_id_type: Literal["string"] = "string"


class CallInfo(_In):
    call_id: Id
    action: Annotated[str, Field(min_length=1, max_length=32)]
    reason: Reason | None = None
    timestamp: Timestamp | None = None


class ControlBody(_In):
    """`POST /api/mqtt/controller/*` and the payload a party publishes on its control topic."""

    call_info: CallInfo
    resident_id: Id | None = None  # local-only mode: an anonymous REST caller names itself
    device_id: Id | None = None
    client_id: ClientId | None = None  # which of the party's clients acts (REST, bridge mode)


class CallRequest(_In):
    """`POST /api/mqtt/call`, current shape and the older `{device_device_id, target_resident_id}`."""

    device_id: Id
    household_number: Id | None = None
    target_resident_id: Id | None = None
    timestamp: Timestamp | None = None

    @model_validator(mode="before")
    @classmethod
    def _older_shape(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "device_id" not in data and "device_device_id" in data:
            data["device_id"] = data["device_device_id"]
        if "target_resident_id" not in data and "resident_id" in data:
            data["target_resident_id"] = data["resident_id"]
        return data


class MqttCallRequest(_In):
    """Payload of `calls/request/{device_id}`; the device id comes from the topic."""

    household_number: Id | None = None
    timestamp: Timestamp | None = None
    request_id: Annotated[str, Field(max_length=64)] | None = None


class IncomingCall(_Out):
    origin: Literal["server"] = "server"
    call_id: str
    device_id: str
    household_number: str
    call_info: dict[str, Any]
    tencen_rtc: TencentRtc
    ring_timeout_s: float
    timestamp: int
    snapshot_url: str | None = None  # the visitor snapshot, when the call has one as this message is made

    @model_serializer(mode="wrap")
    def _without_absent_snapshot(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("snapshot_url") is None:
            data.pop("snapshot_url", None)
        return data


class ErrorBody(_Out):
    code: int
    message: str
    reason: str | None = None  # set where one code has several meanings (docs/protocol.md "Errors")


class ControlMessage(_Out):
    """What the server publishes on a party's control topic."""

    origin: Literal["server"] = "server"
    call_info: dict[str, Any]
    resident_id: str | None = None
    error: ErrorBody | None = None
    request_id: str | None = None
    snapshot_url: str | None = None  # `call_info.action: "snapshot"`
    door: dict[str, Any] | None = None  # `call_info.action: "door_opened"`: the reply to a resident's unlock
    dnd: dict[str, Any] | None = None  # `call_info.action: "dnd"`: the reply to a resident's DND command
    client_id: str | None = None  # the client that took the action (several per resident)
    forward_to: list[str] | None = None  # `forwarded`: the fallback residents now ringing


def incoming_call_encoder(call_id: str, device_id: str, household_number: str, call_info: dict[str, Any],
                          ring_timeout_s: float, timestamp: int) -> Callable[[dict[str, Any]], bytes]:
    """`IncomingCall(...).model_dump_json()` per resident, given its `tencen_rtc`; the shared fields encoded once.

    The server's own data needs no validation; `tests/core/test_payload_encoders.py` checks the bytes equal the model's.
    """
    head = compact({"origin": "server", "call_id": call_id, "device_id": device_id,
                    "household_number": household_number, "call_info": call_info})[:-1] + ',"tencen_rtc":'
    tail = "," + compact({"ring_timeout_s": ring_timeout_s, "timestamp": timestamp})[1:]
    return lambda rtc: (head + compact(rtc) + tail).encode()


def control_notice(call_id: str, action: str, reason: str | None, timestamp: int, resident_id: str | None = None,
                   client_id: str | None = None, forward_to: Sequence[str] | None = None) -> bytes:
    """`ControlMessage(...).model_dump_json(exclude_none=True)` of a call notice (call_info keeps a null reason)."""
    msg: dict[str, Any] = {"origin": "server", "call_info": {
        "call_id": call_id, "action": action, "reason": reason, "timestamp": timestamp}}
    if resident_id is not None:
        msg["resident_id"] = resident_id
    if client_id is not None:
        msg["client_id"] = client_id
    if forward_to:
        msg["forward_to"] = list(forward_to)
    return compact(msg).encode()


class EndSessionRequest(_In):
    call_id: Id
    reason: Reason | None = None


def _battery(v: Any) -> Any:
    if v is None:
        return v
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not 0 <= v <= 100:
        raise ValueError("must be a number from 0 to 100, or null to clear it")
    return v


class DeviceStatus(_In):
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


class SystemMessage(_In):
    type: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    level: Literal["info", "warning", "error"]
    message: Annotated[str, Field(min_length=1, max_length=4096)]
    data: dict[str, Any] = {}
    timestamp: Timestamp | None = None


class UserSigRequest(_In):
    user_id: Id


class RtcTokenRequest(_In):
    user_id: Id
    channel_id: Id


class RtcCallRequest(_In):
    device_id: Id
    resident_id: Id


class HouseholdIn(_In):
    household_number: Id
    name: Annotated[str, Field(max_length=128)] | None = None


class ResidentIn(_In):
    resident_id: Id
    household_number: Id
    name: Annotated[str, Field(max_length=128)] | None = None


class DeviceIn(_In):
    device_id: Id
    household_number: Id
    name: Annotated[str, Field(max_length=128)] | None = None
    kind: Literal["door", "lobby"] = "door"
    households: list[Id] | None = None  # a lobby panel's households (null: any of the site)
    emergency: StrictBool = False  # rings residents in do-not-disturb too


def _hhmm(v: str) -> str:
    hours, _, minutes = v.partition(":")
    if not (len(hours) == len(minutes) == 2 and hours.isdigit() and minutes.isdigit()
            and int(hours) < 24 and int(minutes) < 60):
        raise ValueError(f"must be a time of day 'HH:MM' from 00:00 to 23:59, got {v!r}")
    return v


HourMinute = Annotated[str, AfterValidator(_hhmm)]


class DndWindow(_In):
    """A daily do-not-disturb window in the site's time zone; `to` before `from` runs past midnight."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    start: HourMinute = Field(alias="from")
    end: HourMinute = Field(alias="to")

    @model_validator(mode="after")
    def _not_empty(self) -> DndWindow:
        if self.start == self.end:
            raise ValueError("'from' and 'to' are the same time: for all day, leave out the schedule")
        return self


class DndIn(_In):
    """`PUT /api/residents/{id}/dnd` and `PUT /api/households/{n}/dnd`."""

    enabled: StrictBool
    schedule: Annotated[list[DndWindow], Field(max_length=24)] | None = None

    def windows(self) -> list[tuple[str, str]] | None:
        """The schedule as (from, to) pairs, as `broker.core.dnd` keeps it."""
        return [(w.start, w.end) for w in self.schedule] if self.schedule is not None else None


class ForwardingIn(_In):
    """`PUT /api/households/{n}/forwarding`: `forward_to` null = use the site's."""

    forward_to: Annotated[list[Id], Field(max_length=16)] | None
    forward_after_s: Annotated[float, Field(gt=0, le=3600)] | None = None


def _bool_text(v: Any) -> Any:
    if isinstance(v, str):
        if v.lower() in ("true", "1"):
            return True
        if v.lower() in ("false", "0"):
            return False
        raise ValueError(f"must be true or false, got {v!r}")
    return v


# Query strings: every value arrives as text; an empty value (`?device_id=`) counts as absent.

def _positive_int(v: Any) -> Any:
    if isinstance(v, str) and not (v.isascii() and v.isdigit() and len(v) <= 9):
        raise ValueError(f"must be a positive integer, got {v!r}")
    return v


class SessionQuery(_In):
    call_id: Id
    resident_id: Id | None = None  # local-only mode: who is asking, for its own TRTC credentials


class HistoryQuery(_In):
    household_number: Id | None = None
    device_id: Id | None = None
    status: Literal["ringing", "connected", "ended"] | None = None
    limit: Annotated[int, BeforeValidator(_positive_int), Field(ge=1)] = 50


class ActiveQuery(_In):
    resident_id: Id | None = None
    device_id: Id | None = None


class ResidentCallsQuery(_In):
    missed: Annotated[bool, BeforeValidator(_bool_text)] = False
    limit: Annotated[int, BeforeValidator(_positive_int), Field(ge=1)] = 50


class AdminListQuery(_In):
    household_number: Id | None = None


class DirectoryPatch(_In):
    """`PATCH /api/admin/{kind}/{id}`: rename an entry, move a resident or device to another household, or
    (devices) make it a unit door station or a lobby panel, or an emergency device. A field left out keeps
    its value."""

    name: Annotated[str, Field(max_length=128)] | None = None
    household_number: Id | None = None
    kind: Literal["door", "lobby"] | None = None  # devices only
    households: list[Id] | None = None  # devices only: the households a lobby panel may call (none: all)
    emergency: StrictBool | None = None  # devices only: rings residents in do-not-disturb too


class topics:
    """The seed's topic structure; the only place topic strings are spelled.

    Each builder takes an id, a `+` (a filter for every party) or an ACL pattern such as `%u`.
    """

    REQUEST_PREFIX = "calls/request/"

    @staticmethod
    def request(device_id: str) -> str:
        return f"calls/request/{device_id}"

    @staticmethod
    def incoming(resident_id: str) -> str:
        return f"users/{resident_id}/calls/incoming"

    @staticmethod
    def device_control(device_id: str) -> str:
        return f"devices/{device_id}/calls/control"

    @staticmethod
    def resident_control(resident_id: str) -> str:
        return f"users/{resident_id}/calls/control"

    @staticmethod
    def missed(resident_id: str) -> str:
        return f"users/{resident_id}/calls/missed"

    @staticmethod
    def device_status(device_id: str) -> str:
        return f"devices/{device_id}/status"

    @staticmethod
    def device_commands(device_id: str) -> str:
        return f"devices/{device_id}/commands"

    @staticmethod
    def device_commands_ack(device_id: str) -> str:
        return f"devices/{device_id}/commands/ack"

    @staticmethod
    def resident_commands(resident_id: str) -> str:
        return f"users/{resident_id}/commands"

    @staticmethod
    def system(message_type: str) -> str:
        return f"system/{message_type}"

    @staticmethod
    def device_all(device_id: str) -> str:
        return f"devices/{device_id}/#"

    @staticmethod
    def resident_all(resident_id: str) -> str:
        return f"users/{resident_id}/#"

    @staticmethod
    def classify(topic: str) -> tuple[str, str] | None:
        """(kind, party id) of a topic clients publish the call service's input on, else None.

        kind: `request` (a device starts a call), `device_control`, `resident_control`, `device_status`,
        `resident_commands` (door unlock), `device_commands_ack` (a station's answer to a command).
        """
        match topic.split("/"):
            case ["calls", "request", device_id]:
                return "request", device_id
            case ["devices", device_id, "calls", "control"]:
                return "device_control", device_id
            case ["users", resident_id, "calls", "control"]:
                return "resident_control", resident_id
            case ["devices", device_id, "status"]:
                return "device_status", device_id
            case ["users", resident_id, "commands"]:
                return "resident_commands", resident_id
            case ["devices", device_id, "commands", "ack"]:
                return "device_commands_ack", device_id
        return None


# What the call service subscribes to when it is a client of an external broker (bridge mode).
CALL_SERVICE_FILTERS = (topics.request("+"), topics.device_control("+"), topics.resident_control("+"),
                        topics.device_status("+"), topics.resident_commands("+"), topics.device_commands_ack("+"))


# Door unlock, resident commands, visitor snapshots --------------------------------------------------
Relay = Annotated[StrictInt, Field(ge=1)]  # numbered from 1 (2N's switches); the top is doors.max_relay
RequestId = Annotated[str, Field(max_length=64)]


class _UnlockFields(_In):
    device_id: Id
    call_id: Id | None = None
    relay: Relay = 1


class UnlockRequest(_UnlockFields):
    """`POST /api/doors/unlock`; `resident_id` names the opener when the caller holds no resident token."""

    resident_id: Id | None = None


class DoorCommandRequest(_UnlockFields):
    """A resident's publish on `users/{id}/commands`; the resident is the topic's."""

    command: Literal["unlock"]
    request_id: RequestId | None = None


class SeenCommand(_In):
    """A resident's publish on `users/{id}/commands`: every missed call seen, as `POST .../calls/seen`."""

    command: Literal["calls_seen"]
    request_id: RequestId | None = None


class DndCommand(DndIn):
    """A resident's publish on `users/{id}/commands`: its own do-not-disturb, as `PUT /api/residents/{id}/dnd`."""

    command: Literal["dnd"]
    request_id: RequestId | None = None


class CommandAck(_In):
    """A door station's publish on `devices/{id}/commands/ack`."""

    command_id: Annotated[str, Field(min_length=1, max_length=64)]
    ok: StrictBool
    error: Annotated[str, Field(max_length=256)] | None = None


class DoorCommand(_Out):
    """What the server publishes on `devices/{id}/commands`."""

    origin: Literal["server"] = "server"
    command: Literal["unlock"] = "unlock"
    relay: int
    by: str
    call_id: str | None
    command_id: str


class DoorEventsQuery(_In):
    device_id: Id | None = None
    household_number: Id | None = None
    limit: Annotated[int, BeforeValidator(_positive_int), Field(ge=1)] = 50


def snapshot_url(call_id: str) -> str:
    """Where a call's visitor snapshot is served, relative to the REST API's base URL."""
    return f"/api/calls/{call_id}/snapshot"
