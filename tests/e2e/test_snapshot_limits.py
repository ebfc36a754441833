"""Visitor snapshots cannot fill the disk: per-device and total quotas delete the oldest, a free-space watermark
refuses uploads with 507 (on a real small filesystem: a tmpfs of a few MiB when the tests run as root), no
temporary file outlives a failed upload, and concurrent uploads to one call each land whole."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.config import SnapshotsConfig
from tests.support.doors import JPEG

KIB = 1024


def jpeg(size: int, fill: int = 0) -> bytes:
    """A JPEG (as `is_jpeg` checks it) of exactly `size` bytes; `fill` tells uploads apart."""
    return JPEG[:-2] + bytes([fill % 251]) * (size - len(JPEG)) + b"\xff\xd9"


def free_bytes(path: Path) -> int:
    disk = os.statvfs(path)
    return disk.f_bavail * disk.f_frsize


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("*.tmp")) if root.exists() else []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[object]:
    """`mount(dir, size)`: a tmpfs of `size` at `dir` (unmounted at teardown); skips unless the tests run as root."""
    mounted: list[Path] = []

    def mount(directory: Path, size: str) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("needs root to mount a small tmpfs")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                              capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
        mounted.append(directory)
        return directory

    yield mount
    for directory in reversed(mounted):
        if subprocess.run(["umount", str(directory)], capture_output=True, timeout=10).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], capture_output=True, timeout=10)


async def upload(h, call_id: str, data: bytes) -> tuple[int, dict]:
    async with h.http.post(f"{h.base}/api/calls/{call_id}/snapshot", data=data,
                           headers={"Content-Type": "image/jpeg"}) as r:
        return r.status, await r.json()


async def fetch(h, call_id: str) -> tuple[int, bytes, str | None]:
    async with h.http.get(f"{h.base}/api/calls/{call_id}/snapshot") as r:
        return r.status, await r.read(), r.headers.get("X-Content-Type-Options")


async def end(h, call_id: str) -> None:
    body = {"call_info": {"call_id": call_id, "action": "cancelled"}}
    status, resp = await h.post("/api/mqtt/controller/device", body)
    assert status == 200, resp


async def call_with_snapshot(h, device: str, data: bytes) -> tuple[str, int, dict]:
    """Start a call from `device`, upload `data` to it, end it: (call id, upload status, upload response)."""
    call_id = (await h.start_call(device))["call_id"]
    status, resp = await upload(h, call_id, data)
    await end(h, call_id)
    return call_id, status, resp


async def test_quotas_delete_the_oldest_snapshots_first(make_harness):
    """Device quota 3 KiB, total 5 KiB, 1 KiB uploads: device 1's 4th upload deletes its 1st (file, GET 404,
    history URL); device 5's 3rd upload (total 6 KiB) deletes the oldest of anyone's, device 1's 2nd."""
    h = await make_harness(snapshots={"max_bytes": KIB, "device_quota_bytes": 3 * KIB, "total_quota_bytes": 5 * KIB,
                                      "min_free_bytes": 0})
    root = h.server.settings.server.data_dir / "snapshots"
    d1 = []
    for i in range(4):
        call_id, status, resp = await call_with_snapshot(h, "1", jpeg(KIB, i))
        assert status == 200, resp
        d1.append(call_id)
    assert [(await fetch(h, c))[0] for c in d1] == [404, 200, 200, 200]
    assert not (root / f"{d1[0]}.jpg").exists()
    _, resp = await h.get("/api/calls?device_id=1")
    urls = {row["call_id"]: row["snapshot_url"] for row in resp["data"]}
    assert urls[d1[0]] is None
    assert urls[d1[1]] is not None
    d5 = []
    for i in range(3):
        call_id, status, resp = await call_with_snapshot(h, "5", jpeg(KIB, 10 + i))
        assert status == 200, resp
        d5.append(call_id)
    assert [(await fetch(h, c))[0] for c in d1 + d5] == [404, 404, 200, 200, 200, 200, 200]
    assert sum(p.stat().st_size for p in root.glob("*.jpg")) == 5 * KIB
    assert (await fetch(h, d5[2]))[1] == jpeg(KIB, 12)


async def test_new_quota_settings_apply_to_the_next_upload(make_harness):
    """Settings replaced while serving (a reload): with the device quota lowered from 4 to 2 KiB, the device's
    next 1 KiB upload deletes the two oldest of its three stored ones."""
    limits = {"max_bytes": KIB, "device_quota_bytes": 4 * KIB, "total_quota_bytes": 8 * KIB, "min_free_bytes": 0}
    h = await make_harness(snapshots=limits)
    calls = [(await call_with_snapshot(h, "1", jpeg(KIB, i)))[0] for i in range(3)]
    h.svc.snapshots.config = SnapshotsConfig(**{**limits, "device_quota_bytes": 2 * KIB})
    call_id, status, _ = await call_with_snapshot(h, "1", jpeg(KIB, 3))
    assert status == 200
    assert [(await fetch(h, c))[0] for c in [*calls, call_id]] == [404, 404, 200, 200]


