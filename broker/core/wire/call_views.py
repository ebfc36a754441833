"""What the API shows of a call: the reply to starting one, the session view, a history row, the active list.

TypedDicts, not models: the core builds these on every call setup and read, and a dict literal in the field
order below is exactly the JSON the seed clients parse (`tencen_rtc` included) at no validation cost.
pydantic reads them as schemas too (`TypeAdapter(SessionView)`), where a check or an API description wants one.
"""

from typing import Any, NotRequired

from typing_extensions import TypedDict  # pydantic reads `typing.TypedDict` as a schema only from Python 3.12

__all__ = ["ActiveCalls", "CallStarted", "CallStatusView", "HistoryRow", "RtcCredentials", "SessionView",
           "StartedInfo"]


class RtcCredentials(TypedDict):
    """`tencen_rtc`: one party's TRTC credentials for the call's room."""

    sdk_app_id: int
    user_id: str
    user_sig: str
    room_id: str
    room_id_type: str


class StartedInfo(TypedDict):
    call_id: str
    action: str
    timestamp: int  # the caller's own `timestamp` when it sent one, else the server's clock (epoch ms)


class CallStarted(TypedDict):
    """`POST /api/mqtt/call` (and the older routes) and the reply on `devices/{id}/calls/control`."""

    call_id: str
    device_id: str
    household_number: str
    target_resident_ids: list[str]
    call_info: StartedInfo
    tencen_rtc: RtcCredentials  # the device's
    ring_timeout_s: float
    timestamp: int
    dnd_resident_ids: NotRequired[list[str]]  # only when do-not-disturb skipped someone


class _Rings(TypedDict):
    """The ring phase, who rings now, who DND skipped, forwarding, who answered on which client, each party's
    TRTC user id: the last keys of both the session view and a history row."""

    ring_phase: str  # "first" | "forwarded"
    ringing_resident_ids: list[str]
    dnd_resident_ids: list[str]
    forward_to: list[str]
    forward_after_s: float | None
    forwarded_at: str | None
    answered_client_id: str | None
    trtc_user_ids: dict[str, Any]  # {device, residents: {id: user id}}


class _SessionHead(TypedDict):
    """The session view's keys before the ring keys (the JSON's order)."""

    call_id: str
    device_id: str
    resident_id: str | None  # who answered
    start_time: str | None
    status: str
    last_activity: str | None
    tencen_rtc: RtcCredentials
    household_number: str
    target_resident_ids: list[str]
    end_reason: str | None
    ended_at: str | None


class SessionView(_SessionHead, _Rings):
    """`GET /api/mqtt/session`: one call as a party (or the admin) sees it, with the viewer's own `tencen_rtc`."""


# `GET /api/mqtt/calls/active`: a party's live calls, each as its session view.
ActiveCalls = list[SessionView]


class CallStatusView(TypedDict):
    """The `call_status` command's answer and `GET /api/residents/{id}/calls/active`."""

    resident_id: str
    calls: ActiveCalls


class _HistoryHead(TypedDict):
    """A history row's keys before the ring keys (the JSON's order)."""

    call_id: str
    device_id: str
    household_number: str
    target_resident_ids: list[str]
    resident_id: str | None
    status: str
    end_reason: str | None
    start_time: str | None
    connected_at: str | None
    ended_at: str | None
    last_activity: str | None
    snapshot_url: str | None
    door_opened_by: str | None
    door_opened_at: str | None


class HistoryRow(_HistoryHead, _Rings):
    """One stored call as `GET /api/calls` lists it."""
