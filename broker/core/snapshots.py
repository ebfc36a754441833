"""Visitor snapshots: a door station attaches one JPEG to its live call (the last upload wins).

Stored as `<data_dir>/snapshots/<call_id>.jpg`, noted in the call's row (`snapshot_at`), announced to the
residents still in the call with a control message `{"call_info": {"action": "snapshot"}, "snapshot_url"}`,
and served to the call's parties and admins. Files older than `snapshots.retention_days` are deleted at
start-up and, while uploads come in, at most once an hour. As 2N's and DoorBird's: one still per call,
taken when the visitor rings.

The disk is bounded three ways: an upload that would take a device over `snapshots.device_quota_bytes`,
or all of them over `snapshots.total_quota_bytes`, first deletes the oldest snapshots (the device's, then
anyone's); one that would leave less than `snapshots.min_free_bytes` free on the disk is refused (507
`storage_full`), as is one the disk has no room for (ENOSPC), so the databases beside keep their room.

Each upload writes its own temporary file (`<call_id>.<random>.tmp`, removed on any failure) in a worker
thread; moving it into place, the quota's bookkeeping and the row happen on the loop, so concurrent uploads
to one call each land whole and the last one moved stays (the stored image is one that got 200).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.config import SnapshotsConfig
from broker.core import topics
from broker.core.calls import CallService, Publisher, now_ms
from broker.core.errors import BadRequest, Conflict, DomainError, Forbidden, NotFound
from broker.core.snapshot_quota import SnapshotQuota
from broker.core.states import CallSession, CallState, Party
from broker.core.store import Store, StoreError
from broker.core.wire.calls import ControlMessage, snapshot_url
from broker.limiter import LogThrottle

__all__ = ["SnapshotService", "StorageFailed", "StorageFull", "TooLarge", "is_jpeg"]

log = logging.getLogger("intercom.snapshots")
_quiet = LogThrottle(60.0)
PRUNE_EVERY_S = 3600.0
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})


class TooLarge(DomainError):
    status = 413
    default_reason = "too_large"


class StorageFull(DomainError):
    """507: the disk is at `snapshots.min_free_bytes` (or full); nothing was stored."""

    status = 507
    default_reason = "storage_full"


class StorageFailed(DomainError):
    """503: the file could not be written (an I/O error); nothing was stored."""

    status = 503
    default_reason = "storage_error"


def is_jpeg(data: bytes) -> bool:
    """JPEG's start-of-image marker followed by another marker, and its end-of-image marker last."""
    return len(data) >= 8 and data[:3] == b"\xff\xd8\xff" and data[-2:] == b"\xff\xd9"


