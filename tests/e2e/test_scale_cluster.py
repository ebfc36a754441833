"""The scale-out proof (issue 23): a 2-node RabbitMQ cluster, one PostgreSQL, 2 sites (A: 3 call-service instances,
B: 2), every instance given both nodes' addresses. Site A's parties use node 1, site B's node 2. kill -9 of the
holder of a ringing call (A) and of a connected call (B, a hangup published in the gap); a cluster node stopped
(the one the services and site A's parties are on) and calls going on through the other; cross-site isolation
and refused clients; and the soak oracle: every party got exactly the notifications the replay of the persisted
transitions through the state machine says (bench/soak.py's oracle, over PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from broker.bridge import parse_broker_url
from broker.config import ConfigError
from broker.core import states
from tests.postgres_helpers import Postgres, needs_postgres, postgres  # noqa: F401 (fixture)
from tests.rabbitmq_helpers import RabbitCluster, load_site, needs_rabbitmq
from tests.scale_helpers import Instance, ctl, wait_serving, wait_standby
from tests.support.inbox import Inbox

psycopg = pytest.importorskip("psycopg", reason="psycopg not installed (pip install -e '.[scale]')")

pytestmark = [pytest.mark.slow, needs_rabbitmq, needs_postgres, pytest.mark.timeout(300)]

TTL_S = 1.5
RING_S = 6
Key = tuple[str, str, str | None, str | None]  # (call id, action, reason, resident id), as bench/soak.py counts
SITES: dict[str, dict[str, list[tuple[str, str]]]] = {  # site -> residents / devices as (id, household)
    "A": {"residents": [("2", "101"), ("3", "101"), ("4", "102")], "devices": [("1", "101"), ("5", "102")]},
    "B": {"residents": [("2", "101")], "devices": [("1", "101")]},  # the same ids as site A's: no cross-talk
}


class Party:
    """A device or resident of a site: one broker login, reconnected by the test to another node when its node
    stops; what it received is kept across its connections."""

    def __init__(self, site: str, role: str, ident: str, password: str) -> None:
        self.site, self.role, self.ident, self.password = site, role, ident, password
        self.user = f"{role}-{ident}@{site}"
        self.topic = f"sites/{site}/{'devices' if role == 'device' else 'users'}/{ident}/#"
        self.client: aiomqtt.Client | None = None
        self.inbox: Inbox | None = None
        self.old: list[tuple[str, Any, bool]] = []
        self.connections = 0

    async def connect(self, port: int) -> None:
        await self.close()
        self.connections += 1
        self.client = aiomqtt.Client("127.0.0.1", port, identifier=f"{self.user}-{self.connections}",
                                     username=self.user, password=self.password, timeout=10)
        await self.client.__aenter__()
        await self.client.subscribe(self.topic, qos=1)
        self.inbox = Inbox(self.client)

    async def close(self) -> None:
        if self.inbox is not None:
            self.old += self.inbox.messages
            await self.inbox.close()
            self.inbox = None
        if self.client is not None:
            with contextlib.suppress(aiomqtt.MqttError):  # its node is gone
                await self.client.__aexit__(None, None, None)
            self.client = None

    async def publish(self, topic: str, body: dict[str, Any]) -> None:
        assert self.client is not None
        await self.client.publish(f"sites/{self.site}/{topic}", json.dumps(body), qos=1, timeout=10)

    @property
    def box(self) -> Inbox:
        assert self.inbox is not None, f"{self.user} is not connected"
        return self.inbox

    def messages(self) -> list[tuple[str, Any, bool]]:
        return self.old + (self.inbox.messages if self.inbox is not None else [])

    def received(self) -> Counter[Key]:
        """The notifications it got, keyed as bench/soak.py keys them (its own echoed publishes are not)."""
        got: Counter[Key] = Counter()
        for topic, msg, _ in self.messages():
            if not isinstance(msg, dict):
                continue
            if topic.endswith("/calls/incoming"):
                got[(msg["call_id"], "incoming", None, None)] += 1
            elif topic.endswith("/calls/control") and msg.get("origin") == "server" and "error" not in msg:
                info = msg["call_info"]
                got[(info["call_id"], info["action"], info.get("reason"), msg.get("resident_id"))] += 1
        return got


def replay(pg_url: str) -> tuple[dict[str, Counter[Key]], dict[str, str]]:
    """The soak oracle over PostgreSQL: every persisted transition replayed through the pure state machine gives
    the notifications each party (`role:id`) must have had; also each call's end reason (checked against the
    replay)."""
    want: dict[str, Counter[Key]] = defaultdict(Counter)
    ends: dict[str, str] = {}
    with psycopg.connect(pg_url) as conn:
        calls = conn.execute(
            "SELECT call_id, device_id, household_number, target_resident_ids, start_time, ring_timeout_s, "
            "max_duration_s, status, end_reason, snapshot_at, dnd_resident_ids, forward_to, forward_after_s "
            "FROM calls").fetchall()
        for call_id, dev, hh, targets, start, ring, maxd, status, end_reason, snap, dnd, fwd, fwd_s in calls:
            assert snap is None  # no snapshots in these calls
            call = states.new_call(call_id, dev, hh, tuple(json.loads(targets)), start, ring, maxd,
                                   tuple(json.loads(dnd or "[]")), tuple(json.loads(fwd or "[]")), fwd_s)
            # every call here is an MQTT calls/request, answered `initiated` on the door's control topic (the soak
            # starts its calls over REST, which has no such message)
            want[f"device:{dev}"][(call_id, "initiated", None, None)] += 1
            for rid in call.ringing:
                want[f"resident:{rid}"][(call_id, "incoming", None, None)] += 1
            events = conn.execute("SELECT actor, action, reason, ts FROM call_events WHERE call_id = %s ORDER BY id",
                                  [call_id]).fetchall()
            for actor, action, reason, ts in events[1:]:
                role, _, ident = actor.partition(":")
                call, notices = states.apply(call, states.Party(states.Role(role), ident), states.Action(action),
                                             ts, reason)
                for n in notices:  # unlike the box (soak), the bridge cannot see the broker's clients, so the
                    # "…_elsewhere" to the actor's own topic (for its other clients) is always sent
                    want[n.to.key][(call_id, n.action, n.reason, n.resident_id)] += 1
            assert (status, str(call.state), str(call.end_reason)) == ("ended", "ended", str(end_reason)), call_id
            ends[call_id] = str(end_reason)
    return want, ends


def is_reply(request_id: str) -> Any:
    return lambda t, b: isinstance(b, dict) and b.get("request_id") == request_id


def is_incoming(call_id: str) -> Any:
    return lambda t, b: t.endswith("/calls/incoming") and b.get("call_id") == call_id


async def refused(port: int, user: str | None, password: str | None, topic: str | None = None) -> bool:
    """Whether the broker refuses this login (topic None), or this client's publish on `topic`."""
    try:
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"probe-{time.monotonic_ns()}", username=user,
                                  password=password, timeout=5) as c:
            if topic is None:
                return False
            await c.publish(topic, json.dumps({"household_number": "101", "request_id": "evil"}), qos=1, timeout=5)
            await asyncio.sleep(0.3)  # RabbitMQ closes the connection of a forbidden publish
            await c.publish(topic, b"{}", qos=1, timeout=5)
            return False
    except aiomqtt.MqttError:
        return True


