"""A call's wire vocabulary: starting one (REST and `calls/request/{id}`), acting on one (the control topics),
what the server publishes to the parties, and the TRTC credentials a call carries.

Field names follow the seed API exactly (`tencen_rtc` included).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from broker.core.fastjson import compact
from broker.core.fields import DEVICE_KEYS, Timestamp, one_id
from broker.core.ids import Id
from broker.core.wire.base import In, Out

__all__ = ["CallInfo", "CallRequest", "ControlBody", "ControlMessage", "EndSessionRequest", "ErrorBody",
           "IncomingCall", "MqttCallRequest", "RtcCallRequest", "RtcTokenRequest", "TencentRtc", "UserSigRequest",
           "control_notice", "incoming_call_encoder", "snapshot_url"]


Reason = Annotated[str, Field(max_length=128)]
# An MQTT client id as a client names itself in a body (REST, bridge mode): `{role}-{id}[/<suffix>]`,
# checked against the acting party by broker.core.clients.
ClientId = Annotated[str, Field(min_length=1, max_length=128)]


class TencentRtc(Out):
    sdk_app_id: int
    user_id: str
    user_sig: str
    room_id: str
    room_id_type: Literal["string"] = "string"


class CallInfo(In):
    call_id: Id
    action: Annotated[str, Field(min_length=1, max_length=32)]
    reason: Reason | None = None
    timestamp: Timestamp | None = None


class ControlBody(In):
    """`POST /api/mqtt/controller/*` and the payload a party publishes on its control topic."""

    call_info: CallInfo
    resident_id: Id | None = None  # local-only mode: an anonymous REST caller names itself
    device_id: Id | None = None
    client_id: ClientId | None = None  # which of the party's clients acts (REST, bridge mode)


class CallRequest(In):
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
        if (device := one_id(data, DEVICE_KEYS)) is not None:
            data["device_id"] = device
        if (target := one_id(data, ("target_resident_id", "resident_id"))) is not None:
            data["target_resident_id"] = target
        return data


class MqttCallRequest(In):
    """Payload of `calls/request/{device_id}`; the device id comes from the topic."""

    household_number: Id | None = None
    timestamp: Timestamp | None = None
    request_id: Annotated[str, Field(max_length=64)] | None = None


class IncomingCall(Out):
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


class ErrorBody(Out):
    code: int
    message: str
    reason: str | None = None  # set where one code has several meanings (docs/protocol.md "Errors")


class ControlMessage(Out):
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
                          ring_timeout_s: float, timestamp: int) -> Callable[[Mapping[str, object]], bytes]:
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


class EndSessionRequest(In):
    call_id: Id
    reason: Reason | None = None


class UserSigRequest(In):
    user_id: Id


class RtcTokenRequest(In):
    user_id: Id
    channel_id: Id


class RtcCallRequest(In):
    device_id: Id
    resident_id: Id


def snapshot_url(call_id: str) -> str:
    """Where a call's visitor snapshot is served, relative to the REST API's base URL."""
    return f"/api/calls/{call_id}/snapshot"
