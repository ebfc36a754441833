"""Several call-service instances of one site on one Mosquitto and one PostgreSQL: a lease per site, take-over
after kill -9 of the holder, live calls and ring timers recovered from the database (docs/scale-out.md)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiomqtt
import pytest
import yaml

from tests.mosquitto_helpers import Mosquitto, needs_mosquitto
from tests.postgres_helpers import needs_postgres, pg_url, postgres  # noqa: F401 (fixtures)
from tests.scale_helpers import Instance, count, ctl, wait_serving, wait_standby
from tests.support.inbox import Inbox

psycopg = pytest.importorskip("psycopg", reason="psycopg not installed (pip install -e '.[scale]')")

pytestmark = [pytest.mark.slow, needs_postgres, needs_mosquitto, pytest.mark.timeout(120)]

SITE = "A"
TTL_S = 1.5
SITE_CONFIG = {"households": [
    {"household_number": "101", "residents": [{"resident_id": "2"}, {"resident_id": "3"}],
     "devices": [{"device_id": "1"}]},
    {"household_number": "102", "residents": [{"resident_id": "4"}], "devices": [{"device_id": "5"}]},
]}


@pytest.fixture
def cluster(tmp_path: Path, mosquitto: Mosquitto, pg_url: str) -> Iterator[Callable[[int], list[Instance]]]:  # noqa: F811
    config = tmp_path / "broker.yaml"
    config.write_text(yaml.safe_dump({"auth": {"pbkdf2_iterations": 1000}, "store": {"url": pg_url},
                                      "calls": {"ring_timeout_s": 6}, "site": SITE_CONFIG}))
    started: list[Instance] = []

    def start(n: int) -> list[Instance]:
        for _ in range(n):
            data = tmp_path / f"data{len(started)}"
            data.mkdir()
            started.append(Instance(f"i{len(started)}", config, data, f"mqtt://127.0.0.1:{mosquitto.port}", SITE,
                                    TTL_S))
        return started

    yield start
    for inst in started:
        inst.stop()


def lease_holder(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT holder FROM site_leases WHERE site_id = %s", [SITE]).fetchone()
    assert row is not None
    return str(row[0])


async def party(port: int, name: str, topic: str) -> tuple[aiomqtt.Client, Inbox]:
    client = aiomqtt.Client("127.0.0.1", port, identifier=name)
    await client.__aenter__()
    await client.subscribe(f"sites/{SITE}/{topic}", qos=1)
    return client, Inbox(client)


async def test_kill_9_of_the_lease_holder_hands_live_calls_and_timers_to_another_instance(
        cluster: Callable[[int], list[Instance]], mosquitto: Mosquitto, pg_url: str) -> None:  # noqa: F811
    instances = cluster(3)
    first = await wait_serving(instances)
    await wait_standby([i for i in instances if i is not first])
    assert f"/{first.proc.pid}/" in lease_holder(pg_url)

    clients = []
    try:
        for name, topic in (("device-1", "devices/1/#"), ("resident-2", "users/2/#"), ("device-5", "devices/5/#"),
                            ("resident-4", "users/4/#")):
            clients.append(await party(mosquitto.port, name, topic))
        (dev1_c, dev1), (_, r2), (dev5_c, dev5), (r4_c, r4) = clients

        # a ringing call (ring timeout 6 s) whose holder is killed 0.3 s in
        await dev1_c.publish(f"sites/{SITE}/calls/request/1", json.dumps(
            {"household_number": "101", "request_id": "rq-ring"}), qos=1)
        _, reply = await dev1.wait_for(lambda t, b: b.get("request_id") == "rq-ring")
        ringing = reply["call_id"]
        started = time.monotonic()
        await r2.wait_for(lambda t, b: t.endswith("/calls/incoming") and b.get("call_id") == ringing)
        await asyncio.sleep(0.3)
        killed_at = time.monotonic()
        first.kill()
        second = await wait_serving([i for i in instances if i is not first], timeout=20)
        assert second.serving_at is not None
        failover_1 = second.serving_at - killed_at
        assert f"/{second.proc.pid}/" in lease_holder(pg_url)
        assert "recovered_calls=1" in second.text()

        # the ring timeout fires once, on time (6 s after the call began), from the new holder
        await dev1.wait_for(ctl(ringing, "timeout"), timeout=20)
        fired_after = time.monotonic() - started
        assert 5.0 <= fired_after <= 12.0, fired_after

        # a connected call whose (new) holder is killed: the last instance takes it, the device hangs up
        await dev5_c.publish(f"sites/{SITE}/calls/request/5", json.dumps(
            {"household_number": "102", "request_id": "rq-conn"}), qos=1)
        _, reply = await dev5.wait_for(lambda t, b: b.get("request_id") == "rq-conn")
        connected = reply["call_id"]
        await r4.wait_for(lambda t, b: t.endswith("/calls/incoming") and b.get("call_id") == connected)
        await r4_c.publish(f"sites/{SITE}/users/4/calls/control", json.dumps(
            {"call_info": {"call_id": connected, "action": "answered"}}), qos=1)
        await dev5.wait_for(ctl(connected, "answered"))
        killed_at = time.monotonic()
        second.kill()
        # published while no instance serves the site: the site's MQTT session holds it for the next holder
        await dev5_c.publish(f"sites/{SITE}/devices/5/calls/control", json.dumps(
            {"call_info": {"call_id": connected, "action": "hangup", "reason": "done"}}), qos=1)
        third = await wait_serving([i for i in instances if i not in (first, second)], timeout=20)
        assert third.serving_at is not None
        assert third not in (first, second)
        failover_2 = third.serving_at - killed_at
        _, body = await r4.wait_for(ctl(connected, "hangup"), timeout=10)
        assert body["call_info"]["reason"] == "done"

        await asyncio.sleep(1.5)  # nothing arrives twice, late
        assert count(dev1, ringing, "timeout") == 1
        assert count(r2, ringing, "timeout") + count(r2, ringing, "cancelled") == 1
        assert count(r4, connected, "hangup") == 1
        with psycopg.connect(pg_url) as conn:
            rows = dict(conn.execute("SELECT call_id, end_reason FROM calls").fetchall())
            timeouts = conn.execute("SELECT COUNT(*) FROM call_events WHERE call_id = %s AND to_state = 'ended'",
                                    [ringing]).fetchone()
        assert rows == {ringing: "timeout", connected: "hangup"}
        assert timeouts == (1,)
        print(f"\nfailover (kill -9 -> the next instance serves), lease ttl {TTL_S} s: "
              f"{failover_1:.2f} s, {failover_2:.2f} s; ring timeout fired {fired_after:.2f} s after the call began")
    finally:
        for client, inbox in clients:
            await inbox.close()
            await client.__aexit__(None, None, None)


async def test_a_standby_told_to_stop_exits_cleanly_and_a_clean_stop_hands_over_at_once(
        cluster: Callable[[int], list[Instance]]) -> None:
    """SIGTERM of a standby (waiting for the lease) exits 0; SIGTERM of the holder releases the lease, so the
    standby serves without waiting for the lease to expire."""
    instances = cluster(3)
    first = await wait_serving(instances)
    await wait_standby([i for i in instances if i is not first])
    standby, other = [i for i in instances if i is not first]
    standby.proc.terminate()
    assert standby.proc.wait(10) == 0
    stopped_at = time.monotonic()
    first.proc.terminate()
    assert first.proc.wait(10) == 0
    nxt = await wait_serving([other], timeout=20)
    assert nxt.serving_at is not None
    assert nxt.serving_at - stopped_at < TTL_S + 3.0


async def test_a_holder_that_finds_its_lease_taken_stops_serving_and_exits_1(
        cluster: Callable[[int], list[Instance]], pg_url: str) -> None:  # noqa: F811
    """Fencing: if the lease row names another holder (e.g. this one stalled past expiry and a standby took it),
    the instance drops its link and timers and exits 1 (the service manager restarts it as a standby)."""
    (inst,) = cluster(1)
    await wait_serving([inst])
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE site_leases SET holder = 'elsewhere/1/x', expires_at = expires_at + 60"
                     " WHERE site_id = %s", [SITE])
    assert await asyncio.to_thread(inst.proc.wait, 15) == 1
    assert "held by elsewhere/1/x: this instance stops serving the site" in inst.text()


async def test_a_message_received_but_not_yet_committed_when_the_holder_dies_reaches_the_next_holder(
        cluster: Callable[[int], list[Instance]], mosquitto: Mosquitto, pg_url: str) -> None:  # noqa: F811
    """The bridge acknowledges a QoS 1 message to the broker only once what it caused is committed: a holder
    killed between receiving a device's `hangup` and committing it leaves it unacknowledged in the site's
    session, and the next holder gets it again (acknowledged on receipt, it was lost with the holder)."""
    instances = cluster(2)
    first = await wait_serving(instances)
    await wait_standby([i for i in instances if i is not first])
    clients = []
    try:
        for name, topic in (("device-5", "devices/5/#"), ("resident-4", "users/4/#")):
            clients.append(await party(mosquitto.port, name, topic))
        (dev5_c, dev5), (r4_c, r4) = clients
        await dev5_c.publish(f"sites/{SITE}/calls/request/5", json.dumps(
            {"household_number": "102", "request_id": "rq-held"}), qos=1)
        _, reply = await dev5.wait_for(lambda t, b: b.get("request_id") == "rq-held")
        call_id = reply["call_id"]
        await r4.wait_for(lambda t, b: t.endswith("/calls/incoming") and b.get("call_id") == call_id)
        await r4_c.publish(f"sites/{SITE}/users/4/calls/control", json.dumps(
            {"call_info": {"call_id": call_id, "action": "answered"}}), qos=1)
        await dev5.wait_for(ctl(call_id, "answered"))

        # the holder's next commit waits on this lock: it receives the hangup but cannot commit it
        locker = await psycopg.AsyncConnection.connect(pg_url)
        try:
            await locker.execute("BEGIN")
            await locker.execute("LOCK TABLE calls IN ACCESS EXCLUSIVE MODE")
            await dev5_c.publish(f"sites/{SITE}/devices/5/calls/control", json.dumps(
                {"call_info": {"call_id": call_id, "action": "hangup", "reason": "done"}}), qos=1)
            await asyncio.sleep(1.0)  # received (and, before the fix, acknowledged) by the holder
            first.kill()
        finally:
            await locker.execute("ROLLBACK")
            await locker.close()
        nxt = await wait_serving([i for i in instances if i is not first], timeout=20)
        assert nxt is not first
        _, body = await r4.wait_for(ctl(call_id, "hangup"), timeout=10)
        assert body["call_info"]["reason"] == "done"
        await asyncio.sleep(1.0)
        assert count(r4, call_id, "hangup") == 1
        with psycopg.connect(pg_url) as conn:
            row = conn.execute("SELECT end_reason FROM calls WHERE call_id = %s", [call_id]).fetchone()
        assert row == ("hangup",)
    finally:
        for client, inbox in clients:
            await inbox.close()
            await client.__aexit__(None, None, None)
