"""The bridge on a real RabbitMQ (its MQTT plugin speaks 3.1.1 only) with the generated users and topic
permissions: anonymous and foreign clients refused, a resident cannot act as another, a call goes through."""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import aiomqtt
import pytest

from broker.bridge import BridgedServer
from broker.scale.broker_acl import broker_users, write_files
from tests.rabbitmq_helpers import RabbitMQ, needs_rabbitmq
from tests.support.harness import Harness, make_settings
from tests.support.inbox import Inbox

pytestmark = [pytest.mark.slow, needs_rabbitmq, pytest.mark.timeout(180)]


@pytest.fixture
async def rabbit(tmp_path: Path) -> AsyncIterator[tuple[RabbitMQ, dict[str, str]]]:
    node = RabbitMQ(tmp_path / "rmq")
    node.dir.mkdir()
    await node.start()
    try:
        users = broker_users([{"resident_id": r, "household_number": h} for r, h in (("2", "101"), ("4", "102"))],
                             [{"device_id": "1", "household_number": "101"}], "a")
        write_files(users, tmp_path / "acl", mosquitto=False, rabbitmq=True)
        await asyncio.to_thread(node.ctl_script, tmp_path / "acl" / "rabbitmq.sh")
        with (tmp_path / "acl" / "credentials.csv").open(newline="") as f:
            creds = {row["user"]: row["password"] for row in csv.DictReader(f)}
        yield node, creds
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
