"""The engine's one topic-name / filter / `$share` table (broker/mqtt/topics.py), checked row by row."""

from __future__ import annotations

import pytest

from broker.mqtt.codec import split_shared
from broker.mqtt.topics import (
    is_shared,
    shared_parts,
    valid_filter,
    valid_subscription,
    valid_topic_name,
    well_formed_filter,
)

# text: (topic name, filter, subscription may be granted, well formed for the packet guard)
TABLE: dict[str, tuple[bool, bool, bool, bool]] = {
    "a/b": (True, True, True, True),
    "/": (True, True, True, True),
    "a//b": (True, True, True, True),
    "$SYS/broker/uptime": (True, True, True, True),
    "": (False, False, False, False),
    "a/+/c": (False, True, True, True),
    "+": (False, True, True, True),
    "#": (False, True, True, True),
    "a/#": (False, True, True, True),
    "a/#/c": (False, False, False, False),
    "a#": (False, False, False, False),
    "a/b+": (False, False, False, False),
    "a\x00b": (False, False, False, False),
    "$share/g/a/b": (True, True, True, True),  # also a valid topic name: only wildcards make a name invalid
    "$share/g/a/#": (False, True, True, True),
    "$share/g/+": (False, True, True, True),
    "$share//a": (True, True, False, True),  # empty ShareName: SUBACK 0x80, not malformed
    "$share/g+/a": (False, False, False, True),  # ShareName with a wildcard: SUBACK 0x80
    "$share/g": (True, True, False, True),  # no filter after the ShareName
    "$share": (True, True, False, True),
    "$share/g/a/#/b": (False, False, False, False),
    "$sharex/g/a": (True, True, True, True),  # not a shared subscription
}


@pytest.mark.parametrize(("text", "expected"), TABLE.items(), ids=[repr(k) for k in TABLE])
def test_topic_table(text: str, expected: tuple[bool, bool, bool, bool]) -> None:
    """Each string gets the verdicts its row states from the four checks."""
    got = (valid_topic_name(text), valid_filter(text), valid_subscription(text), well_formed_filter(text))
    assert got == expected


SHARES: dict[str, tuple[str, str] | None] = {
    "$share/g/a/b": ("g", "a/b"),
    "$share/g/#": ("g", "#"),
    "$share/g": ("g", ""),
    "$share//a": ("", "a"),
    "$share": ("", ""),
    "$share/": ("", ""),
    "a/$share/g/b": None,
    "$sharex/g/a": None,
    "$SHARE/g/a": None,
}


@pytest.mark.parametrize(("text", "expected"), SHARES.items(), ids=list(SHARES))
def test_share_parser(text: str, expected: tuple[str, str] | None) -> None:
    """`shared_parts` splits `$share/{ShareName}/{filter}` as written; the v5 codec's view is the same parser."""
    assert shared_parts(text) == expected
    assert is_shared(text) is (expected is not None)
    group, inner = split_shared(text)
    if text == "$share":  # an ordinary filter to the v5 codec (the index refuses it with SUBACK 0x80)
        assert (group, inner) == (None, "$share")
    else:
        assert (group, inner) == (expected if expected is not None else (None, text))
