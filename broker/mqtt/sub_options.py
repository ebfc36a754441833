"""MQTT 5 subscription options (No Local, Retain As Published, Retain Handling, Subscription Identifier).

The subscription index keeps (subscriber, granted QoS) per filter, for 3.1.1 and 5 alike. A v5 session
also keeps its options per filter in `session.attributes[SUB_OPTIONS]`; when a message matches such a
session, `delivery_for` works out from those options whether it gets the message (No Local), with which
retain flag (Retain As Published) and with which Subscription Identifiers [MQTT-3.3.4-3]. The options are an
`OptionsTable`, which counts the subscriptions that need that; with none, routing delivers as to a 3.1.1 session.
The table keeps its filters in a filter tree too, so `delivery_for` finds the matching ones with the engine's one
matcher, `tree.matching`.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.mqtt.codec import split_shared
from broker.mqtt.hooks import SUB_OPTIONS
from broker.mqtt.tree import descend, matching, path_to, prune

__all__ = ["SUB_OPTIONS", "OptionsTable", "SubOptions", "delivery_for"]



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


def delivery_for(options: OptionsTable, topic: str, own: bool,
                 retain: bool) -> tuple[int, bool, tuple[int, ...]] | None:
    """(granted QoS, retain flag, subscription identifiers) for a message on `topic`, or None to skip it.

    `own`: the target published it (No Local skips those subscriptions [MQTT-3.8.3-3]).
    """
    qos = -1
    keep_retain = False
    ids: list[int] = []
    for node in matching(options.root, topic):
        for opt in node.options.values():
            if own and opt.no_local:
                continue
            qos = max(qos, opt.qos)
            keep_retain = keep_retain or opt.retain_as_published
            if opt.sub_id is not None:
                ids.append(opt.sub_id)
    if qos < 0:
        return None
    return qos, retain and keep_retain, tuple(sorted(set(ids)))



def _special(topic_filter: str, opt: SubOptions) -> bool:
    """Whether this subscription can make a delivery differ from a 3.1.1 one (so `delivery_for` must decide)."""
    return opt.no_local or opt.retain_as_published or opt.sub_id is not None or topic_filter.startswith("$share")


class _FilterNode:
    """One level of a table's filter tree; `options` holds the filters ending here (with their `$share` prefix)."""

    __slots__ = ("children", "options")

    def __init__(self) -> None:
        self.children: dict[str, _FilterNode] = {}
        self.options: dict[str, SubOptions] = {}


class OptionsTable(dict[str, SubOptions]):
    """A v5 session's `SUB_OPTIONS`, counting the subscriptions `_special` says need `delivery_for`.

    With none (`special == 0`: the common case, no No Local, Retain As Published, Subscription Identifier or
    shared filter), a message gets exactly what a 3.1.1 subscriber gets: the index's highest granted QoS of the
    matching filters, retain flag cleared, no identifiers; routing then skips matching every filter again.
    """

    __slots__ = ("root", "special")

    def __init__(self, items: dict[str, SubOptions] | None = None) -> None:
        super().__init__(items or {})
        self._recount()

    def _recount(self) -> None:
        self.special = sum(1 for topic_filter, opt in self.items() if _special(topic_filter, opt))
        self.root = _FilterNode()
        for topic_filter, opt in self.items():
            descend(self.root, split_shared(topic_filter)[1], _FilterNode).options[topic_filter] = opt

    def __setitem__(self, topic_filter: str, opt: SubOptions) -> None:
        old = self.get(topic_filter)
        if old is not None and _special(topic_filter, old):
            self.special -= 1
        super().__setitem__(topic_filter, opt)
        if _special(topic_filter, opt):
            self.special += 1
        descend(self.root, split_shared(topic_filter)[1], _FilterNode).options[topic_filter] = opt

    def __delitem__(self, topic_filter: str) -> None:
        old = self[topic_filter]
        super().__delitem__(topic_filter)
        if _special(topic_filter, old):
            self.special -= 1
        found = path_to(self.root, split_shared(topic_filter)[1])
        if found is not None:
            path, node = found
            node.options.pop(topic_filter, None)
            prune(path, lambda n: not n.options)

    def pop(self, topic_filter: str, *default: SubOptions | None) -> SubOptions | None:  # type: ignore[override]
        if topic_filter in self:
            old = self[topic_filter]
            del self[topic_filter]
            return old
        if default:
            return default[0]
        raise KeyError(topic_filter)

    # the rarely used mutators: count again afterwards
    def update(self, *args: object, **kwargs: SubOptions) -> None:
        super().update(*args, **kwargs)
        self._recount()

    def setdefault(self, topic_filter: str, default: SubOptions) -> SubOptions:
        if topic_filter not in self:
            self[topic_filter] = default
        return self[topic_filter]

    def popitem(self) -> tuple[str, SubOptions]:
        item = super().popitem()
        self._recount()
        return item

    def clear(self) -> None:
        super().clear()
        self.special = 0
        self.root = _FilterNode()

    def __ior__(self, other: object) -> OptionsTable:  # type: ignore[override,misc]
        self.update(other)
        return self