async def may_read(port: int, user: str, password: str, topic: str, own: str) -> bool:
    """Whether the broker lets this client subscribe to `topic` (a refusal: a failure code, or the link closed so
    that its next subscription, to its `own` topics, fails)."""
    try:
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"probe-{time.monotonic_ns()}", username=user,
                                  password=password, timeout=5) as c:
            granted = await c.subscribe(topic, qos=1, timeout=5)
            if 128 in [getattr(g, "value", g) for g in (granted or [])]:
                return False
            await asyncio.sleep(0.3)
            await c.subscribe(own, qos=1, timeout=5)
            return True
    except aiomqtt.MqttError:
        return False


async def stamp(inbox: Inbox, pred: Any, timeout: float) -> float:
    """The monotonic time `inbox` got a message matching `pred`."""
    await inbox.wait_for(pred, timeout=timeout)
    return time.monotonic()


async def wait_log(inst: Instance, text: str, timeout: float) -> float:
    """Seconds until `inst` logged `text`."""
    started = time.monotonic()
    while text not in inst.text():
        assert time.monotonic() - started < timeout, f"{inst.name} never logged {text!r}:\n{inst.text()}"
        assert inst.proc.poll() is None, f"{inst.name} exited:\n{inst.text()}"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.asyncio(loop_factories=["asyncio"])  # the instances are subprocesses: the test's loop is not theirs
