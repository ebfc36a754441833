"""The bytes of stored visitor snapshots, per device and in all, and which to delete (oldest first) so that a
new one fits `snapshots.device_quota_bytes` and `snapshots.total_quota_bytes`. Pure: no files, no clock."""

from __future__ import annotations

__all__ = ["SnapshotQuota"]


class SnapshotQuota:
    """Stored snapshots by call id, oldest first (a call's new upload makes its snapshot the newest)."""

    def __init__(self, device_quota: int, total_quota: int) -> None:
        self.device_quota = device_quota
        self.total_quota = total_quota
        self.total = 0
        self._size: dict[str, int] = {}  # call id -> bytes, oldest first
        self._device: dict[str, str] = {}  # call id -> its device
        self._by_device: dict[str, dict[str, int]] = {}  # device -> {call id: bytes}, oldest first

    def __len__(self) -> int:
        return len(self._size)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._size

    def used(self, device_id: str) -> int:
        return sum(self._by_device.get(device_id, {}).values())

    def add(self, call_id: str, device_id: str, size: int) -> None:
        """Record `call_id`'s snapshot (replacing its previous one) as the newest."""
        self.remove(call_id)
        self._size[call_id] = size
        self._device[call_id] = device_id
        self._by_device.setdefault(device_id, {})[call_id] = size
        self.total += size

    def remove(self, call_id: str) -> None:
        size = self._size.pop(call_id, None)
        if size is None:
            return
        device_id = self._device.pop(call_id)
        mine = self._by_device[device_id]
        del mine[call_id]
        if not mine:
            del self._by_device[device_id]
        self.total -= size

    def victims(self, call_id: str, device_id: str, size: int) -> list[str]:
        """The stored snapshots to delete, oldest first, so that `size` bytes for `call_id` (replacing its own
        snapshot) fit: first the device's oldest, then the oldest of any device."""
        replaced = self._size.get(call_id, 0)
        mine = self._by_device.get(device_id, {})
        device_used = sum(mine.values()) - (replaced if self._device.get(call_id) == device_id else 0) + size
        total = self.total - replaced + size
        chosen: dict[str, None] = {}
        for victim, bytes_ in mine.items():
            if device_used <= self.device_quota:
                break
            if victim != call_id:
                chosen[victim] = None
                device_used -= bytes_
                total -= bytes_
        for victim, bytes_ in self._size.items():
            if total <= self.total_quota:
                break
            if victim != call_id and victim not in chosen:
                chosen[victim] = None
                total -= bytes_
        return list(chosen)

    def over_quota(self) -> list[str]:
        """The snapshots to delete, oldest first, to bring every device and the total within the quotas
        (after the quotas were lowered)."""
        chosen: dict[str, None] = {}
        total = self.total
        for mine in self._by_device.values():
            used = sum(mine.values())
            for victim, bytes_ in mine.items():
                if used <= self.device_quota:
                    break
                chosen[victim] = None
                used -= bytes_
                total -= bytes_
        for victim, bytes_ in self._size.items():
            if total <= self.total_quota:
                break
            if victim not in chosen:
                chosen[victim] = None
                total -= bytes_
        age = {call_id: i for i, call_id in enumerate(self._size)}
        return sorted(chosen, key=age.__getitem__)
