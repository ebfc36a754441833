"""The topic index against amqtt 0.12.1's own `Broker._matches` and filter validation, over many topics."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import pytest
from amqtt.broker import Broker
from amqtt.session import Session
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.mqtt.topic_index import RetainedStore, RetainedTree, SubscriptionIndex, valid_filter

LEVELS = ["a", "b", "", "$SYS", "$x", "users", "2"]
FILTER_LEVELS = [*LEVELS, "+", "#", "a+", "#b"]


@pytest.fixture
async def amqtt_broker() -> Broker:
    """A plain amqtt Broker, never started: only its matching and subscription checks are used."""
    return Broker({"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}}, "plugins": {}})


def all_topics(depth: int) -> list[str]:
    return ["/".join(p) for n in range(1, depth + 1) for p in itertools.product(LEVELS, repeat=n)]


def all_filters(depth: int) -> list[str]:
    out = ["/".join(p) for n in range(1, depth + 1) for p in itertools.product(FILTER_LEVELS, repeat=n)]
    return [f for f in out if valid_filter(f)]


def session(client_id: str) -> Session:
    s = Session()
    s.client_id = client_id
    return s


async def test_index_matches_exactly_what_amqtt_matches(amqtt_broker):
    """Every valid filter of up to 3 levels, every topic of up to 3 levels: same verdict as amqtt."""
    filters = all_filters(3)
    index: SubscriptionIndex[str] = SubscriptionIndex()
    for i, f in enumerate(filters):
        index.add(f, f"c{i}", f, 0)
    topics = all_topics(3)
    assert len(filters) > 500
    assert len(topics) > 300
    for topic in topics:
        ours = {f for f, _ in index.match(topic).values()}
        theirs = {f for f in filters if amqtt_broker._matches(topic, f)}
        assert ours == theirs, topic


@pytest.fixture(scope="module")
def sync_amqtt_broker() -> Iterator[Broker]:
    """A plain amqtt Broker on its own (never run) loop, for property tests outside the test loop."""
    async def make() -> Broker:
        return Broker({"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}}, "plugins": {}})

    loop = asyncio.new_event_loop()
    yield loop.run_until_complete(make())
    loop.close()


@settings(max_examples=300, deadline=None)
@given(filters=st.lists(st.lists(st.sampled_from(FILTER_LEVELS), min_size=1, max_size=5), min_size=1, max_size=20),
       topic=st.lists(st.sampled_from(LEVELS), min_size=1, max_size=6))
def test_random_filters_and_topics_agree_with_amqtt(sync_amqtt_broker, filters, topic):
    """Random filter sets and deeper topics: the index and amqtt's `_matches` agree."""
    flts = ["/".join(f) for f in filters if valid_filter("/".join(f))]
    index: SubscriptionIndex[str] = SubscriptionIndex()
    for i, f in enumerate(flts):
        index.add(f, f"c{i}", f, 1)
    t = "/".join(topic)
    assert {f for f, _ in index.match(t).values()} == {f for f in flts if sync_amqtt_broker._matches(t, f)}


async def test_filter_validation_agrees_with_amqtt_add_subscription(amqtt_broker):
    """A filter amqtt refuses with 0x80 is exactly one `valid_filter` rejects."""
    candidates = ["/".join(p) for n in (1, 2, 3) for p in itertools.product(["a", "+", "#", "a#", "+a", ""], repeat=n)]
    for f in candidates:
        if f == "":
            continue  # amqtt accepts the empty filter; MQTT 3.1.1 §4.7.3 forbids it and so do we
        code = await amqtt_broker.add_subscription((f, 1), session("probe"))
        assert (code != 0x80) == valid_filter(f), f
    assert not valid_filter("")


async def test_retained_tree_finds_exactly_what_amqtt_would_send(amqtt_broker):
    """For every filter, the retained topics found by the tree are those amqtt's scan matches."""
    topics = all_topics(3)
    tree: RetainedTree[str] = RetainedTree()
    for t in topics:
        tree.set(t, t)
    for f in all_filters(3):
        assert set(tree.find(f)) == {t for t in topics if amqtt_broker._matches(t, f)}, f


def test_one_delivery_per_client_at_the_highest_matching_qos():
    """Overlapping filters of one client give one match, at the highest granted QoS [MQTT-3.3.5-1]."""
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add("users/2/#", "r2", "r2", 0)
    index.add("users/2/calls/+", "r2", "r2", 1)
    index.add("users/+/calls/incoming", "admin", "admin", 0)
    assert index.match("users/2/calls/incoming") == {"r2": ("r2", 1), "admin": ("admin", 0)}
    assert index.match("users/3/calls/incoming") == {"admin": ("admin", 0)}


