"""Keyed token buckets (per IP, per principal) with bounded memory; pure, clock injected."""

from __future__ import annotations

import ipaddress
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import ClassVar

__all__ = ["KeyedLimiter", "LogThrottle", "is_exempt"]

_MAX_KEYS = 10_000


class KeyedLimiter:
    """`take(key)` spends one token from `key`'s bucket; `retry_after(key)` says when one is back."""

    def __init__(self, per_s: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = _MAX_KEYS) -> None:
        self.per_s = per_s
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        # key -> (tokens, last refill time); least recently used first, so eviction is O(1)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _tokens(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - last) * self.per_s)

    def has(self, key: str) -> bool:
        """True if `key` has a token left (without spending it)."""
        return self._tokens(key, self._clock()) >= 1.0

    def take(self, key: str) -> bool:
        """Spend a token; False (and nothing spent) if the bucket is empty."""
        now = self._clock()
        tokens = self._tokens(key, now)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def retry_after(self, key: str) -> float:
        """Seconds until `key` has a whole token again (0 if it has one now)."""
        missing = 1.0 - self._tokens(key, self._clock())
        return max(0.0, missing / self.per_s)


def is_exempt(address: str | None, networks: Iterable[str]) -> bool:
    """True if `address` lies in one of `networks` (CIDR strings)."""
    if not address:
        return False
    return _exempt(address, tuple(networks))


# Checked on every CONNECT and login: parsing the address and every network each time was ~10 % of
# a connect storm's CPU. Bounded, so a flood from many addresses only churns the cache.
@lru_cache(maxsize=4096)
def _exempt(address: str, networks: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return any(ip in net for net in _parse(networks))


@lru_cache(maxsize=16)
def _parse(networks: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(net, strict=False) for net in networks)


class LogThrottle:
    """At most one log line per `key` per `interval_s`; the lines in between are counted, not written.

    Refusals are attacker-driven: logging each one would turn a flood into a log (and CPU) flood. Every
    client-driven log line goes through `log`, which also writes the "(N more since last logged)" tail, and
    puts client-supplied text in with `%r`, so a newline in it is escaped and cannot forge a log line.
    """

    _every: ClassVar[weakref.WeakSet[LogThrottle]] = weakref.WeakSet()

    def __init__(self, interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        LogThrottle._every.add(self)

    @classmethod
    def forget_all(cls) -> None:
        """Every throttle starts afresh (throttles are process state: tests, each on a new server, need this)."""
        for throttle in cls._every:
            throttle._last.clear()
            throttle._suppressed.clear()

    def check(self, key: str) -> int | None:
        """None: stay quiet. Otherwise log now; the number is how many were suppressed since."""
        now = self._clock()
        if now - self._last.get(key, -1e18) < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        if len(self._last) > _MAX_KEYS:
            self._last.clear()
            self._suppressed.clear()
        self._last[key] = now
        return self._suppressed.pop(key, 0)

    def log(self, logger: logging.Logger, level: int, key: str, msg: str, *args: object,
            extra: dict[str, object] | None = None, exc_info: bool = False) -> None:
        """`logger.log(level, msg, *args, extra=extra, exc_info=exc_info)` unless `key` was logged within
        `interval_s`; the line says how many were held back since the last one. Client-supplied `args` belong
        in `%r`."""
        if (suppressed := self.check(key)) is None or not logger.isEnabledFor(level):
            return
        if suppressed:
            msg += " (%d more since last logged)"
            args = (*args, suppressed)
        logger.log(level, msg, *args, extra=extra, exc_info=exc_info)