async def test_a_small_disk_stops_uploads_at_the_watermark_and_the_databases_keep_working(make_harness, small_disk,
                                                                                          tmp_path):
    """data_dir on a 4 MiB tmpfs, `min_free_bytes` 1 MiB, 400 KiB uploads: uploads get 507 `storage_full` in the
    envelope once less than 1 MiB would be left (quotas are far above the disk), no temporary file is left, and
    calls (sqlite writes on the same disk) still start and end."""
    data = small_disk(tmp_path / "data", "4m")
    h = await make_harness(server={"data_dir": str(data)}, snapshots={"min_free_bytes": 1024 * KIB})
    statuses = []
    for i in range(12):  # ~7 fit in 4 MiB less the databases and the 1 MiB reserve
        _, status, resp = await call_with_snapshot(h, "1", jpeg(400 * KIB, i))
        statuses.append(status)
        if status != 200:
            break
    assert statuses[0] == 200, statuses
    assert statuses[-1] == 507, statuses
    assert resp["code"] == 507
    assert resp["data"] == {"reason": "storage_full"}
    assert resp["message"].startswith("存储空间不足: ")
    assert "snapshots.min_free_bytes" in resp["message"]
    assert free_bytes(data) >= 1024 * KIB - 400 * KIB
    assert leftovers(data / "snapshots") == []
    call_id = (await h.start_call("1"))["call_id"]
    await end(h, call_id)
    status, resp = await h.get("/api/calls?device_id=1&limit=50")
    assert status == 200
    assert len(resp["data"]) == len(statuses) + 1


async def test_a_watermark_above_the_free_space_refuses_every_upload(make_harness):
    """`min_free_bytes` above what the disk has: 507 with the envelope, nothing stored, no temporary file."""
    probe = await make_harness()
    free = free_bytes(probe.server.settings.server.data_dir)
    h = await make_harness(snapshots={"min_free_bytes": free + 1024 ** 3})
    call_id = (await h.start_call())["call_id"]
    status, resp = await upload(h, call_id, JPEG)
    assert status == 507
    assert resp["data"] == {"reason": "storage_full"}
    assert (await fetch(h, call_id))[0] == 404
    assert leftovers(h.server.settings.server.data_dir / "snapshots") == []


async def test_a_write_that_runs_out_of_disk_is_507_and_leaves_no_temporary_file(make_harness, small_disk, tmp_path):
    """The snapshots on a 1 MiB tmpfs, filled to 200 KiB free, no watermark: a 600 KiB upload fails mid-write
    (ENOSPC) with 507 `storage_full`, not 500; no temporary file is left; once room is made it is stored."""
    root = small_disk(tmp_path / "snapshots", "1m")
    h = await make_harness(snapshots={"min_free_bytes": 0, "max_bytes": 1024 * KIB})
    assert h.server.settings.server.data_dir / "snapshots" == root
    filler = root / "filler.bin"
    filler.write_bytes(b"\0" * (free_bytes(root) - 200 * KIB))
    call_id = (await h.start_call())["call_id"]
    big = jpeg(600 * KIB, 7)
    status, resp = await upload(h, call_id, big)
    assert status == 507, resp
    assert resp["data"] == {"reason": "storage_full"}, resp
    assert leftovers(root) == []
    assert not (root / f"{call_id}.jpg").exists()
    filler.unlink()
    assert (await upload(h, call_id, big))[0] == 200
    assert (await fetch(h, call_id))[1] == big


async def test_start_up_removes_temporary_and_unacknowledged_files(make_harness, tmp_path):
    """Files a crash left in the snapshot folder (a temporary file, a JPEG no call row names) are deleted at
    start-up; a stored snapshot survives and counts against the quota."""
    h = await make_harness(snapshots={"min_free_bytes": 0})
    call_id = (await h.start_call())["call_id"]
    assert (await upload(h, call_id, JPEG))[0] == 200
    root = h.server.settings.server.data_dir / "snapshots"
    await h.server.stop()
    (root / f"{call_id}.abc123.tmp").write_bytes(b"partial")
    (root / "call-20260101-000000000000.jpg").write_bytes(JPEG)
    h2 = await make_harness(snapshots={"min_free_bytes": 0})
    assert sorted(p.name for p in root.iterdir()) == [f"{call_id}.jpg"]
    assert h2.svc.snapshots.quota.used("1") == len(JPEG)


async def test_concurrent_uploads_to_one_call_each_land_whole(harness):
    """20 uploads of different JPEGs to one call at once, 3 times: each 200 (or 409), never 500; the stored
    image is byte for byte one that got 200; no temporary file is left; served with nosniff."""
    root = harness.server.settings.server.data_dir / "snapshots"
    for round_ in range(3):
        call_id = (await harness.start_call())["call_id"]
        bodies = [jpeg(64 * KIB + i, round_ * 20 + i) for i in range(20)]
        results = await asyncio.gather(*(upload(harness, call_id, b) for b in bodies))
        statuses = [s for s, _ in results]
        assert set(statuses) <= {200, 409}, results
        assert 200 in statuses, results
        status, stored, nosniff = await fetch(harness, call_id)
        assert status == 200
        assert nosniff == "nosniff"
        assert stored in [b for b, s in zip(bodies, statuses, strict=True) if s == 200]
        assert leftovers(root) == []
        await end(harness, call_id)
