"""The shared-subscription index against amqtt 0.12.1's `Broker._matches`, its round-robin turns and its checks."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import pytest
from amqtt.broker import Broker
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.mqtt.shared_index import HOLDS, NONE, ONLINE, shared_parts
from broker.mqtt.topic_index import SubscriptionIndex, valid_filter, valid_subscription, well_formed_filter

LEVELS = ["a", "b", "", "$SYS", "$x", "users", "2"]
FILTER_LEVELS = [*LEVELS, "+", "#", "a+", "#b"]


def online(_: str) -> int:
    return ONLINE


@pytest.fixture(scope="module")
def amqtt_broker() -> Iterator[Broker]:
    """A plain amqtt Broker on its own (never run) loop: only its `_matches` is used."""
    async def make() -> Broker:
        return Broker({"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}}, "plugins": {}})

    loop = asyncio.new_event_loop()
    yield loop.run_until_complete(make())
    loop.close()


@settings(max_examples=300, deadline=None)
@given(subs=st.lists(st.tuples(st.sampled_from(["g", "h"]),
                               st.lists(st.sampled_from(FILTER_LEVELS), min_size=1, max_size=4),
                               st.sampled_from(["c1", "c2", "c3"])), min_size=1, max_size=20),
       topic=st.lists(st.sampled_from(LEVELS), min_size=1, max_size=5))
def test_each_matching_shared_subscription_picks_one_of_its_members(amqtt_broker, subs, topic):
    """Random shared subscriptions: exactly the (ShareName, filter) pairs amqtt matches pick one member each."""
    index: SubscriptionIndex[str] = SubscriptionIndex()
    members: dict[tuple[str, str], set[str]] = {}
    for name, levels, key in subs:
        f = "/".join(levels)
        if not valid_filter(f):
            continue
        index.add(f"$share/{name}/{f}", key, f"{name}|{f}", 1)
        members.setdefault((name, f), set()).add(key)
    t = "/".join(topic)
    picked = index.pick_shared(t, online)
    groups = [tuple(sub.split("|", 1)) for _, (sub, _) in picked]
    assert sorted(groups) == sorted(g for g in members if amqtt_broker._matches(t, g[1]))
    for key, (sub, qos) in picked:
        name, f = sub.split("|", 1)
        assert key in members[(name, f)]
        assert qos == 1
    assert index.match(t) == {}  # shared subscriptions never show up as ordinary matches


def test_members_take_turns_in_subscription_order_and_a_removal_keeps_the_turn():
    """Three members get 1 message in 3 each, in order; removing one mid-round moves the turn to the next."""
    index: SubscriptionIndex[str] = SubscriptionIndex()
    for key in ("a", "b", "c"):
        index.add("$share/g/jobs/+", key, key, 1)
    assert [index.pick_shared("jobs/1", online)[0][0] for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
    assert index.pick_shared("jobs/1", online)[0][0] == "a"
    assert index.remove("$share/g/jobs/+", "b")  # b was next: c takes its turn
    assert [index.pick_shared("jobs/1", online)[0][0] for _ in range(4)] == ["c", "a", "c", "a"]
    index.add("$share/g/jobs/+", "c", "c", 0)  # re-subscribing keeps the turn, replaces the QoS
    assert index.pick_shared("jobs/1", online) == [("c", ("c", 0))]
    assert sorted(index.remove_all("c") + index.remove_all("a")) == ["$share/g/jobs/+", "$share/g/jobs/+"]
    assert index.shared.count == 0
    assert len(index) == 0
    assert index.pick_shared("jobs/1", online) == []


def test_offline_members_are_skipped_and_one_that_holds_messages_is_the_last_resort():
    """A member ranked NONE is never picked; HOLDS is picked only when no member is ONLINE."""
    index: SubscriptionIndex[str] = SubscriptionIndex()
    for key in ("away", "up", "gone"):
        index.add("$share/g/t", key, key, 1)
    rank = {"away": HOLDS, "up": ONLINE, "gone": NONE}
    assert Counter(index.pick_shared("t", rank.__getitem__)[0][0] for _ in range(6)) == {"up": 6}
    rank["up"] = NONE
    assert [index.pick_shared("t", rank.__getitem__)[0][0] for _ in range(2)] == ["away", "away"]
    rank["away"] = NONE
    assert index.pick_shared("t", rank.__getitem__) == []


def test_shared_and_ordinary_subscriptions_of_one_key_live_apart():
    """A key may hold `t/#` and `$share/g/t/#`: both match, each removable on its own, `$SYS` stays unmatched."""
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add("t/#", "k", "k", 0)
    index.add("$share/g/t/#", "k", "k", 1)
    index.add("$share/g/#", "j", "j", 1)
    assert index.filters_of("k") == {"t/#": 0, "$share/g/t/#": 1}
    assert index.match("t/x") == {"k": ("k", 0)}
    assert sorted(index.pick_shared("t/x", online)) == [("j", ("j", 1)), ("k", ("k", 1))]
    assert index.pick_shared("$SYS/x", online) == []
    assert index.remove("$share/g/t/#", "k")
    assert not index.remove("$share/g/t/#", "k")
    assert not index.remove("$share/h/#", "j")
    assert index.match("t/x") == {"k": ("k", 0)}
    assert index.pick_shared("t/x", online) == [("j", ("j", 1))]


@pytest.mark.parametrize(("topic_filter", "granted", "well_formed"), [
    ("$share/g/a/#", True, True),
    ("$share/g/+", True, True),
    ("$share/g/$SYS/#", True, True),
    ("$share/g.1-x/a", True, True),
    ("$share/g//", True, True),       # the filter "/" is valid
    ("$share//a", False, True),       # empty ShareName [MQTT-4.8.2-1]
    ("$share/+/a", False, True),
    ("$share/g+/a", False, True),     # bad ShareName: SUBACK 0x80, not a closed connection
    ("$share/#/a", False, True),
    ("$share/g#/a", False, True),
    ("$share/g", False, True),        # no filter [MQTT-4.8.2-2]
    ("$share/g/", False, True),
    ("$share", False, True),
    ("$share/g/a#", False, False),    # the filter itself is malformed, as `a#` alone is
    ("$share/g/#/a", False, False),
    ("$share/g\x00/a", False, False),
    ("$shared/g/a", True, True),      # not a shared subscription: an ordinary `$` filter
])
def test_which_share_filters_are_granted_and_which_are_malformed(topic_filter, granted, well_formed):
    """`valid_subscription` grants `$share/{name}/{filter}` only; the packet guard leaves ShareName faults to it."""
    assert valid_subscription(topic_filter) is granted
    assert well_formed_filter(topic_filter) is well_formed
    assert (shared_parts(topic_filter) is None) is topic_filter.startswith("$shared")
