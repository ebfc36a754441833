"""The one place that says what a topic name, a topic filter and a `$share/` filter are (MQTT 3.1.1 and 5).

Every check of the engine uses these: the packet guard and the v5 codec (malformed packets), the publish paths
(a publish on a wildcard topic closes the connection), the subscription index (SUBACK 0x80), the shared
groups and the ACL (`$share/{ShareName}/{filter}` split by `shared_parts`). What each caller does with a
verdict (close, DISCONNECT with a reason, refuse one filter) stays with the caller.
"""

from __future__ import annotations

__all__ = ["SHARE_LEVEL", "is_shared", "shared_parts", "valid_filter", "valid_share_name", "valid_subscription",
           "valid_topic_name", "well_formed_filter"]

SHARE_LEVEL = "$share"
_PREFIX = SHARE_LEVEL + "/"


def valid_topic_name(topic: str) -> bool:
    """A topic a client may publish to (or name as its Will): non-empty, no wildcard [MQTT-3.3.2-2], no NUL."""
    return bool(topic) and "+" not in topic and "#" not in topic and "\x00" not in topic


def valid_filter(topic_filter: str) -> bool:
    """Whether a filter is well formed: `#` only as the whole last level, `+` only as a whole level, no NUL."""
    if not topic_filter or "\x00" in topic_filter:
        return False
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            return False
        if "+" in level and level != "+":
            return False
    return True


def shared_parts(topic_filter: str) -> tuple[str, str] | None:
    """(ShareName, filter) of a filter whose first level is `$share`, as written; None for any other filter.

    `$share` alone and `$share/name` give an empty filter, which no check accepts.
    """
    if topic_filter == SHARE_LEVEL:
        return "", ""
    if not topic_filter.startswith(_PREFIX):
        return None
    name, _, inner = topic_filter[len(_PREFIX):].partition("/")
    return name, inner


def is_shared(topic_filter: str) -> bool:
    """Whether a filter names a shared subscription (its first level is `$share`)."""
    return shared_parts(topic_filter) is not None


def valid_share_name(name: str) -> bool:
    """At least one character, none of `/`, `+`, `#` [MQTT-4.8.2-1], [MQTT-4.8.2-2], and no NUL."""
    return bool(name) and not any(c in name for c in "/+#\x00")


def valid_subscription(topic_filter: str) -> bool:
    """Whether SUBSCRIBE may be granted for this filter: a valid filter, or `$share/{ShareName}/{valid filter}`."""
    parts = shared_parts(topic_filter)
    if parts is None:
        return valid_filter(topic_filter)
    return valid_share_name(parts[0]) and valid_filter(parts[1])


def well_formed_filter(topic_filter: str) -> bool:
    """The packet guard's test: `valid_filter`, except that a `$share/` filter's ShareName is not judged here.

    A bad ShareName (`$share/g+/a`, `$share//a`) is answered with SUBACK 0x80 (`valid_subscription`) and the
    connection stays up, as in EMQX; the filter after it must be well formed like any other.
    """
    parts = shared_parts(topic_filter)
    if parts is None:
        return valid_filter(topic_filter)
    name, inner = parts
    return "\x00" not in name and (not inner or valid_filter(inner))
