"""What an ended call was for each resident it was meant for, and a resident's call-history entry. Pure.

The fields follow what TUICallKit's call records and 2N's call log keep: who answered (resident and
client), ring and talk duration, the end reason and the outcome for this resident (answered, missed,
declined, ...). Entries are plain dicts built in `entry`, the one place a field is added (a door or
snapshot field joins here, from a row that carries it).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from broker.core.states import CallSession, EndReason, Party, Role

__all__ = ["MISSED_END_REASONS", "Outcome", "entry", "outcomes"]

# A call that ended so without being answered is missed by each target that did not decline it.
MISSED_END_REASONS = frozenset({EndReason.TIMEOUT, EndReason.CANCELLED, EndReason.DND})


class Outcome:
    ANSWERED = "answered"  # this resident answered
    ANSWERED_ELSEWHERE = "answered_elsewhere"  # another resident (or the forwarding fallback) answered
    DECLINED = "declined"  # this resident rejected (or hung up while ringing)
    MISSED = "missed"  # rang (or skipped for do-not-disturb), nobody answered, the call timed out / was cancelled
    NOT_ANSWERED = "not_answered"  # nobody answered, for another reason (another's reject, forced, offline)


def outcomes(call: CallSession) -> dict[str, str]:
    """The outcome of an ended call for each resident it was meant for (forward fallbacks included)."""
    out: dict[str, str] = {}
    # an unnamed member's reject (local-only REST) is each target's
    household_last = call.last_actions.get(Party(Role.HOUSEHOLD, call.household_number).key)
    for rid in call.all_targets:
        last = call.last_actions.get(Party(Role.RESIDENT, rid).key) or household_last
        if call.answered_by == rid:
            out[rid] = Outcome.ANSWERED
        elif call.answered_by is not None or call.connected_at is not None:  # None: the household answered
            out[rid] = Outcome.ANSWERED_ELSEWHERE
        elif last in ("rejected", "hangup"):
            out[rid] = Outcome.DECLINED
        elif call.end_reason in MISSED_END_REASONS:
            out[rid] = Outcome.MISSED
        else:
            out[rid] = Outcome.NOT_ANSWERED
    return out


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def entry(row: Mapping[str, Any]) -> dict[str, Any]:
    """One resident's history entry from a `calls` row joined with its `resident_calls` row."""
    start, connected, ended = row["start_time"], row["connected_at"], row["ended_at"]
    rang_until = connected if connected is not None else ended
    forward_to = row["forward_to"] or []
    return {
        "call_id": row["call_id"],
        "device_id": row["device_id"],
        "household_number": row["household_number"],
        "target_resident_ids": row["target_resident_ids"],
        "outcome": row["outcome"],
        "missed": row["outcome"] == Outcome.MISSED,
        "seen": bool(row["seen"]),
        "answered_by": row["resident_id"],
        "answered_client_id": row["answered_client_id"],
        "end_reason": row["end_reason"],
        "start_time": _iso(start),
        "connected_at": _iso(connected),
        "ended_at": _iso(ended),
        "ring_duration_s": round(rang_until - start, 1) if rang_until is not None else None,
        "talk_duration_s": round(ended - connected, 1) if connected is not None and ended is not None else 0.0,
        "forwarded": row["forwarded_at"] is not None,
        "forwarded_at": _iso(row["forwarded_at"]),
        "forward_to": forward_to if row["forwarded_at"] is not None else [],
        "dnd_resident_ids": row["dnd_resident_ids"] or [],
    }
