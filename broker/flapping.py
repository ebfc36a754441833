"""Connection-flapping ban (as EMQX's flapping detect): too many CONNECTs of one client id in a
window bans that client id for a while. Pure; clock injected."""

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
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()
        self._banned: dict[str, float] = {}

    def banned(self, client_id: str) -> bool:
        until = self._banned.get(client_id)
        if until is None:
            return False
        if self._clock() >= until:
            del self._banned[client_id]
            return False
        return True

    def connected(self, client_id: str) -> bool:
        """Record an accepted CONNECT; False (and the id is banned) if it is one too many."""
        now = self._clock()
        times = self._seen.pop(client_id, None) or deque()
        times.append(now)
        while times and times[0] <= now - self.window_s:
            times.popleft()
        self._seen[client_id] = times
        if len(self._seen) > _MAX_KEYS:
            self._seen.popitem(last=False)
        if len(times) > self.max_connects and self.ban_s > 0:
            self._banned[client_id] = now + self.ban_s
            times.clear()
            return False
        return True
