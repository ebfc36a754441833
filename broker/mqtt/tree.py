"""The walk every topic tree shares (subscriptions, retained messages, shared subscriptions).

A node has `children: dict[str, node]`, one level of a topic per edge. `descend` creates the levels a
new entry needs; `path_to` finds an entry's node and the edges leading to it, and `prune` removes the
nodes that became empty, from the leaf up, so a tree never keeps branches nobody uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

__all__ = ["descend", "path_to", "prune"]


class _Node(Protocol):
    children: dict[str, Any]


N = TypeVar("N", bound=_Node)


def descend(node: N, topic: str, make: Callable[[], N]) -> N:
    """The node for `topic` under `node`, creating the missing levels."""
    for level in topic.split("/"):
        child = node.children.get(level)
        if child is None:
            child = node.children[level] = make()
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
