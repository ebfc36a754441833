"""Shared subscriptions `$share/{group}/{filter}` for MQTT 3.1.1 clients (paho-mqtt via aiomqtt, raw sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest

from tests.support.harness import Harness
from tests.support.raw_mqtt import PINGRESP, SUBACK, Raw, connect, subscribe
from tests.support.security import granted, login, secure_harness
from tests.support.waits import quiet


class Got:
    """Every message one client receives: (topic, payload, QoS, retain)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.items: list[tuple[str, str, int, bool]] = []
        self.arrived = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for msg in self.client.messages:
            payload = msg.payload.decode() if isinstance(msg.payload, bytes) else str(msg.payload)
            self.items.append((str(msg.topic), payload, int(msg.qos), bool(msg.retain)))
            self.arrived.set()

    @property
    def payloads(self) -> list[str]:
        return [p for _, p, _, _ in self.items]

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@contextlib.asynccontextmanager
async def clients(h: Harness, *specs: tuple[str, list[tuple[str, int]]], clean: bool = True,
                  **kw: Any) -> AsyncIterator[list[Got]]:
    """Connect one client per (client id, [(filter, QoS)]), subscribed in the order given."""
    stack = contextlib.AsyncExitStack()
    async with stack:
        out = []
        for client_id, subs in specs:
            c = await stack.enter_async_context(h.mqtt(client_id, clean=clean, **kw))
            for f, q in subs:
                assert granted(await c.subscribe(f, qos=q)) == [q], f
            got = Got(c)
            stack.push_async_callback(got.close)
            out.append(got)
        yield out


async def publish_all(h: Harness, topic: str, n: int, qos: int = 1, start: int = 0, retain: bool = False) -> None:
    async with h.mqtt("publisher") as pub:
        for i in range(start, start + n):
            await pub.publish(topic, f"m{i}", qos=qos, retain=retain)


async def settle(gots: list[Got], total: int, timeout: float = 5.0) -> None:
    """Wait until `total` messages arrived across `gots`, then a little longer to catch any extra."""
    async with asyncio.timeout(timeout):
        while True:
            for g in gots:
                g.arrived.clear()
            if sum(len(g.items) for g in gots) >= total:
                break
            waits = [asyncio.create_task(g.arrived.wait()) for g in gots]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
    await quiet(0.2)  # any extra delivery would arrive now


async def test_three_members_take_turns_while_an_ordinary_subscriber_gets_every_message(harness):
    """9 messages: each member of `$share/workers/jobs/+` gets 3, in turn; `jobs/+` gets all 9."""
    share = [("$share/workers/jobs/+", 1)]
    async with clients(harness, ("w1", share), ("w2", share), ("w3", share), ("plain", [("jobs/+", 1)])) as got:
        await publish_all(harness, "jobs/a", 9)
        await settle(got, 18)
        w1, w2, w3, plain = got
        assert (w1.payloads, w2.payloads, w3.payloads) == (["m0", "m3", "m6"], ["m1", "m4", "m7"],
                                                           ["m2", "m5", "m8"])
        assert plain.payloads == [f"m{i}" for i in range(9)]
        assert {t for g in got for t, _, _, _ in g.items} == {"jobs/a"}  # the topic, never `$share/...`


async def test_two_groups_each_get_every_message_exactly_once(harness):
    """Groups `g1` and `g2` on the same filter: each message reaches one member of each group."""
    async with clients(harness, ("a1", [("$share/g1/jobs/#", 1)]), ("a2", [("$share/g1/jobs/#", 1)]),
                       ("b1", [("$share/g2/jobs/#", 1)]), ("b2", [("$share/g2/jobs/#", 1)])) as got:
        await publish_all(harness, "jobs/x/y", 6)
        await settle(got, 12)
        a1, a2, b1, b2 = got
        everything = [f"m{i}" for i in range(6)]
        assert sorted(a1.payloads + a2.payloads) == everything
        assert len(a1.payloads) == 3
        assert sorted(b1.payloads + b2.payloads) == everything
        assert len(b1.payloads) == 3