def test_resubscribe_replaces_qos_and_removal_prunes_the_tree():
    """A second SUBSCRIBE replaces the QoS; removing every filter leaves an empty index."""
    index: SubscriptionIndex[str] = SubscriptionIndex()
    assert index.add("a/+/c", "k", "k", 0) is True
    assert index.add("a/+/c", "k", "k", 1) is False
    assert index.match("a/b/c") == {"k": ("k", 1)}
    index.add("a/#", "k", "k", 0)
    index.add("a/#", "j", "j", 0)
    assert sorted(index.remove_all("k")) == ["a/#", "a/+/c"]
    assert index.match("a/b/c") == {"j": ("j", 0)}
    assert len(index) == 1
    assert index.remove("a/#", "j")
    assert not index.remove("a/#", "j")
    assert len(index) == 0
    assert index.match("a") == {}


def test_dollar_topics_need_an_explicit_first_level():
    """`#` and `+/...` never match `$SYS/...`; `$SYS/#` does (MQTT 3.1.1 §4.7.2)."""
    index: SubscriptionIndex[str] = SubscriptionIndex()
    for f in ("#", "+/load", "$SYS/#", "$SYS/+"):
        index.add(f, f, f, 0)
    assert set(index.match("$SYS/load")) == {"$SYS/#", "$SYS/+"}
    assert set(index.match("sys/load")) == {"#", "+/load"}


def test_retained_store_mirrors_every_dict_write_into_the_tree():
    """Set, overwrite, pop, del, update and clear on the dict keep the tree in step."""
    store: RetainedStore[str] = RetainedStore()
    store["devices/1/status"] = "one"
    store["devices/5/status"] = "five"
    store["devices/1/status"] = "one'"
    assert sorted(store.tree.find("devices/+/status")) == ["five", "one'"]
    assert store.pop("devices/5/status") == "five"
    assert store.pop("nope", None) is None
    store.update({"a/b": "ab"})
    del store["devices/1/status"]
    assert store.tree.find("#") == ["ab"]
    assert dict(store) == {"a/b": "ab"}
    store.clear()
    assert store.tree.find("#") == []
    assert not store


def test_offline_queue_is_fifo_and_allocates_on_first_use() -> None:
    """A session's OfflineQueue holds no deque until a message is queued, then gives messages back in order."""
    import asyncio

    from broker.mqtt.message import RetainedMessage
    from broker.mqtt.session import OfflineQueue

    q = OfflineQueue()
    assert q.empty()
    assert q.qsize() == 0
    assert q._items is None
    with pytest.raises(asyncio.QueueEmpty):
        q.get_nowait()
    first, second = RetainedMessage("a", b"1", 1), RetainedMessage("b", b"2", 1)
    q.put_nowait(first)
    q.put_nowait(second)
    assert q.qsize() == 2
    assert not q.empty()
    assert q.get_nowait() is first
    assert q.get_nowait() is second
    assert q.empty()



def test_leaf_nodes_share_one_empty_children_dict_and_never_write_it():
    """A node starts with the shared, empty `tree.NO_CHILDREN` (a leaf keeps no dict of its own) and gets its own
    dict with its first child or subscriber; after subscribing, matching, retaining and removing, the shared dict
    is still empty and the trees still answer right."""
    from broker.mqtt.tree import NO_CHILDREN

    idx: SubscriptionIndex[str] = SubscriptionIndex()
    for i in range(50):
        idx.add(f"users/{i}/#", f"c{i}", f"s{i}", 1)
        idx.add(f"users/{i}/calls/+", f"c{i}", f"s{i}", 0)
    assert set(idx.match("users/7/calls/x")) == {"c7"}
    leaf = idx._root.children["users"].children["7"].children["#"]
    assert leaf.children is NO_CHILDREN
    tree: RetainedTree[int] = RetainedTree()
    for i in range(50):
        tree.set(f"devices/{i}/status", i)
    assert sorted(tree.find("devices/+/status")) == list(range(50))
    for i in range(50):
        idx.remove(f"users/{i}/#", f"c{i}")
        idx.remove(f"users/{i}/calls/+", f"c{i}")
        tree.discard(f"devices/{i}/status")
    assert NO_CHILDREN == {}
    assert not idx._root.children
    assert idx.match("users/7/calls/x") == {}


def test_a_cached_match_follows_every_subscription_change():
    """`match` answers a repeated topic from its cache; any subscribe, re-subscribe or unsubscribe starts it afresh,
    and the cache stays bounded."""
    from broker.mqtt import topic_index

    idx: SubscriptionIndex[str] = SubscriptionIndex()
    idx.add("a/+", "c1", "s1", 0)
    first = idx.match("a/b")
    assert idx.match("a/b") is first  # answered from the cache
    assert {k: q for k, (_, q) in first.items()} == {"c1": 0}
    idx.add("a/#", "c2", "s2", 1)
    assert {k: q for k, (_, q) in idx.match("a/b").items()} == {"c1": 0, "c2": 1}
    idx.add("a/+", "c1", "s1", 2)  # re-subscribe: new QoS
    assert idx.match("a/b")["c1"] == ("s1", 2)
    idx.remove("a/#", "c2")
    assert set(idx.match("a/b")) == {"c1"}
    idx.remove_all("c1")
    assert idx.match("a/b") == {}
    for i in range(topic_index.MATCH_CACHE_MAX + 10):
        idx.match(f"t/{i}")
    assert len(idx._matched) <= topic_index.MATCH_CACHE_MAX
