"""/metrics (parsed by prometheus_client's own parser), $SYS topics and /healthz's reasons, on a real box."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.support.doors import station
from tests.support.harness import ADMIN, Harness
from tests.support.inbox import Inbox
from tests.support.security import login, secure_harness

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(h: Harness, token: str | None = ADMIN) -> tuple[int, str, Samples]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with h.http.get(h.base + "/metrics", headers=headers) as r:
        text = await r.text()
        if r.status != 200:
            return r.status, text, {}
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return 200, text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_counters_move_with_a_real_call_and_unlock(make_harness: Any):
    """A call rung over MQTT, answered, then a door unlock acked by the station over MQTT: calls by outcome and
    end reason, setup latency, unlocks by outcome and ack latency, messages in/out, group commits and
    connections by role all move; /metrics takes the admin or metrics token only."""
    h, t = await secure_harness(make_harness, doors={"unlock_ends_call": True}, metrics={"token": "scraper-token-0123"})
    assert (await scrape(h, None))[0] == 401
    assert (await scrape(h, t["resident-2"]))[0] == 403
    assert (await scrape(h, "scraper-token-0123"))[0] == 200
    _, _, before = await scrape(h)
    async with station(h, token=t["device-1"], admin=ADMIN), h.mqtt(**login(t, "resident-2")) as r2:
        await r2.subscribe("users/2/#", qos=1)
        inbox = Inbox(r2)
        call = (await h.post("/api/mqtt/call", {"device_id": "1"}, t["device-1"]))[1]["data"]
        await inbox.wait_for(lambda tp, b: tp.endswith("/calls/incoming"))
        status, _ = await h.post("/api/mqtt/controller/resident",
                                 {"call_info": {"call_id": call["call_id"], "action": "answered"}}, t["resident-2"])
        assert status == 200
        status, resp = await h.post("/api/doors/unlock", {"device_id": "1", "call_id": call["call_id"]},
                                    t["resident-2"])
        assert status == 200, resp
        _, _, during = await scrape(h)
        assert value(during, "intercom_mqtt_connections", protocol="mqtt311", role="device") == 1
        assert value(during, "intercom_mqtt_connections", protocol="mqtt311", role="resident") == 1
        await inbox.close()
    _, text, after = await scrape(h)
    assert value(after, "intercom_calls_ended_total", outcome="answered", end_reason="door_opened") == \
        value(before, "intercom_calls_ended_total", outcome="answered", end_reason="door_opened") + 1
    assert value(after, "intercom_call_setup_seconds_count") == value(before, "intercom_call_setup_seconds_count") + 1
    assert 0 < value(after, "intercom_call_setup_seconds_sum") < 5
    assert value(after, "intercom_door_unlocks_total", outcome="opened") == 1
    assert value(after, "intercom_door_unlock_ack_seconds_count") == 1
    assert value(after, "intercom_door_unlock_ack_seconds_bucket", le="+Inf") == 1
    # the station's ack came in over MQTT; the invite, control notices and the command went out
    assert value(after, "intercom_mqtt_messages_received_total") >= value(before,
                                                                          "intercom_mqtt_messages_received_total") + 1
    assert value(after, "intercom_mqtt_messages_sent_total") > value(before, "intercom_mqtt_messages_sent_total")
    assert value(after, "intercom_group_commit_seconds_count") > value(before, "intercom_group_commit_seconds_count")
    assert value(after, "intercom_db_write_gate_open") == 1
    assert value(after, "intercom_rss_bytes") > 10_000_000
    assert value(after, "process_resident_memory_bytes") > 10_000_000
    assert 0 <= value(after, "intercom_event_loop_lag_seconds") < 5
    assert ('intercom_refused_total{reason="call_admission"}' in text)
    assert ('intercom_mqtt_messages_dropped_total{reason="queue_overflow"}' in text)
    # a refused MQTT login is counted by reason
    bad = h.mqtt("device-5", username="5", password="device.5.wrong-secret-wrong-secret")
    try:
        async with bad:
            pass
    except Exception:
        pass
    _, _, refused = await scrape(h)
    assert value(refused, "intercom_refused_total", reason="bad_credentials") >= 1


async def test_sys_topics_are_published_and_readable_by_admin_and_integrators(make_harness: Any):
    """`$SYS/broker/...` as Mosquitto names them, retained, on the interval; an integrator with no ACL
    of its own may read them, a resident may not."""
    from broker.core.tokens import hash_token

    integrator = {"monitor": {"token_hash": hash_token("integrator-secret-0123456789", 1000)}}
    h, t = await secure_harness(make_harness, metrics={"sys_interval_s": 0.2}, acl={"integrators": integrator})
    async with h.mqtt("integrator-monitor", username="monitor", password="integrator-secret-0123456789") as mon:
        result = await mon.subscribe("$SYS/broker/#", qos=0)
        assert result is not None
        got: dict[str, str] = {}
        async with asyncio.timeout(5):
            async for msg in mon.messages:
                got[str(msg.topic)] = bytes(msg.payload).decode()  # type: ignore[arg-type]
                if ({"$SYS/broker/uptime", "$SYS/broker/messages/received"} <= got.keys()
                        and int(got.get("$SYS/broker/clients/connected", "0")) >= 1):
                    break  # the retained values first, then a fresh round counting this client
        assert int(got["$SYS/broker/clients/connected"]) >= 1
        assert got["$SYS/broker/uptime"].endswith(" seconds")
        assert got["$SYS/broker/version"].startswith("intercom-broker version")
    async with h.mqtt(**login(t, "resident-2")) as r2:
        granted = await r2.subscribe("$SYS/broker/#", qos=0)
        codes = [int(getattr(c, "value", c)) for c in granted]
        assert codes == [128]


async def test_healthz_keeps_its_fields_and_says_why_it_is_unhealthy(harness: Harness):
    """Healthy: 200 with broker/http/active_calls plus healthy/problems; a closed write gate: 503 naming it."""
    status, resp = await harness.get("/healthz")
    assert status == 200
    data = resp["data"]
    assert data["broker"] is True
    assert data["http"] is True
    assert data["active_calls"] == 0
    assert data["healthy"] is True
    assert data["problems"] == []
    assert data["write_gate"] == "open"
    gate = harness.svc.store.gate
    import sqlite3

    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = 5  # type: ignore[attr-defined]
    gate.failed(busy)  # what a write failing on another process's lock does
    async with aiohttp.ClientSession() as http, http.get(harness.base + "/healthz") as r:
        body = await r.json()
        assert r.status == 503
    assert body["data"]["healthy"] is False
    assert body["data"]["write_gate"] == "closed"
    assert "write gate closed" in body["message"]
    assert body["data"]["active_calls"] == 0
    gate.succeeded()
    assert (await harness.get("/healthz"))[0] == 200
