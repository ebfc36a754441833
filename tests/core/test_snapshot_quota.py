"""SnapshotQuota: which stored snapshots to delete, oldest first, so a new one fits the device and total quotas."""

from __future__ import annotations

from broker.core.snapshot_quota import SnapshotQuota


def filled(*entries: tuple[str, str, int], device: int = 300, total: int = 500) -> SnapshotQuota:
    q = SnapshotQuota(device, total)
    for call_id, device_id, size in entries:
        q.add(call_id, device_id, size)
    return q


def test_nothing_to_delete_while_the_new_one_fits():
    """Within both quotas, an upload deletes nothing."""
    q = filled(("a", "1", 100), ("b", "2", 100))
    assert q.victims("c", "1", 200) == []


def test_over_the_device_quota_deletes_the_devices_oldest_only():
    """A device over its quota loses its own oldest, never another device's."""
    q = filled(("a", "1", 100), ("x", "2", 100), ("b", "1", 100), ("c", "1", 100))
    assert q.victims("d", "1", 100) == ["a"]
    assert q.victims("d", "1", 250) == ["a", "b", "c"]


def test_over_the_total_deletes_the_oldest_of_anyone():
    """Within its device quota but over the total: the oldest snapshot of any device goes."""
    q = filled(("x", "2", 200), ("a", "1", 100), ("y", "3", 150))
    assert q.victims("b", "1", 100) == ["x"]


def test_a_calls_new_upload_replaces_its_own_snapshot():
    """Re-uploading to a call counts its previous bytes as freed, never picks itself, and makes it the newest."""
    q = filled(("a", "1", 100), ("b", "1", 100), ("c", "1", 100))
    assert q.victims("a", "1", 100) == []
    q.add("a", "1", 100)
    assert q.used("1") == 300
    assert q.total == 300
    assert q.victims("d", "1", 100) == ["b"]


def test_remove_and_lowered_quotas():
    """`remove` gives bytes back; `over_quota` names the oldest to delete after the quotas were lowered."""
    q = filled(("a", "1", 200), ("b", "1", 200), ("x", "2", 200), device=1000, total=1000)
    q.remove("b")
    assert q.used("1") == 200
    assert q.total == 400
    assert "b" not in q
    assert len(q) == 2
    q.add("b", "1", 200)
    q.add("c", "1", 200)
    q.device_quota, q.total_quota = 300, 1000
    assert q.over_quota() == ["a", "b"]
    q.total_quota = 300
    assert q.over_quota() == ["a", "x", "b"]
