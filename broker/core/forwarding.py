"""No-answer forwarding: the residents (a concierge, a guard) a household's unanswered call rings next.

A household's own setting (REST `PUT /api/households/{n}/forwarding`, or `forward_to` under its entry in
`site:`, applied while it has none stored) replaces the site's (`site.forward_to`, `site.forward_after_s`);
`forward_to: null` means "the site's". `forward_after_s` unset: `calls.ring_timeout_s`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from broker.config import SiteConfig
from broker.core import fastjson
from broker.core.directory import Directory
from broker.core.store import Store

__all__ = ["Forwarding"]

log = logging.getLogger("intercom.calls")
TABLE = "household_forwarding"


class Forwarding:
    def __init__(self, store: Store, directory: Directory, site: SiteConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.directory = directory
        self.site = site
        self.clock = clock
        self._rows: dict[str, tuple[list[str] | None, float | None]] = {
            r["household_number"]: (json.loads(r["forward_to"]) if r["forward_to"] else None, r["forward_after_s"])
            for r in store.settings_rows(TABLE)
        }
        for hh in site.households:
            if hh.household_number not in self._rows and (hh.forward_to is not None or hh.forward_after_s):
                self._rows[hh.household_number] = (hh.forward_to, hh.forward_after_s)

    def resolve(self, household_number: str) -> tuple[tuple[str, ...], float | None]:
        """The fallback residents (existing ones only) and the first phase's length for this household."""
        own, after = self._rows.get(household_number, (None, None))
        forward_to = own if own is not None else self.site.forward_to
        if after is None:
            after = self.site.forward_after_s
        known = tuple(r for r in forward_to if self.directory.has("residents", r))
        if len(known) != len(forward_to):
            log.warning("household %s: forwarding names residents that do not exist: %s", household_number,
                        ", ".join(r for r in forward_to if r not in known))
        return known, after

    def view(self, household_number: str) -> dict[str, Any]:
        self.directory.get("households", household_number)
        own, after = self._rows.get(household_number, (None, None))
        forward_to, effective_after = self.resolve(household_number)
        return {"household_number": household_number, "forward_to": own, "forward_after_s": after,
                "effective": {"forward_to": list(forward_to), "forward_after_s": effective_after,
                              "source": "household" if own is not None else "site"}}

    def set(self, household_number: str, forward_to: list[str] | None, forward_after_s: float | None) -> dict[str, Any]:
        self.directory.get("households", household_number)  # 404 if unknown
        for rid in forward_to or ():
            self.directory.get("residents", rid)  # 404 naming the unknown resident
        self.store.put_setting(TABLE, {"household_number": household_number,
                                       "forward_to": fastjson.dumps(forward_to) if forward_to is not None else None,
                                       "forward_after_s": forward_after_s, "updated_at": self.clock()})
        self._rows[household_number] = (forward_to, forward_after_s)
        return self.view(household_number)
