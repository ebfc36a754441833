"""The walks every topic tree shares (subscriptions, retained messages, shared subscriptions).

A node has `children: dict[str, node]`, one level of a topic per edge. `descend` creates the levels a
new entry needs; `path_to` finds an entry's node and the edges leading to it, and `prune` removes the
nodes that became empty, from the leaf up, so a tree never keeps branches nobody uses. `matching` finds
the filter nodes of a filter tree that match a topic, by MQTT's rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

__all__ = ["NO_CHILDREN", "descend", "matching", "path_to", "prune"]

# What a node's `children` starts as: one shared, never written empty dict (a leaf, which most nodes are, saves its
# own); `descend` gives a node its own dict when it gets its first child. Only `descend` adds children.
NO_CHILDREN: dict[str, Any] = {}


class _Node(Protocol):
    children: dict[str, Any]


N = TypeVar("N", bound=_Node)


def descend(node: N, topic: str, make: Callable[[], N]) -> N:
    """The node for `topic` under `node`, creating the missing levels."""
    for level in topic.split("/"):
        children = node.children
        child = children.get(level)
        if child is None:
            if children is NO_CHILDREN:
                children = node.children = {}
            child = children[level] = make()
        node = child
    return node


def path_to(node: N, topic: str) -> tuple[list[tuple[N, str]], N] | None:
    """The (parent, level) edges from `node` to the node for `topic`, and that node; None if it is absent."""
    path: list[tuple[N, str]] = []
    for level in topic.split("/"):
        child = node.children.get(level)
        if child is None:
            return None
        path.append((node, level))
        node = child
    return path, node


def prune(path: list[tuple[N, str]], empty: Callable[[N], bool]) -> None:
    """Remove the nodes at the end of `path` that are `empty` and have no children, leaf first."""
    for parent, level in reversed(path):
        child = parent.children[level]
        if child.children or not empty(child):
            return
        del parent.children[level]


def matching(root: N, topic: str) -> list[N]:
    """The nodes of a filter tree whose filter matches `topic` (each once): `+` matches one level, `#` the
    rest, including none; a leading wildcard never matches a `$` topic [MQTT-4.7.2-1]."""
    out: list[N] = []
    _collect(root, topic.split("/"), 0, out, topic.startswith("$"))
    return out


def _collect(node: N, levels: list[str], i: int, out: list[N], dollar: bool) -> None:
    children = node.children
    if i == len(levels):
        out.append(node)
        hash_node = children.get("#")
        if hash_node is not None:
            out.append(hash_node)
        return
    if not (dollar and i == 0):
        hash_node = children.get("#")
        if hash_node is not None:
            out.append(hash_node)
        plus = children.get("+")
        if plus is not None:
            _collect(plus, levels, i + 1, out, dollar)
    child = children.get(levels[i])
    if child is not None:
        _collect(child, levels, i + 1, out, dollar)
