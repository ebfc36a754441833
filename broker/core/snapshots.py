"""Visitor snapshots: a door station attaches one JPEG to its live call (the last upload wins).

Stored as `<data_dir>/snapshots/<call_id>.jpg` (written to a temporary file, then renamed), noted in the
call's row (`snapshot_at`), announced to the residents still in the call with a control message
`{"call_info": {"action": "snapshot"}, "snapshot_url"}`, and served to the call's parties and admins.
Files older than `snapshots.retention_days` are deleted at start-up and, while uploads come in, at most
once an hour. As 2N's and DoorBird's: one still per call, taken when the visitor rings.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.config import SnapshotsConfig
from broker.core import topics
from broker.core.calls import CallService, Publisher, now_ms
from broker.core.errors import BadRequest, Conflict, DomainError, Forbidden, NotFound
from broker.core.states import CallSession, CallState, Party
from broker.core.store import Store
from broker.core.wire.calls import ControlMessage, snapshot_url

__all__ = ["SnapshotService", "TooLarge", "is_jpeg"]

log = logging.getLogger("intercom.snapshots")
PRUNE_EVERY_S = 3600.0


class TooLarge(DomainError):
    status = 413
    default_reason = "too_large"


def is_jpeg(data: bytes) -> bool:
    """JPEG's start-of-image marker followed by another marker, and its end-of-image marker last."""
    return len(data) >= 8 and data[:3] == b"\xff\xd8\xff" and data[-2:] == b"\xff\xd9"


class SnapshotService:
    def __init__(self, store: Store, calls: CallService, config: SnapshotsConfig, root: Path,
                 publisher: Publisher, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.calls = calls
        self.config = config
        self.root = root
        self.publisher = publisher
        self.clock = clock
        self._pruned_at = 0.0

    def path(self, call_id: str) -> Path:
        return self.root / f"{call_id}.jpg"

    # upload ---------------------------------------------------------------------------------------

    def check_upload(self, call_id: str, device_id: str | None, size: int | None = None) -> CallSession:
        """Before the body is read: the call is live and `device_id` (None: admin or anonymous) is its device."""
        call = self.calls.live(call_id)
        if call is None:
            self.calls.device_for(call_id)  # NotFound for an unknown call
            raise Conflict(f"call {call_id} has ended; a snapshot is attached while the call rings or is connected",
                           "call_ended")
        if device_id is not None and device_id != call.device_id:
            raise Forbidden(f"device {device_id} may not attach a snapshot to call {call_id} of device "
                            f"{call.device_id}")
        if size is not None and size > self.config.max_bytes:
            raise TooLarge(f"snapshot of {size} bytes is over snapshots.max_bytes ({self.config.max_bytes})")
        return call

    async def attach(self, call_id: str, device_id: str | None, data: bytes) -> dict[str, Any]:
        self.check_upload(call_id, device_id, len(data))
        if not is_jpeg(data):
            raise BadRequest("body: not a JPEG image (must start with FF D8 FF and end with FF D9)", "not_jpeg")
        await asyncio.to_thread(_write, self.root, self.path(call_id), data)
        now = self.clock()
        self.store.set_call_fields(call_id, {"snapshot_at": now})
        url = snapshot_url(call_id)
        call = self.calls.live(call_id)
        if call is not None:  # still live after the write: tell its residents
            msg = ControlMessage(call_info={"call_id": call_id, "action": "snapshot", "timestamp": now_ms()},
                                 snapshot_url=url).model_dump_json(exclude_none=True).encode()
            for rid in _residents_in(call):
                self.publisher.publish(topics.resident_control(rid), msg, qos=1)
        self.maybe_prune(now)
        return {"call_id": call_id, "snapshot_url": url, "bytes": len(data)}

    # reads -------------------------------------------------------------------------------------

    async def read(self, call_id: str, viewer: Party | None) -> bytes:
        """The call's snapshot for one of its parties (None: admin or anonymous local caller)."""
        self.calls.session(call_id, viewer)  # NotFound, or Forbidden for a viewer outside the call
        row = self.store.get_call(call_id)
        if row is None or not row.get("snapshot_at"):
            raise NotFound(f"call {call_id} has no snapshot")
        try:
            return await asyncio.to_thread(self.path(call_id).read_bytes)
        except FileNotFoundError:
            raise NotFound(f"call {call_id} has no snapshot") from None

    # retention ------------------------------------------------------------------------------------

    def maybe_prune(self, now: float) -> None:
        if now - self._pruned_at >= PRUNE_EVERY_S:
            self.prune(now)

    def prune(self, now: float | None = None) -> int:
        """Delete snapshots older than `snapshots.retention_days`; returns how many calls lost theirs."""
        now = self.clock() if now is None else now
        self._pruned_at = now
        cutoff = now - self.config.retention_days * 86400
        expired = self.store.calls_with_snapshot_before(cutoff)
        for call_id in expired:
            self.path(call_id).unlink(missing_ok=True)
            self.store.set_call_fields(call_id, {"snapshot_at": None})
        try:  # files no row points to any more (a crash between the write and the row)
            with os.scandir(self.root) as entries:
                for entry in entries:
                    if entry.is_file() and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
        except FileNotFoundError:
            pass
        if expired:
            log.info("snapshots: deleted %d older than %g days", len(expired), self.config.retention_days)
        return len(expired)


def _residents_in(call: CallSession) -> list[str]:
    if call.state is CallState.CONNECTED and call.answered_by is not None:
        return [call.answered_by]
    return sorted(call.ringing)


def _write(root: Path, path: Path, data: bytes) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