async def test_a_member_that_unsubscribes_or_disconnects_gets_no_more_turns(harness):
    """Unsubscribing needs the full `$share/...` filter; after it and a disconnect, the last member gets all."""
    share = [("$share/g/jobs/#", 1)]
    async with clients(harness, ("m1", share), ("m3", share)) as (m1, m3):
        async with harness.mqtt("m2") as m2c:
            await m2c.subscribe("$share/g/jobs/#", qos=1)
            await m1.client.unsubscribe("jobs/#")  # not the shared subscription: m1 keeps its turns
            await publish_all(harness, "jobs/1", 3)
            await settle([m1, m3], 2)
            assert (m1.payloads, m3.payloads) == (["m0"], ["m1"])  # turns in subscription order: m1, m3, m2
            await m1.client.unsubscribe("$share/g/jobs/#")
        await harness.until(lambda: harness.session_state("m2") is None)  # clean session: its subscription ended
        await publish_all(harness, "jobs/1", 4, start=3)
        await settle([m1, m3], 6)
        assert m1.payloads == ["m0"]
        assert m3.payloads == ["m1", "m3", "m4", "m5", "m6"]


async def test_a_session_with_a_shared_and_an_ordinary_subscription_gets_a_copy_for_each(harness):
    """One session holding `jobs/#` and `$share/g/jobs/#` receives each message twice, once per subscription."""
    async with clients(harness, ("both", [("jobs/#", 1), ("$share/g/jobs/#", 1)])) as (both,):
        await publish_all(harness, "jobs/1", 2)
        await settle([both], 4)
        assert sorted(both.payloads) == ["m0", "m0", "m1", "m1"]


@pytest.mark.parametrize(("pub_qos", "sub_qos", "expected"), [(1, 0, 0), (0, 1, 0), (1, 1, 1), (2, 1, 1), (1, 2, 1)])
async def test_a_member_gets_the_lower_of_publish_and_granted_qos(harness, pub_qos, sub_qos, expected):
    """Delivered QoS on a shared subscription is min(publish QoS, granted QoS), as for any subscription."""
    async with clients(harness, ("m", [("$share/g/q", sub_qos)])) as (m,):
        await publish_all(harness, "q", 1, qos=pub_qos)
        await settle([m], 1)
        assert [q for _, _, q, _ in m.items] == [expected]


async def test_retained_messages_are_not_sent_on_a_shared_subscription(harness):
    """A retained `jobs/1` is not sent on `$share/g/jobs/#` [MQTT 5 §4.8.2], but is on `jobs/#` in the same session."""
    await publish_all(harness, "jobs/1", 1, retain=True)
    async with harness.mqtt("member") as c:
        got = Got(c)
        assert granted(await c.subscribe("$share/g/jobs/#", qos=1)) == [1]
        await quiet(0.4)  # no message for the new member
        assert got.items == []
        await c.subscribe("jobs/#", qos=1)
        await settle([got], 1)
        assert got.items == [("jobs/1", "m0", 1, True)]
        await got.close()


async def test_invalid_share_names_get_0x80_and_the_connection_stays(harness):
    """Empty ShareName, one with `+`/`#`, or no filter: SUBACK 0x80 each, beside a granted valid one."""
    raw = await Raw.open(harness.server.mqtt_port)
    assert await raw.connack(connect("raw-share")) == 0
    bad = ["$share//a", "$share/+/a", "$share/g+/a", "$share/#/a", "$share/g#/a", "$share/g", "$share/g/", "$share"]
    await raw.send(subscribe([(f, 1) for f in bad] + [("$share/g/a", 1)], packet_id=7))
    got = await raw.read_packet()
    assert got is not None
    assert got[0] == SUBACK
    assert struct.unpack("!H", got[1][:2])[0] == 7
    assert list(got[1][2:]) == [0x80] * len(bad) + [1]
    await raw.send(b"\xc0\x00")
    pong = await raw.read_packet()
    assert pong is not None
    assert pong[0] == PINGRESP
    await raw.close()


async def test_a_malformed_filter_after_the_share_name_closes_the_connection(harness):
    """`$share/g/a#` is malformed like `a#` is [MQTT-4.7.1-2]: the connection is closed, no SUBACK."""
    raw = await Raw.open(harness.server.mqtt_port)
    assert await raw.connack(connect("raw-bad")) == 0
    await raw.send(subscribe([("$share/g/a#", 0)]))
    assert await raw.read_packet() is None
    await raw.close()