class SnapshotService:
    def __init__(self, store: Store, calls: CallService, config: SnapshotsConfig, root: Path,
                 publisher: Publisher, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.calls = calls
        self.quota = SnapshotQuota(config.device_quota_bytes, config.total_quota_bytes)
        self.config = config
        self.root = root
        self.publisher = publisher
        self.clock = clock
        self._pruned_at = 0.0
        self._loaded = False

    @property
    def config(self) -> SnapshotsConfig:
        return self._config

    @config.setter
    def config(self, config: SnapshotsConfig) -> None:
        """New settings (a reload) apply from the next upload, quotas included."""
        self._config = config
        self.quota.device_quota = config.device_quota_bytes
        self.quota.total_quota = config.total_quota_bytes

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
        device = self.check_upload(call_id, device_id, len(data)).device_id
        if not is_jpeg(data):
            raise BadRequest("body: not a JPEG image (must start with FF D8 FF and end with FF D9)", "not_jpeg")
        self._load()
        tmp = await asyncio.to_thread(_write_temp, self.root, call_id, data, self.config.min_free_bytes)
        try:
            self._put(call_id, device, tmp, len(data))
        except BaseException:
            _discard(tmp)
            raise
        now = self.clock()
        try:
            self.store.set_call_fields(call_id, {"snapshot_at": now})
        except BaseException:  # not noted: not kept either (the upload is told it failed)
            self._drop(call_id)
            raise
        url = snapshot_url(call_id)
        call = self.calls.live(call_id)
        if call is not None:  # still live after the write: tell its residents
            msg = ControlMessage(call_info={"call_id": call_id, "action": "snapshot", "timestamp": now_ms()},
                                 snapshot_url=url).model_dump_json(exclude_none=True).encode()
            for rid in _residents_in(call):
                self.publisher.publish(topics.resident_control(rid), msg, qos=1)
        self.maybe_prune(now)
        return {"call_id": call_id, "snapshot_url": url, "bytes": len(data)}

    def _put(self, call_id: str, device_id: str, tmp: Path, size: int) -> None:
        """On the loop: make room within the quotas (oldest first), then move the written file into place."""
        victims = self.quota.victims(call_id, device_id, size)
        for victim in victims:
            self._evict(victim)
        if victims and (suppressed := _quiet.check(f"evict {device_id}")) is not None:
            log.info("snapshots: device %s's upload deleted %d older snapshot(s) to stay within "
                     "snapshots.device_quota_bytes/total_quota_bytes (%d such uploads since last logged)",
                     device_id, len(victims), suppressed)
        try:
            os.replace(tmp, self.path(call_id))
        except OSError as exc:
            raise StorageFailed(f"snapshot could not be stored: {exc.strerror}") from exc
        self.quota.add(call_id, device_id, size)

    def _evict(self, call_id: str) -> None:
        """Delete one stored snapshot, file and URL."""
        self._drop(call_id)
        try:
            self.store.set_call_fields(call_id, {"snapshot_at": None})
        except (StoreError, DomainError) as exc:  # the file is gone: reads answer 404 until the row catches up
            log.warning("snapshots: could not clear call %s's snapshot_url: %s", call_id, exc)

    def _drop(self, call_id: str) -> None:
        self.quota.remove(call_id)
        try:
            self.path(call_id).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("snapshots: could not delete %s: %s", self.path(call_id), exc.strerror)

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
        self._load()
        now = self.clock() if now is None else now
        self._pruned_at = now
        cutoff = now - self.config.retention_days * 86400
        expired = self.store.calls_with_snapshot_before(cutoff)
        for call_id in expired:
            self._drop(call_id)
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

    def _load(self) -> None:
        """Once, before the first upload or prune: count the stored snapshots into the quotas, delete what no
        upload was acknowledged for (temporary files, files whose call row does not name them), and delete
        the oldest ones over quotas lowered since they were stored."""
        if self._loaded:
            return
        self._loaded = True
        found: list[tuple[float, str, str, int]] = []
        try:
            with os.scandir(self.root) as entries:
                files = [(entry.name, entry.path, entry.stat().st_size) for entry in entries if entry.is_file()]
        except FileNotFoundError:
            return
        for name, path, size in files:
            if name.endswith(".tmp"):  # an upload cut off by a crash
                Path(path).unlink(missing_ok=True)
            elif name.endswith(".jpg"):
                call_id = name.removesuffix(".jpg")
                row = self.store.get_call(call_id)
                if row is None or not row.get("snapshot_at"):  # moved into place, never acknowledged
                    Path(path).unlink(missing_ok=True)
                else:
                    found.append((float(row["snapshot_at"]), call_id, str(row["device_id"]), size))
        for _, call_id, device_id, size in sorted(found):
            self.quota.add(call_id, device_id, size)
        for call_id in self.quota.over_quota():
            self._evict(call_id)


def _residents_in(call: CallSession) -> list[str]:
    if call.state is CallState.CONNECTED and call.answered_by is not None:
        return [call.answered_by]
    return sorted(call.ringing)


def _write_temp(root: Path, call_id: str, data: bytes, min_free: int) -> Path:
    """In a worker thread: `data` in a new temporary file beside the snapshots, synced. StorageFull when the disk
    would keep less than `min_free` bytes (or has no room), StorageFailed on another I/O error; either way no
    file is left behind."""
    tmp: Path | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        disk = os.statvfs(root)
        free = disk.f_bavail * disk.f_frsize
        if free - len(data) < min_free:
            if (suppressed := _quiet.check("low disk")) is not None:
                log.warning("snapshots: refusing uploads: %d bytes free on the disk of %s, snapshots.min_free_bytes "
                            "is %d (%d more refused since last logged)", free, root, min_free, suppressed)
            raise StorageFull(f"not enough free disk space for a snapshot ({free} bytes free, "
                              f"snapshots.min_free_bytes {min_free})")
        fd, name = tempfile.mkstemp(prefix=f"{call_id}.", suffix=".tmp", dir=root)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp
    except BaseException as exc:
        if tmp is not None:
            _discard(tmp)
        if isinstance(exc, OSError):
            if exc.errno in _NO_ROOM:
                raise StorageFull(f"the disk has no room for a snapshot: {exc.strerror}") from exc
            log.warning("snapshots: could not write a snapshot of call %s: %s", call_id, exc)
            raise StorageFailed(f"snapshot could not be written: {exc.strerror}") from exc
        raise


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("snapshots: could not delete %s: %s", tmp, exc.strerror)
