"""One pydantic model per wire payload, shared by the MQTT plugin and the REST views.

Field names follow the seed API exactly (`tencen_rtc` included). Topic strings are built
only in `topics`, so no other module spells a topic.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

__all__ = [
    "CallInfo",
    "CallRequest",
    "ControlBody",
    "ControlMessage",
    "DeviceStatus",
    "EndSessionRequest",
    "ErrorBody",
    "IncomingCall",
    "MqttCallRequest",
    "SystemMessage",
    "TencentRtc",
    "topics",
]

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@-]+$")]
Timestamp = Annotated[int, Field(ge=0, le=10**14)]
Reason = Annotated[str, Field(max_length=128)]


class _In(BaseModel):
    """Inbound payloads: unknown fields are ignored (clients send extras), types are strict-ish."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _id_from_int(v: Any) -> Any:
    # Older clients send numeric ids ("device_id": 1); ids are strings on the wire we send.
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


class TencentRtc(_Out):
    sdk_app_id: int
    user_id: str
    user_sig: str
    room_id: str
    room_id_type: Literal["string"] = "string"


class CallInfo(_In):
    call_id: Annotated[str, Field(min_length=1, max_length=64)]
    action: Annotated[str, Field(min_length=1, max_length=32)]
    reason: Reason | None = None
    timestamp: Timestamp | None = None


class ControlBody(_In):
    """`POST /api/mqtt/controller/*` and the payload a party publishes on its control topic."""

    call_info: CallInfo
    resident_id: Id | None = None  # local-only mode: an anonymous REST caller names itself
    device_id: Id | None = None

    @model_validator(mode="before")
    @classmethod
    def _coerce_ids(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: _id_from_int(v) if k in ("resident_id", "device_id") else v for k, v in data.items()}
        return data


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
        data = {k: _id_from_int(v) for k, v in data.items()}
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

    @model_validator(mode="before")
    @classmethod
    def _coerce(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: _id_from_int(v) if k == "household_number" else v for k, v in data.items()}
        return data


class IncomingCall(_Out):
    origin: Literal["server"] = "server"
    call_id: str
    device_id: str
    household_number: str
    call_info: dict[str, Any]
    tencen_rtc: TencentRtc
    ring_timeout_s: float
    timestamp: int


class ErrorBody(_Out):
    code: int
    message: str


class ControlMessage(_Out):
    """What the server publishes on a party's control topic."""

    origin: Literal["server"] = "server"
    call_info: dict[str, Any]
    resident_id: str | None = None
    error: ErrorBody | None = None
    request_id: str | None = None


class EndSessionRequest(_In):
    call_id: Annotated[str, Field(min_length=1, max_length=64)]
    reason: Reason | None = None


class DeviceStatus(_In):
    device_id: Id
    online: StrictBool = True
    battery: Annotated[StrictInt, Field(ge=0, le=100)] | None = None
    properties: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _coerce(cls, data: Any) -> Any:
        if isinstance(data, dict) and "device_id" in data:
            return {**data, "device_id": _id_from_int(data["device_id"])}
        return data


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
    channel_id: Annotated[str, Field(min_length=1, max_length=64)]


class RtcCallRequest(_In):
    device_id: Id
    resident_id: Id

    @model_validator(mode="before")
    @classmethod
    def _coerce(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: _id_from_int(v) for k, v in data.items()}
        return data


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


class DirectoryPatch(_In):
    """`PATCH /api/admin/{kind}/{id}`: rename an entry, or move a resident or device to another household."""

    name: Annotated[str, Field(max_length=128)] | None = None
    household_number: Id | None = None


class topics:
    """The seed's topic structure; the only place topic strings are spelled."""

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
    def device_status(device_id: str) -> str:
        return f"devices/{device_id}/status"

    @staticmethod
    def system(message_type: str) -> str:
        return f"system/{message_type}"
