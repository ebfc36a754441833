"""A device's health over recent days, from its status changes (`device_status_history`): time online, the
longest outage, battery first and last. Pure."""

from __future__ import annotations

from typing import Any

__all__ = ["summarize"]


def summarize(changes: list[dict[str, Any]], since: float, now: float) -> dict[str, Any]:
    """`changes`: oldest first, the first possibly before `since` (the state the window began in)."""
    online_s = offline_s = longest_outage_s = 0.0
    outage_start: float | None = None
    for i, change in enumerate(changes):
        start = max(change["ts"], since)
        end = changes[i + 1]["ts"] if i + 1 < len(changes) else now
        span = max(0.0, end - start)
        if change["online"]:
            online_s += span
            outage_start = None
        elif change["online"] is False:
            offline_s += span
            outage_start = start if outage_start is None else outage_start
            longest_outage_s = max(longest_outage_s, end - outage_start)
    batteries = [c["battery"] for c in changes if c["battery"] is not None and c["ts"] >= since] or \
        [c["battery"] for c in changes[:1] if c["battery"] is not None]
    known = online_s + offline_s
    return {"online_s": round(online_s, 1), "offline_s": round(offline_s, 1),
            "online_ratio": round(online_s / known, 4) if known else None,
            "longest_outage_s": round(longest_outage_s, 1),
            "battery_first": batteries[0] if batteries else None, "battery_last": batteries[-1] if batteries else None,
            "battery_min": min(batteries) if batteries else None}
