"""Connection-flapping ban (as EMQX's flapping detect): too many CONNECTs of one client id in a
window bans that client id for a while. Pure; clock injected.

Memory follows the client ids seen in the last `window_s` (and those banned now), not every id ever
seen: both maps are kept in expiry order and their expired heads are dropped on each CONNECT.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

__all__ = ["FlappingGuard"]

_MAX_KEYS = 10_000


class FlappingGuard:
    def __init__(self, max_connects: int, window_s: float, ban_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_connects = max_connects
        self.window_s = window_s
        self.ban_s = ban_s
        self._clock = clock
        # client id -> its CONNECT times in the window; least recently connected first
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()
        # client id -> banned until; bans are all `ban_s` long, so insertion order is expiry order
        self._banned: OrderedDict[str, float] = OrderedDict()

    @property
    def tracked(self) -> tuple[int, int]:
        """(client ids with CONNECTs in the window, client ids banned), expired ones not yet dropped included."""
        return len(self._seen), len(self._banned)

    def banned(self, client_id: str) -> bool:
        until = self._banned.get(client_id)
        if until is None:
            return False
        if self._clock() >= until:
            del self._banned[client_id]
            return False
        return True

    def lift(self, client_id: str) -> bool:
        """An operator lifts the ban (and forgets the recent CONNECTs); False if the id was not banned."""
        self._seen.pop(client_id, None)
        return self._banned.pop(client_id, None) is not None

    def connected(self, client_id: str) -> bool:
        """Record an accepted CONNECT; False (and the id is banned) if it is one too many."""
        now = self._clock()
        self._prune(now)
        times = self._seen.pop(client_id, None) or deque()
        times.append(now)
        while times and times[0] <= now - self.window_s:
            times.popleft()
        self._seen[client_id] = times
        if len(self._seen) > _MAX_KEYS:
            self._seen.popitem(last=False)
        if len(times) > self.max_connects and self.ban_s > 0:
            self._banned.pop(client_id, None)  # re-inserted at the end: keeps expiry order
            self._banned[client_id] = now + self.ban_s
            if len(self._banned) > _MAX_KEYS:
                self._banned.popitem(last=False)
            times.clear()
            return False
        return True

    def _prune(self, now: float) -> None:
        """Drop ids whose last CONNECT left the window, and bans that ran out (both from the oldest)."""
        seen = self._seen
        while seen:
            times = seen[next(iter(seen))]
            if times and times[-1] > now - self.window_s:
                break
            seen.popitem(last=False)
        banned = self._banned
        while banned and banned[next(iter(banned))] <= now:
            banned.popitem(last=False)
