"""MQTT 5 subscription options (No Local, Retain As Published, Retain Handling, Subscription Identifier).

The subscription index keeps (subscriber, granted QoS) per filter, for 3.1.1 and 5 alike. A v5 session
also keeps its options per filter in `session.attributes[SUB_OPTIONS]`; when a message matches such a
session, `delivery_for` works out from those options whether it gets the message (No Local), with which
retain flag (Retain As Published) and with which Subscription Identifiers [MQTT-3.3.4-3].
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.mqtt.codec import split_shared
from broker.mqtt.hooks import SUB_OPTIONS

__all__ = ["SUB_OPTIONS", "SubOptions", "delivery_for", "matches"]



@dataclass(frozen=True, slots=True)
class SubOptions:
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    sub_id: int | None = None

    def encode(self) -> int:
        """The options byte of the SUBSCRIBE (§3.8.3.1), for the session store."""
        return self.qos | self.no_local << 2 | self.retain_as_published << 3 | self.retain_handling << 4

    @classmethod
    def decode(cls, options: int, sub_id: int | None) -> SubOptions:
        return cls(options & 3, bool(options & 4), bool(options & 8), (options >> 4) & 3, sub_id)


def matches(topic_filter: str, topic: str) -> bool:
    """Whether one filter matches a topic (§4.7; a `$share/{group}/` prefix is ignored)."""
    _group, topic_filter = split_shared(topic_filter)
    f_levels, t_levels = topic_filter.split("/"), topic.split("/")
    if topic.startswith("$") and f_levels[0] in ("+", "#"):
        return False  # [MQTT-4.7.2-1]
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels) or (level != "+" and level != t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


def delivery_for(options: dict[str, SubOptions], topic: str, own: bool,
                 retain: bool) -> tuple[int, bool, tuple[int, ...]] | None:
    """(granted QoS, retain flag, subscription identifiers) for a message on `topic`, or None to skip it.

    `own`: the target published it (No Local skips those subscriptions [MQTT-3.8.3-3]).
    """
    qos = -1
    keep_retain = False
    ids: list[int] = []
    for topic_filter, opt in options.items():
        if (own and opt.no_local) or not matches(topic_filter, topic):
            continue
        qos = max(qos, opt.qos)
        keep_retain = keep_retain or opt.retain_as_published
        if opt.sub_id is not None:
            ids.append(opt.sub_id)
    if qos < 0:
        return None
    return qos, retain and keep_retain, tuple(sorted(set(ids)))

