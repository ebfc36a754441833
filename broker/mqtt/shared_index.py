"""Shared subscriptions, `$share/{ShareName}/{filter}` (MQTT 5.0 §4.8.2; offered to 3.1.1 clients too).

A shared subscription is one (ShareName, filter) pair; the sessions holding it are its members. Each
message matching the filter goes to ONE member, chosen round-robin among the members the caller ranks
best: a connected member first (`ONLINE`), else one that can hold the message for later (`HOLDS`, an
offline persistent session), else none. Two shared subscriptions with the same ShareName but different
filters are separate (each picks its own member), as in Mosquitto and EMQX.

This module knows nothing of sessions or sockets: `SharedGroups` stores opaque members and a `rank`
callable tells it which of them are usable now.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from broker.mqtt.topics import SHARE_LEVEL, shared_parts, valid_share_name
from broker.mqtt.tree import descend, matching, path_to, prune

__all__ = ["HOLDS", "NONE", "ONLINE", "SHARE_LEVEL", "SharedGroups", "shared_parts", "valid_share_name"]

S = TypeVar("S")
ONLINE, HOLDS, NONE = 2, 1, 0  # a member's rank: connected, can queue offline, unusable

Member = tuple[str, tuple[S, int]]  # (key, (subscriber, granted QoS)), like `SubscriptionIndex.match` items


class _Group(Generic[S]):
    """The members of one shared subscription, in subscription order, and whose turn is next."""

    __slots__ = ("cursor", "members", "order")

    def __init__(self) -> None:
        self.members: dict[str, tuple[S, int]] = {}
        self.order: list[str] = []
        self.cursor = 0

    def add(self, key: str, subscriber: S, qos: int) -> None:
        if key not in self.members:
            self.order.append(key)
        self.members[key] = (subscriber, qos)  # a repeated SUBSCRIBE keeps its turn, replaces the QoS

    def remove(self, key: str) -> bool:
        if self.members.pop(key, None) is None:
            return False
        i = self.order.index(key)
        del self.order[i]
        if i < self.cursor:
            self.cursor -= 1
        if self.cursor >= len(self.order):
            self.cursor = 0
        return True

    def pick(self, rank: Callable[[S], int]) -> Member[S] | None:
        """The next member in turn that is `ONLINE`, else the next that `HOLDS`, else None; moves the turn on."""
        order, n = self.order, len(self.order)
        fallback = -1
        for step in range(n):
            i = (self.cursor + step) % n
            r = rank(self.members[order[i]][0])
            if r == ONLINE:
                fallback = i
                break
            if r == HOLDS and fallback < 0:
                fallback = i
        if fallback < 0:
            return None
        self.cursor = (fallback + 1) % n
        key = order[fallback]
        return key, self.members[key]


class _Node(Generic[S]):
    __slots__ = ("children", "groups")

    def __init__(self) -> None:
        self.children: dict[str, _Node[S]] = {}
        self.groups: dict[str, _Group[S]] = {}  # ShareName -> group, for the filter ending at this node


class SharedGroups(Generic[S]):
    """Shared subscriptions in a tree keyed by the levels of their filter; matching is O(topic levels)."""

    def __init__(self) -> None:
        self._root: _Node[S] = _Node()
        self.count = 0  # shared subscriptions (groups) held: zero means routing can skip this tree

    def add(self, name: str, topic_filter: str, key: str, subscriber: S, qos: int) -> None:
        node = descend(self._root, topic_filter, _Node)
        group = node.groups.get(name)
        if group is None:
            group = node.groups[name] = _Group()
            self.count += 1
        group.add(key, subscriber, qos)

    def remove(self, name: str, topic_filter: str, key: str) -> bool:
        """Drop one member; an empty group and empty branches go with it. True when it was a member."""
        found = path_to(self._root, topic_filter)
        if found is None:
            return False
        path, node = found
        group = node.groups.get(name)
        if group is None or not group.remove(key):
            return False
        if not group.members:
            del node.groups[name]
            self.count -= 1
        prune(path, lambda n: not n.groups)
        return True

    def pick(self, topic: str, rank: Callable[[S], int]) -> list[Member[S]]:
        """One member of each shared subscription whose filter matches `topic` (see `_Group.pick`)."""
        out: list[Member[S]] = []
        for node in matching(self._root, topic):
            for group in node.groups.values():
                chosen = group.pick(rank)
                if chosen is not None:
                    out.append(chosen)
        return out

