"""Topic trees: subscriptions matched in O(topic levels), retained messages found in O(filter levels).

Semantics follow MQTT 3.1.1 §4.7 and amqtt 0.12.1's `Broker._matches`: `+` matches one whole level (empty
included), a trailing `#` matches the parent level and everything below it, and topics starting with `$`
are not matched by a filter whose first level is `+` or `#`. A filter whose first level is `$share` is a
shared subscription (`broker.mqtt.shared_index`): its members take turns instead of each getting a copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from broker.mqtt.shared_index import Member, SharedGroups
from broker.mqtt.topics import shared_parts, valid_filter, valid_subscription, well_formed_filter
from broker.mqtt.tree import NO_CHILDREN, descend, matching, path_to, prune

__all__ = ["RetainedStore", "RetainedTree", "SubscriptionIndex", "valid_filter", "valid_subscription",
           "well_formed_filter"]

S = TypeVar("S")
# topics whose matches `SubscriptionIndex.match` keeps (a publish's topic recurs: a party's own topics); past this
# many it starts afresh, so a client publishing on ever new topics costs a walk each, not memory
MATCH_CACHE_MAX = 4096
V = TypeVar("V")


class _SubNode(Generic[S]):
    __slots__ = ("children", "subs")

    def __init__(self) -> None:
        self.children: dict[str, _SubNode[S]] = NO_CHILDREN
        self.subs: dict[str, tuple[S, int]] = NO_CHILDREN  # shared and empty until the first subscriber (`add`)


class SubscriptionIndex(Generic[S]):
    """Filter tree keyed by level; each node maps subscriber key (client id) to (subscriber, QoS).

    Shared subscriptions (`$share/...`, already checked by `valid_subscription`) live in their own tree,
    `SharedGroups`, so matching ordinary subscriptions costs the same whether or not any exist.
    """

    def __init__(self) -> None:
        self._root: _SubNode[S] = _SubNode()
        self._by_key: dict[str, dict[str, int]] = {}  # key -> {filter as subscribed, `$share/` included: QoS}
        # topic -> what `match` found; emptied by every change of an ordinary subscription
        self._matched: dict[str, dict[str, tuple[S, int]]] = {}
        # read `shared.count` (a plain attribute: no call on the routing hot path) before `pick_shared`
        self.shared: SharedGroups[S] = SharedGroups()

    def __len__(self) -> int:
        return sum(len(filters) for filters in self._by_key.values())

    def add(self, topic_filter: str, key: str, subscriber: S, qos: int) -> bool:
        """Subscribe (or re-subscribe, replacing QoS); True when the filter is new for this key."""
        filters = self._by_key.setdefault(key, {})
        new = topic_filter not in filters
        filters[topic_filter] = qos
        parts = shared_parts(topic_filter)
        if parts is not None:
            self.shared.add(parts[0], parts[1], key, subscriber, qos)
            return new
        self._matched.clear()
        node = descend(self._root, topic_filter, _SubNode)
        if node.subs is NO_CHILDREN:
            node.subs = {}
        node.subs[key] = (subscriber, qos)
        return new

    def remove(self, topic_filter: str, key: str) -> bool:
        """Drop one subscription; prunes empty branches. True when it existed."""
        parts = shared_parts(topic_filter)
        if parts is not None:
            if not self.shared.remove(parts[0], parts[1], key):
                return False
            self._forget(key, topic_filter)
            return True
        found = path_to(self._root, topic_filter)
        if found is None or found[1].subs.pop(key, None) is None:
            return False
        self._matched.clear()
        self._forget(key, topic_filter)
        prune(found[0], lambda n: not n.subs)
        return True

    def _forget(self, key: str, topic_filter: str) -> None:
        filters = self._by_key.get(key)
        if filters is not None:
            filters.pop(topic_filter, None)
            if not filters:
                del self._by_key[key]

    def remove_all(self, key: str) -> list[str]:
        """Drop every subscription of one key (disconnect cleanup); returns the filters removed."""
        filters = list(self._by_key.get(key, ()))
        for topic_filter in filters:
            self.remove(topic_filter, key)
        return filters

    def by_key(self) -> Iterator[tuple[str, dict[str, int]]]:
        """(key, {filter as subscribed: QoS}) for every key holding a subscription."""
        return iter(self._by_key.items())

    def filters_of(self, key: str) -> dict[str, int]:
        """The filters one key holds, with their granted QoS."""
        return dict(self._by_key.get(key, {}))

    def has(self, key: str, topic_filter: str) -> bool:
        return topic_filter in self._by_key.get(key, ())

    def match(self, topic: str) -> dict[str, tuple[S, int]]:
        """Every subscriber whose filters match `topic`, once each, at the highest matching QoS (callers only read
        it: it is kept for the next publish on `topic` until a subscription changes)."""
        out = self._matched.get(topic)
        if out is None:
            out = {}
            for node in matching(self._root, topic):
                _merge(out, node.subs)
            if len(self._matched) >= MATCH_CACHE_MAX:
                self._matched.clear()
            self._matched[topic] = out
        return out

    def pick_shared(self, topic: str, rank: Callable[[S], int]) -> list[Member[S]]:
        """One member, in turn, of every shared subscription matching `topic`: [(key, (subscriber, QoS))].

        `rank(subscriber)` is `shared_index.ONLINE`, `HOLDS` or `NONE`; a member that holds the same
        session's ordinary subscription too is picked regardless, so that session may get both copies.
        """
        return self.shared.pick(topic, rank)


def _merge(out: dict[str, tuple[S, int]], subs: dict[str, tuple[S, int]]) -> None:
    for key, entry in subs.items():
        have = out.get(key)
        if have is None or have[1] < entry[1]:
            out[key] = entry


class _RetNode(Generic[V]):
    __slots__ = ("children", "value")

    def __init__(self) -> None:
        self.children: dict[str, _RetNode[V]] = NO_CHILDREN
        self.value: V | None = None


class RetainedTree(Generic[V]):
    """Topic tree of retained values; `find(filter)` walks only the branches the filter can match."""

    def __init__(self) -> None:
        self._root: _RetNode[V] = _RetNode()

    def set(self, topic: str, value: V) -> None:
        node = descend(self._root, topic, _RetNode)
        node.value = value

    def discard(self, topic: str) -> None:
        found = path_to(self._root, topic)
        if found is None:
            return
        found[1].value = None
        prune(found[0], lambda n: n.value is None)

    def clear(self) -> None:
        self._root = _RetNode()

    def find(self, topic_filter: str) -> list[V]:
        """Retained values whose topic matches the filter."""
        out: list[V] = []
        self._find(self._root, topic_filter.split("/"), 0, out)
        return out

    def _find(self, node: _RetNode[V], levels: list[str], i: int, out: list[V]) -> None:
        if i == len(levels):
            if node.value is not None:
                out.append(node.value)
            return
        level = levels[i]
        if level == "#":
            if i > 0 and node.value is not None:
                out.append(node.value)  # "a/#" also matches "a"
            for name, child in node.children.items():
                if i == 0 and name.startswith("$"):
                    continue
                out.extend(_all_values(child))
            return
        if level == "+":
            for name, child in node.children.items():
                if i == 0 and name.startswith("$"):
                    continue
                self._find(child, levels, i + 1, out)
            return
        nxt = node.children.get(level)
        if nxt is not None:
            self._find(nxt, levels, i + 1, out)


def _all_values(node: _RetNode[V]) -> Iterator[V]:
    stack = [node]
    while stack:
        current = stack.pop()
        if current.value is not None:
            yield current.value
        stack.extend(current.children.values())


class RetainedStore(dict[str, V]):
    """amqtt's `_retained_messages` dict, mirrored into a `RetainedTree` on every write."""

    def __init__(self) -> None:
        super().__init__()
        self.tree: RetainedTree[V] = RetainedTree()

    def __setitem__(self, topic: str, value: V) -> None:
        super().__setitem__(topic, value)
        self.tree.set(topic, value)

    def __delitem__(self, topic: str) -> None:
        super().__delitem__(topic)
        self.tree.discard(topic)

    def pop(self, topic: str, *default: V | None) -> V | None:  # type: ignore[override]
        self.tree.discard(topic)
        return super().pop(topic, *default)

    def clear(self) -> None:
        super().clear()
        self.tree.clear()

    def update(self, *args: Any, **kwargs: V) -> None:
        for topic, value in dict(*args, **kwargs).items():
            self[topic] = value
