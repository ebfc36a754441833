"""The bridge on a real RabbitMQ (its MQTT plugin speaks 3.1.1 only) with the generated users and topic
permissions: anonymous and foreign clients refused, a resident cannot act as another, a call goes through; with
leases (PostgreSQL), the site's 3.1.1 session hands what was published during a take-over to the next holder."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import aiomqtt
import pytest
import yaml

from broker.bridge import SESSION_EXPIRY_S, BridgedServer
from tests.postgres_helpers import needs_postgres, postgres  # noqa: F401 (fixture)
from tests.rabbitmq_helpers import RabbitMQ, load_site, needs_rabbitmq
from tests.scale_helpers import Instance, count, ctl, wait_serving, wait_standby
from tests.support.harness import Harness, make_settings
from tests.support.inbox import Inbox

pytestmark = [pytest.mark.slow, needs_rabbitmq, pytest.mark.timeout(180)]


@pytest.fixture
async def rabbit(tmp_path: Path) -> AsyncIterator[tuple[RabbitMQ, dict[str, str]]]:
    node = RabbitMQ(tmp_path / "rmq")
    node.dir.mkdir()
    await node.start()
    try:
        yield node, await load_site(node, tmp_path / "acl", "a", [("2", "101"), ("4", "102")], [("1", "101")])
    finally:
        node.stop()


def client(node: RabbitMQ, user: str | None, password: str | None) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", node.mqtt_port, identifier=f"c-{user}", username=user, password=password)


async def test_rabbitmq_site_with_generated_permissions(tmp_path, rabbit):
    node, creds = rabbit
    svc_user = "service-call@a"
    url = f"mqtt://{quote(svc_user, safe='')}:{quote(creds[svc_user], safe='')}@127.0.0.1:{node.mqtt_port}"
    data = tmp_path / "data"
    data.mkdir()
    server = BridgedServer(make_settings(data), url, site_id="a")
    await server.start(connect_timeout=20)
    h = Harness(server, aiohttp.ClientSession())  # type: ignore[arg-type]
    try:
        assert server.bridge.connected.is_set(), server.bridge.down_reason()
        assert server.bridge.protocol == "3.1.1"  # auto fell back: RabbitMQ 3.x drops an MQTT 5 CONNECT
        for user, pw in ((None, None), ("evil", "evil"), ("resident-2@a", "wrong")):
            with pytest.raises(aiomqtt.MqttError):
                async with client(node, user, pw):
                    pass
        async with client(node, "device-1@a", creds["device-1@a"]) as dev, \
                client(node, "resident-2@a", creds["resident-2@a"]) as r2:
            await dev.subscribe("sites/a/devices/1/#", qos=1)
            await r2.subscribe("sites/a/users/2/#", qos=1)
            dev_in, r2_in = Inbox(dev), Inbox(r2)
            try:
                await dev.publish("sites/a/calls/request/1", json.dumps({"household_number": "101"}), qos=1)
                _, ring = await r2_in.wait_for(lambda t, b: t.endswith("/calls/incoming"), timeout=10)
                call_id = ring["call_id"]
                answer = json.dumps({"call_info": {"call_id": call_id, "action": "answered"}})
                # resident 4 posing as resident 2: RabbitMQ refuses the publish (and closes that connection)
                try:
                    async with client(node, "resident-4@a", creds["resident-4@a"]) as r4:
                        await r4.publish("sites/a/users/2/calls/control", answer, qos=1, timeout=3)
                except aiomqtt.MqttError:
                    pass
                await asyncio.sleep(0.7)
                _, resp = await h.get(f"/api/mqtt/session?call_id={call_id}")
                assert resp["data"]["status"] == "ringing"
                await r2.publish("sites/a/users/2/calls/control", answer, qos=1)
                _, body = await dev_in.wait_for(
                    lambda t, b: b.get("call_info", {}).get("action") == "answered", timeout=10)
                assert body["resident_id"] == "2"
            finally:
                await dev_in.close()
                await r2_in.close()
        status, health = await h.get("/healthz")
        assert status == 200, health
    finally:
        await h.http.close()
        await server.stop()


@needs_postgres
@pytest.mark.asyncio(loop_factories=["asyncio"])  # the instances are subprocesses: the test's loop is not theirs
async def test_a_take_over_on_rabbitmq_loses_nothing_published_in_the_gap(tmp_path, rabbit, postgres):  # noqa: F811
    """MQTT 3.1.1 has no session expiry: the site's instances share one client id with clean_session off, so
    RabbitMQ keeps the site's subscription queue (bounded by the generated policy) while no instance is connected.
    A hangup and a new call request published between the holder's kill -9 and the next holder's link reach the
    parties once."""
    node, _ = rabbit
    (tmp_path / "acl-A").mkdir()  # a kept password that starts with `-` (rabbitmqctl took it for an option)
    (tmp_path / "acl-A" / "credentials.csv").write_text("user,password\nresident-4@A,-dash-first-password\n")
    creds = await load_site(node, tmp_path / "acl-A", "A", [("2", "101"), ("4", "102")], [("1", "101"), ("5", "102")])
    config = tmp_path / "broker.yaml"
    config.write_text(yaml.safe_dump({"auth": {"pbkdf2_iterations": 1000}, "store": {"url": postgres.create_database()},
                                      "calls": {"ring_timeout_s": 30}, "site": {"households": [
                                          {"household_number": "101", "residents": [{"resident_id": "2"}],
                                           "devices": [{"device_id": "1"}]},
                                          {"household_number": "102", "residents": [{"resident_id": "4"}],
                                           "devices": [{"device_id": "5"}]}]}}))
    url = f"mqtt://service-call%40A@127.0.0.1:{node.mqtt_port}"
    instances = []
    for i in range(2):
        (tmp_path / f"d{i}").mkdir()
        instances.append(Instance(f"i{i}", config, tmp_path / f"d{i}", url, "A", 1.5,
                                  ("--broker-protocol", "3.1.1"), creds["service-call@A"]))
    parties: list[tuple[aiomqtt.Client, Inbox]] = []
    try:
        first = await wait_serving(instances)
        await wait_standby([i for i in instances if i is not first])
        for user, topic in (("device-1@A", "devices/1/#"), ("resident-2@A", "users/2/#"),
                            ("device-5@A", "devices/5/#"), ("resident-4@A", "users/4/#")):
            c = client(node, user, creds[user])
            await c.__aenter__()
            await c.subscribe(f"sites/A/{topic}", qos=1)
            parties.append((c, Inbox(c)))
        (dev1_c, dev1), (_, r2), (dev5_c, dev5), (r4_c, r4) = parties
        assert creds["resident-4@A"] == "-dash-first-password"  # and it logged in with it

        await dev5_c.publish("sites/A/calls/request/5", json.dumps({"household_number": "102", "request_id": "q1"}),
                             qos=1)
        _, reply = await dev5.wait_for(lambda t, b: b.get("request_id") == "q1", timeout=10)
        connected = reply["call_id"]
        await r4.wait_for(lambda t, b: t.endswith("/calls/incoming") and b.get("call_id") == connected, timeout=10)
        await r4_c.publish("sites/A/users/4/calls/control", json.dumps(
            {"call_info": {"call_id": connected, "action": "answered"}}), qos=1)
        await dev5.wait_for(ctl(connected, "answered"), timeout=10)

        killed_at = time.monotonic()
        first.kill()
        # while no instance serves the site: a hangup of the connected call and a new call
        await dev5_c.publish("sites/A/devices/5/calls/control", json.dumps(
            {"call_info": {"call_id": connected, "action": "hangup", "reason": "done"}}), qos=1)
        await dev1_c.publish("sites/A/calls/request/1", json.dumps({"household_number": "101", "request_id": "q2"}),
                             qos=1)
        assert all(i.serving_at is None for i in instances if i is not first)  # published in the gap, truly
        second = await wait_serving([i for i in instances if i is not first], timeout=20)
        failover = (second.serving_at or 0.0) - killed_at
        _, body = await r4.wait_for(ctl(connected, "hangup"), timeout=10)
        assert body["call_info"]["reason"] == "done"
        _, reply = await dev1.wait_for(lambda t, b: b.get("request_id") == "q2", timeout=10)
        new_call = reply["call_id"]
        await r2.wait_for(lambda t, b: t.endswith("/calls/incoming") and b.get("call_id") == new_call, timeout=10)

        await asyncio.sleep(1.0)  # nothing arrives twice, late
        assert count(r4, connected, "hangup") == 1
        assert sum(1 for t, b, _ in dev1.messages if isinstance(b, dict) and b.get("request_id") == "q2") == 1
        assert sum(1 for t, b, _ in r2.messages if t.endswith("/calls/incoming")) == 1
        # the session queue is the one the generated policy bounds: RabbitMQ names it after the shared client id
        queues = await asyncio.to_thread(node.ctl, "list_queues", "name", "policy")
        assert "mqtt-subscription-intercom-service-Aqos1\tintercom-session-A" in queues, queues
        policies = await asyncio.to_thread(node.ctl, "list_policies")
        assert f'"expires":{SESSION_EXPIRY_S * 1000}' in policies, policies
        print(f"\n3.1.1 take-over: kill -9 -> the next holder serving {failover:.2f} s later; the gap's hangup "
              "and call request delivered once")
    finally:
        for c, inbox in parties:
            await inbox.close()
            await c.__aexit__(None, None, None)
        for inst in instances:
            inst.stop()
