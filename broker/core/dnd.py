"""Do-not-disturb, per resident and per household: off, on, or on within daily windows.

A window is `from`-`to` in the site's time zone (`site.timezone`; unset: the machine's local zone),
`to` before `from` running past midnight (22:00-07:00), `from` included and `to` excluded. A resident
is in DND when its own setting or its household's is active. Settings are read from memory on every
call start and written through to sqlite.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from broker.core import fastjson
from broker.core.store import Store

__all__ = ["DoNotDisturb", "active", "in_windows"]

Window = tuple[str, str]  # ("22:00", "07:00")
TABLE = "dnd_settings"


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def in_windows(windows: Sequence[Window], minute_of_day: int) -> bool:
    """True if `minute_of_day` (0-1439) falls in one of the daily windows."""
    for start, end in windows:
        a, b = _minutes(start), _minutes(end)
        if (a <= minute_of_day < b) if a < b else (minute_of_day >= a or minute_of_day < b):
            return True
    return False


def active(enabled: bool, schedule: Sequence[Window] | None, minute_of_day: int) -> bool:
    """A setting in force at this time of day: enabled, and inside its schedule if it has one."""
    return enabled and (not schedule or in_windows(schedule, minute_of_day))


class DoNotDisturb:
    def __init__(self, store: Store, timezone: str | None, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.timezone = timezone
        self._zone = ZoneInfo(timezone) if timezone else None
        self.clock = clock
        self._settings: dict[tuple[str, str], tuple[bool, list[Window] | None]] = {
            (r["scope"], r["subject"]): (bool(r["enabled"]),
                                         [(a, b) for a, b in json.loads(r["schedule"])] if r["schedule"] else None)
            for r in store.settings_rows(TABLE)
        }

    def minute_of_day(self, now: float) -> int:
        """Minutes since midnight in the site's zone (the machine's, DST included, when none is set)."""
        if self._zone is None:
            t = time.localtime(now)
            return t.tm_hour * 60 + t.tm_min
        local = datetime.fromtimestamp(now, self._zone)
        return local.hour * 60 + local.minute

    def is_active(self, scope: str, subject: str, now: float) -> bool:
        enabled, schedule = self._settings.get((scope, subject), (False, None))
        return enabled and active(enabled, schedule, self.minute_of_day(now))

    def resident_in_dnd(self, resident_id: str, household_number: str, now: float) -> bool:
        return self.is_active("resident", resident_id, now) or self.is_active("household", household_number, now)

    def view(self, scope: str, subject: str) -> dict[str, Any]:
        enabled, schedule = self._settings.get((scope, subject), (False, None))
        return {"enabled": enabled,
                "schedule": [{"from": a, "to": b} for a, b in schedule] if schedule is not None else None,
                "active": self.is_active(scope, subject, self.clock()), "timezone": self.timezone or "local"}

    def set(self, scope: str, subject: str, enabled: bool, schedule: list[Window] | None) -> dict[str, Any]:
        self.store.put_setting(TABLE, {"scope": scope, "subject": subject, "enabled": int(enabled),
                                       "schedule": fastjson.dumps(schedule) if schedule is not None else None,
                                       "updated_at": self.clock()})
        self._settings[(scope, subject)] = (enabled, schedule)
        return self.view(scope, subject)