async def test_two_sites_on_a_rabbitmq_cluster_survive_kill_9_and_a_node_stop(
        tmp_path: Path, postgres: Postgres) -> None:  # noqa: F811
    began = time.monotonic()
    cluster = RabbitCluster(tmp_path / "rmq")
    await cluster.start()
    n1, n2 = cluster.nodes
    instances: list[Instance] = []
    parties: dict[str, Party] = {}
    try:
        loaded = await asyncio.gather(*(load_site(n1, tmp_path / f"acl-{site}", site, spec["residents"],
                                                  spec["devices"]) for site, spec in SITES.items()))
        creds = {site: c for site, c in zip(SITES, loaded, strict=True)}
        dbs = {site: postgres.create_database() for site in SITES}
        site_instances: dict[str, list[Instance]] = {}
        for site, n in (("A", 3), ("B", 2)):
            spec = SITES[site]
            households: dict[str, dict[str, list[dict[str, str]]]] = {}
            for rid, hh in spec["residents"]:
                households.setdefault(hh, {"residents": [], "devices": []})["residents"].append({"resident_id": rid})
            for did, hh in spec["devices"]:
                households.setdefault(hh, {"residents": [], "devices": []})["devices"].append({"device_id": did})
            config = tmp_path / f"{site}.yaml"
            config.write_text(yaml.safe_dump({
                "auth": {"pbkdf2_iterations": 1000}, "store": {"url": dbs[site]}, "calls": {"ring_timeout_s": RING_S},
                "site": {"households": [{"household_number": h, **v} for h, v in households.items()]}}))
            # both nodes of the cluster, tried in turn
            url = f"mqtt://service-call%40{site}@127.0.0.1:{n1.mqtt_port},127.0.0.1:{n2.mqtt_port}"
            site_instances[site] = []
            for i in range(n):
                data = tmp_path / f"{site}{i}"
                data.mkdir()
                site_instances[site].append(Instance(f"{site}{i}", config, data, url, site, TTL_S,
                                                     ("--broker-protocol", "3.1.1"),
                                                     creds[site][f"service-call@{site}"]))
            instances += site_instances[site]
        holder = {site: await wait_serving(insts) for site, insts in site_instances.items()}
        for site, insts in site_instances.items():
            await wait_standby([i for i in insts if i is not holder[site]])
            await wait_log(holder[site], f"bridged to mqtt://127.0.0.1:{n1.mqtt_port}", 20)
        for site, spec in SITES.items():
            for role, rows in (("resident", spec["residents"]), ("device", spec["devices"])):
                for ident, _ in rows:
                    p = Party(site, role, ident, creds[site][f"{role}-{ident}@{site}"])
                    parties[f"{site}/{role}:{ident}"] = p
        # site A's parties on node 1, site B's on node 2: calls go through both nodes
        await asyncio.gather(*(p.connect(n1.mqtt_port if p.site == "A" else n2.mqtt_port) for p in parties.values()))
        a_dev1, a_dev5, a_r2, a_r4 = (parties[k] for k in ("A/device:1", "A/device:5", "A/resident:2", "A/resident:4"))
        b_dev1, b_r2 = parties["B/device:1"], parties["B/resident:2"]
        ready_at = time.monotonic()

        # -- A: kill -9 of the holder of a ringing call: the next holder's ring timeout fires once --------------
        await a_dev1.publish("calls/request/1", {"household_number": "101", "request_id": "a-ring"})
        _, reply = await a_dev1.box.wait_for(is_reply("a-ring"), timeout=10)
        a_ringing = reply["call_id"]
        rang_at = time.monotonic()
        await a_r2.box.wait_for(is_incoming(a_ringing), timeout=10)
        # -- B: a connected call (through node 2) ---------------------------------------------------------------
        await b_dev1.publish("calls/request/1", {"household_number": "101", "request_id": "b-conn"})
        _, reply = await b_dev1.box.wait_for(is_reply("b-conn"), timeout=10)
        b_connected = reply["call_id"]
        await b_r2.box.wait_for(is_incoming(b_connected), timeout=10)
        await b_r2.publish("users/2/calls/control", {"call_info": {"call_id": b_connected, "action": "answered"}})
        await b_dev1.box.wait_for(ctl(b_connected, "answered"), timeout=10)

        killed_at = time.monotonic()
        holder["A"].kill()
        holder["B"].kill()
        # B: the device hangs up while no instance serves site B; the site's session keeps it for the next holder
        await b_dev1.publish("devices/1/calls/control", {"call_info": {"call_id": b_connected, "action": "hangup",
                                                                       "reason": "done"}})
        next_a = await wait_serving([i for i in site_instances["A"] if i is not holder["A"]], timeout=20)
        next_b = await wait_serving([i for i in site_instances["B"] if i is not holder["B"]], timeout=20)
        failover = {s: (i.serving_at or 0.0) - killed_at for s, i in (("A", next_a), ("B", next_b))}
        assert "recovered_calls=1" in next_a.text()
        assert "recovered_calls=1" in next_b.text()
        _, body = await b_r2.box.wait_for(ctl(b_connected, "hangup"), timeout=15)
        assert body["call_info"]["reason"] == "done"

        # -- cross-site and identity, while A's call rings: refused by the broker ---------------------------------
        timed_out = asyncio.create_task(stamp(a_dev1.box, ctl(a_ringing, "timeout"), 25))
        probes_at = time.monotonic()
        b_pw = creds["B"]["resident-2@B"]
        probes = await asyncio.gather(
            refused(n2.mqtt_port, None, None),  # anonymous
            refused(n1.mqtt_port, "resident-2@A", b_pw),  # site A's user with site B's password
            # B's resident 2 answering A's call, B's door calling in A, B's resident reading A's topics
            refused(n2.mqtt_port, "resident-2@B", b_pw, "sites/A/users/2/calls/control"),
            refused(n2.mqtt_port, "device-1@B", creds["B"]["device-1@B"], "sites/A/calls/request/1"),
            may_read(n2.mqtt_port, "resident-2@B", b_pw, "sites/A/users/2/#", "sites/B/users/2/#"))
        assert probes == [True, True, True, True, False]

        probes_s = time.monotonic() - probes_at
        fired_after = await timed_out - rang_at
        assert RING_S - 1.0 <= fired_after <= RING_S + 6.0, fired_after

        # -- stop node 1: the services and site A's parties move to node 2; calls go on --------------------------
        for inst in (next_a, next_b):  # the services are linked to node 1, the first address
            await wait_log(inst, f"bridged to mqtt://127.0.0.1:{n1.mqtt_port}", 10)
        relinking = asyncio.gather(*(wait_log(i, f"bridged to mqtt://127.0.0.1:{n2.mqtt_port}", 60)
                                     for i in (next_a, next_b)))
        stopped_at = time.monotonic()
        await asyncio.to_thread(n1.stop)
        stop_s = time.monotonic() - stopped_at
        relink_s = await relinking  # counted from the start of the stop
        for p in parties.values():
            if p.site == "A":
                await p.connect(n2.mqtt_port)  # a device's next broker address
        assert all(i.proc.poll() is None for i in (next_a, next_b))  # no lease was lost over it
        await a_dev5.publish("calls/request/5", {"household_number": "102", "request_id": "a-after"})
        _, reply = await a_dev5.box.wait_for(is_reply("a-after"), timeout=15)
        a_after = reply["call_id"]
        await a_r4.box.wait_for(is_incoming(a_after), timeout=10)
        await a_r4.publish("users/4/calls/control", {"call_info": {"call_id": a_after, "action": "answered"}})
        await a_dev5.box.wait_for(ctl(a_after, "answered"), timeout=10)
        await a_dev5.publish("devices/5/calls/control", {"call_info": {"call_id": a_after, "action": "hangup"}})
        await a_r4.box.wait_for(ctl(a_after, "hangup"), timeout=10)
        await b_dev1.publish("calls/request/1", {"household_number": "101", "request_id": "b-after"})
        _, reply = await b_dev1.box.wait_for(is_reply("b-after"), timeout=15)
        b_after = reply["call_id"]
        await b_r2.box.wait_for(is_incoming(b_after), timeout=10)
        await b_dev1.publish("devices/1/calls/control", {"call_info": {"call_id": b_after, "action": "cancelled"}})
        await b_r2.box.wait_for(ctl(b_after, "cancelled"), timeout=10)

        # -- the oracle: per party, exactly the notifications the persisted transitions imply ----------------------
        await asyncio.sleep(1.5)  # nothing arrives twice, late
        ends: dict[str, str] = {}
        for site in SITES:
            want, site_ends = replay(dbs[site])
            ends |= site_ends
            for key, p in parties.items():
                if p.site == site:
                    party_key = key.partition("/")[2]
                    assert p.received() == want.get(party_key, Counter()), (key, p.received(), want.get(party_key))
        assert ends == {a_ringing: "timeout", b_connected: "hangup", a_after: "hangup", b_after: "cancelled"}
        print(f"\ncluster proof ({time.monotonic() - began:.0f} s, parties ready after {ready_at - began:.0f} s): "
              f"kill -9 -> next holder serving A {failover['A']:.2f} s, B {failover['B']:.2f} s (lease {TTL_S} s); "
              f"ring timeout fired {fired_after:.2f} s after the call began; refusal probes {probes_s:.1f} s; "
              f"node 1 stop took {stop_s:.2f} s, the "
              f"services relinked to node 2 {relink_s[0]:.2f} s / {relink_s[1]:.2f} s after the stop began")
    finally:
        for p in parties.values():
            await p.close()
        for inst in instances:
            inst.stop()
        await asyncio.to_thread(cluster.stop)


def test_a_host_list_names_the_cluster_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--external-broker mqtt://user@node1:port,node2` (the cluster test's form): one set of credentials, every
    node's address in order; a bad entry is a start-up error."""
    monkeypatch.setenv("INTERCOM_BROKER_PASSWORD", "pw")
    target = parse_broker_url("mqtt://service-call%40A@127.0.0.1:1884,10.0.0.2,[::1]:1885")
    assert target.addresses == [("127.0.0.1", 1884), ("10.0.0.2", 1883), ("::1", 1885)]
    assert (target.username, target.password) == ("service-call@A", "pw")
    assert target.url == "mqtt://127.0.0.1:1884,10.0.0.2:1883,::1:1885"  # no credentials in logs
    for bad in ("mqtt://h1:1883,", "mqtt://h1:1883,h2:x", "mqtt://h1,,h2"):
        with pytest.raises(ConfigError):
            parse_broker_url(bad)
