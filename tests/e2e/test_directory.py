"""Admin directory REST, tokens, and token identity over REST and MQTT."""

from __future__ import annotations

import aiomqtt
import pytest

from tests.support.harness import ADMIN


async def test_admin_crud_and_tokens(harness):
    """Households, residents and devices can be created, read, listed, re-tokened and deleted."""
    assert (await harness.post("/api/admin/households", {"household_number": "201", "name": "Flat 201"},
                               ADMIN))[0] == 200
    status, resp = await harness.post("/api/admin/residents", {"resident_id": "20", "household_number": "201"}, ADMIN)
    assert status == 200
    assert resp["data"]["resident_id"] == "20"
    assert resp["data"]["token"].startswith("resident.20.")
    token = resp["data"]["token"]
    row = harness.svc.store.get("residents", "20")
    assert row["token_hash"].startswith("$7$")
    assert token not in row["token_hash"]
    status, resp = await harness.get("/api/admin/residents/20", ADMIN)
    assert status == 200
    assert "token_hash" not in resp["data"]
    assert "token" not in resp["data"]
    status, resp = await harness.get("/api/admin/residents?household_number=201", ADMIN)
    assert [r["resident_id"] for r in resp["data"]] == ["20"]
    assert (await harness.post("/api/admin/residents", {"resident_id": "20", "household_number": "201"},
                               ADMIN))[0] == 409
    status, resp = await harness.post("/api/admin/residents/20/token", None, ADMIN)
    assert status == 200
    assert resp["data"]["token"] != token
    # The old token no longer works; the new one does.
    assert (await harness.get("/api/calls/active", token))[0] == 401
    assert (await harness.get("/api/calls/active", resp["data"]["token"]))[0] == 200
    assert (await harness.delete("/api/admin/households/201", ADMIN))[0] == 409
    assert (await harness.delete("/api/admin/residents/20", ADMIN))[0] == 200
    assert (await harness.delete("/api/admin/households/201", ADMIN))[0] == 200
    assert (await harness.get("/api/admin/households/201", ADMIN))[0] == 404


async def test_resident_token_may_not_do_admin_work(harness):
    """A resident's token is refused on admin endpoints and on other residents' calls."""
    _, resp = await harness.post("/api/admin/residents/4/token", None, ADMIN)
    token4 = resp["data"]["token"]
    assert (await harness.post("/api/admin/households", {"household_number": "x"}, token4))[0] == 403
    call_id = (await harness.start_call("1"))["call_id"]
    status, _ = await harness.post("/api/mqtt/controller/resident",
                                   {"call_info": {"call_id": call_id, "action": "answered"}}, token4)
    assert status == 403
    assert (await harness.get(f"/api/mqtt/session?call_id={call_id}", token4))[0] == 403
    assert (await harness.get("/api/calls", "resident.4.wrongwrongwrongwrongwrong"))[0] == 401


async def test_authenticated_mode_requires_tokens(make_harness):
    """With anonymous access off, REST needs a bearer token and MQTT needs id + token."""
    h = await make_harness(auth={"allow_anonymous_on_loopback": False})
    assert (await h.post("/api/mqtt/call", {"device_id": "1"}))[0] == 401
    assert (await h.get("/healthz"))[0] == 200
    _, resp = await h.post("/api/admin/devices/1/token", None, ADMIN)
    dev_token = resp["data"]["token"]
    _, resp = await h.post("/api/admin/residents/2/token", None, ADMIN)
    r2_token = resp["data"]["token"]
    with pytest.raises(aiomqtt.MqttError):
        async with h.mqtt("anon"):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with h.mqtt("resident-2", username="2", password="resident.2.not-the-right-token-xx"):
            pass
    async with h.mqtt("resident-2", username="2", password=r2_token) as c:
        await c.subscribe("users/2/#", qos=1)
        # A device may only start its own calls.
        assert (await h.post("/api/mqtt/call", {"device_id": "5"}, dev_token))[0] == 403
        status, resp = await h.post("/api/mqtt/call", {"device_id": "1"}, dev_token)
        assert status == 200
        async for msg in c.messages:
            assert str(msg.topic) == "users/2/calls/incoming"
            break
    status, _ = await h.post("/api/mqtt/controller/resident",
                             {"call_info": {"call_id": resp["data"]["call_id"], "action": "answered"}}, r2_token)
    assert status == 200