async def test_the_acl_judges_the_filter_after_the_share_name(make_harness):
    """Resident 4 may share `users/4/#` but not `users/2/#`; `$share/users/2/#` is the filter `2/#`, refused too;
    its household's device status only under its own ShareName (tests/mqtt/test_share_acl.py)."""
    h, t = await secure_harness(make_harness)
    async with h.mqtt(**login(t, "resident-4")) as r4:
        assert granted(await r4.subscribe("$share/g/users/2/#", qos=1)) == [128]
        assert granted(await r4.subscribe("$share/users/2/#", qos=1)) == [128]
        assert granted(await r4.subscribe("$share/g/#", qos=1)) == [128]
        assert granted(await r4.subscribe("$share/g/users/4/#", qos=1)) == [1]
        assert granted(await r4.subscribe("$share/resident-4/devices/5/status", qos=0)) == [0]


async def test_shared_subscriptions_count_toward_the_per_client_cap(make_harness):
    """With a cap of 2, `users/2/a` and `$share/g/users/2/a` are two subscriptions; a third is refused."""
    h, t = await secure_harness(make_harness, limits={"max_subscriptions_per_client": 2})
    async with h.mqtt(**login(t, "resident-2")) as r2:
        assert granted(await r2.subscribe("users/2/a", qos=0)) == [0]
        assert granted(await r2.subscribe("$share/g/users/2/a", qos=0)) == [0]
        assert granted(await r2.subscribe("$share/g/users/2/a", qos=1)) == [1]  # re-subscribing: not a new one
        assert granted(await r2.subscribe("$share/h/users/2/a", qos=0)) == [128]
        await r2.unsubscribe("$share/g/users/2/a")
        assert granted(await r2.subscribe("$share/h/users/2/a", qos=0)) == [0]


async def test_a_persistent_member_keeps_its_shared_subscription_across_reconnect_and_restart(make_harness):
    """Offline, a persistent member is skipped while another is connected, holds QoS 1 when none is, and
    its shared subscription (never a retained message) is there after a reconnect and a restart."""
    h1 = await make_harness()
    share = [("$share/g/jobs/#", 1)]
    await publish_all(h1, "jobs/retained", 1, retain=True, start=100)
    async with clients(h1, ("keeper", share), clean=False) as (keeper,):
        await quiet(0.2)  # no retained message for a shared subscription
        assert keeper.items == []
    async with clients(h1, ("other", share)) as (other,):
        await publish_all(h1, "jobs/1", 4)
        await settle([other], 4)
        assert other.payloads == ["m0", "m1", "m2", "m3"]
    await h1.until(lambda: h1.session_state("other") is None)
    await publish_all(h1, "jobs/1", 2, start=4)  # no member connected: the persistent one holds them
    async with clients(h1, ("keeper", []), clean=False) as (keeper,):
        await settle([keeper], 2)
        assert keeper.payloads == ["m4", "m5"]
        await publish_all(h1, "jobs/1", 1, start=6)
        await settle([keeper], 3)
        assert keeper.payloads == ["m4", "m5", "m6"]
    await publish_all(h1, "jobs/1", 1, start=7)
    await asyncio.sleep(0.2)
    await h1.server.stop()
    db = sqlite3.connect(h1.server.settings.server.data_dir / "sessions.db")
    rows = db.execute("SELECT topic, qos FROM mqtt_subscriptions WHERE client_id = 'keeper'").fetchall()
    db.close()
    assert rows == [("$share/g/jobs/#", 1)]

    h2 = await make_harness(h1.server.settings)
    async with clients(h2, ("keeper", []), clean=False) as (keeper,):
        await settle([keeper], 1)
        await publish_all(h2, "jobs/2", 1, start=8)
        await settle([keeper], 2)
        assert keeper.payloads == ["m7", "m8"]


async def test_a_clean_reconnect_ends_a_persistent_members_shared_subscription(harness):
    """A persistent member that comes back with a clean session is no longer a member: nothing is queued for it."""
    async with clients(harness, ("keeper", [("$share/g/jobs/#", 1)]), clean=False):
        pass
    async with harness.mqtt("keeper", clean=True):
        pass
    await publish_all(harness, "jobs/1", 1)
    async with clients(harness, ("keeper", []), clean=False) as (keeper,):
        await quiet(0.4)  # nothing held for the ended member
        assert keeper.items == []
    assert harness.server.broker._index.shared.count == 0
