"""No-answer forwarding, end to end: the same call rings a fallback in a second phase."""

from __future__ import annotations

import asyncio

import pytest

from broker.core.trtc import verify_user_sig
from tests.support.harness import ADMIN
from tests.support.inbox import is_ctl, parties

SITE = {"households": [
    {"household_number": "101", "residents": [{"resident_id": "2"}, {"resident_id": "3"}],
     "devices": [{"device_id": "1"}]},
    {"household_number": "102", "residents": [{"resident_id": "4"}], "devices": [{"device_id": "5"}]},
    {"household_number": "guard", "residents": [{"resident_id": "9"}]},
], "forward_to": ["9"], "forward_after_s": 0.4}


async def test_unanswered_call_forwards_to_the_concierge_who_answers(make_harness):
    """After forward_after_s the device hears `forwarded`, the household stops, the concierge rings and answers."""
    h = await make_harness(site=SITE, calls={"ring_timeout_s": 5})
    async with parties(h) as connect:
        dev, r2, r9 = await connect("device", "1"), await connect("resident", "2"), await connect("resident", "9")
        data = await h.start_call("1")
        call_id = data["call_id"]
        _, body = await dev.wait_for(is_ctl("forwarded"))
        assert body["call_info"]["call_id"] == call_id
        assert body["call_info"]["reason"] == "no_answer"
        assert body["forward_to"] == ["9"]
        await r2.wait_for(is_ctl("cancelled", "forwarded"))
        _, inc = await r9.wait_for(lambda t, b: t == "users/9/calls/incoming")
        assert inc["call_id"] == call_id
        assert inc["call_info"]["action"] == "forwarded"
        assert inc["household_number"] == "101"
        assert inc["device_id"] == "1"
        assert verify_user_sig(inc["tencen_rtc"]["user_sig"], "test-trtc-secret").identifier == "resident_9"
        _, resp = await h.get(f"/api/mqtt/session?call_id={call_id}")
        s = resp["data"]
        assert s["status"] == "ringing"
        assert s["ring_phase"] == "forwarded"
        assert s["ringing_resident_ids"] == ["9"]
        assert s["forward_to"] == ["9"]
        assert s["forwarded_at"] is not None
        # the original targets may no longer answer; the concierge may (anonymous REST: it is the only one ringing)
        status, _ = await h.post("/api/mqtt/controller/resident", {
            "resident_id": "2", "call_info": {"call_id": call_id, "action": "answered"}})
        assert status == 409
        status, _ = await h.post("/api/mqtt/controller/resident", {"call_info": {"call_id": call_id,
                                                                                 "action": "answered"}})
        assert status == 200
        _, body = await dev.wait_for(is_ctl("answered"))
        assert body["resident_id"] == "9"
        events = [(e["actor"], e["action"]) for e in h.svc.store.call_events(call_id)]
        assert events == [("device:1", "initiated"), ("server:server", "forward"), ("resident:9", "answered")]


async def test_forwarded_call_nobody_answers_ends_timeout(make_harness):
    """The second phase rings `ring_timeout_s`, then the call ends `timeout` and the concierge hears it."""
    h = await make_harness(site=SITE, calls={"ring_timeout_s": 0.6})
    async with parties(h) as connect:
        r9 = await connect("resident", "9")
        call_id = (await h.start_call("1"))["call_id"]
        await r9.wait_for(lambda t, b: t.endswith("/incoming"))
        _, body = await r9.wait_for(is_ctl("timeout"))
        assert body["call_info"]["call_id"] == call_id
        _, resp = await h.get(f"/api/mqtt/session?call_id={call_id}")
        assert resp["data"]["end_reason"] == "timeout"


async def test_every_target_timing_out_forwards_at_once(make_harness):
    """Both residents' own `timeout` (their phones rang out) forwards the call before forward_after_s."""
    h = await make_harness(site={**SITE, "forward_after_s": 30})
    async with parties(h) as connect:
        dev = await connect("device", "1")
        call_id = (await h.start_call("1"))["call_id"]
        for rid in ("2", "3"):
            assert (await h.post("/api/mqtt/controller/resident", {
                "resident_id": rid, "call_info": {"call_id": call_id, "action": "timeout"}}))[0] == 200
        await dev.wait_for(is_ctl("forwarded"))


async def test_household_forwarding_replaces_the_sites(make_harness):
    """PUT /api/households/101/forwarding names resident 4; `forward_to: null` goes back to the site's."""
    h = await make_harness(site=SITE, calls={"ring_timeout_s": 5})
    status, resp = await h.put("/api/households/101/forwarding", {"forward_to": ["4"], "forward_after_s": 0.3},
                             token=ADMIN)
    assert status == 200
    assert resp["data"]["effective"] == {"forward_to": ["4"], "forward_after_s": 0.3,
                                                           "source": "household"}
    async with parties(h) as connect:
        r4 = await connect("resident", "4")
        call_id = (await h.start_call("1"))["call_id"]
        _, inc = await r4.wait_for(lambda t, b: t == "users/4/calls/incoming")
        assert inc["call_id"] == call_id
    status, resp = await h.put("/api/households/101/forwarding", {"forward_to": None}, token=ADMIN)
    assert status == 200
    assert resp["data"]["effective"]["forward_to"] == ["9"]
    assert resp["data"]["effective"]["source"] == "site"
    assert (await h.get("/api/households/101/forwarding"))[1]["data"]["forward_to"] is None


async def test_forwarding_from_broker_yaml_per_household(make_harness):
    """`forward_to` under a household in site: applies to that household only."""
    site = {**SITE, "forward_to": [], "households": [
        {**SITE["households"][0], "forward_to": ["4"], "forward_after_s": 0.3}, *SITE["households"][1:]]}
    h = await make_harness(site=site, calls={"ring_timeout_s": 5})
    _, resp = await h.get("/api/households/101/forwarding")
    assert resp["data"]["effective"]["forward_to"] == ["4"]
    _, resp = await h.get("/api/households/102/forwarding")
    assert resp["data"]["effective"]["forward_to"] == []


async def test_forwarding_permissions(make_harness):
    """Only the admin sets forwarding; a resident of the household may read it, another resident may not."""
    h = await make_harness(site=SITE)
    t2, t4, d1 = await h.token("residents", "2"), await h.token("residents", "4"), await h.token("devices", "1")
    for tok in (t2, t4, d1):
        status, resp = await h.put("/api/households/101/forwarding", {"forward_to": ["9"]}, token=tok)
        assert status == 403
        assert resp["message"].startswith("禁止访问: ")
    assert (await h.get("/api/households/101/forwarding", token=t2))[0] == 200
    assert (await h.get("/api/households/101/forwarding", token=t4))[0] == 403


@pytest.mark.parametrize(("body", "status", "detail"), [
    ({}, 400, "无效的请求参数: forward_to: field required"),
    ({"forward_to": "9"}, 400, "无效的请求参数: forward_to: "),
    ({"forward_to": ["9"], "forward_after_s": 0}, 400, "无效的请求参数: forward_after_s: "),
    ({"forward_to": ["9"], "forward_after_s": "soon"}, 400, "无效的请求参数: forward_after_s: "),
    ({"forward_to": ["a/b"]}, 400, "无效的请求参数: forward_to.0: "),
    ({"forward_to": ["nobody"]}, 404, "资源不存在: resident 'nobody' not found"),
])
async def test_forwarding_bad_inputs(make_harness, body, status, detail):
    """Bad bodies are 400 naming the field; an unknown fallback resident is 404."""
    h = await make_harness(site=SITE)
    got, resp = await h.put("/api/households/101/forwarding", body, token=ADMIN)
    assert got == status, resp
    assert resp["message"].startswith(detail), resp
    assert (await h.put("/api/households/999/forwarding", {"forward_to": None}, token=ADMIN))[0] == 404


async def test_a_call_recovered_after_its_forward_deadline_forwards(make_harness, settings_factory):
    """A ringing call whose forward deadline passed while the server was down forwards once it is back."""
    settings = settings_factory(site=SITE, calls={"ring_timeout_s": 5})
    h = await make_harness(settings)
    call_id = (await h.start_call("1"))["call_id"]
    await h.server.stop()
    await asyncio.sleep(0.5)  # the clock: the forward deadline (0.4 s) passes while the server is down
    h2 = await make_harness(settings)
    for _ in range(50):
        _, resp = await h2.get(f"/api/mqtt/session?call_id={call_id}")
        if resp["data"]["ring_phase"] == "forwarded":
            break
        await asyncio.sleep(0.05)
    assert resp["data"]["ring_phase"] == "forwarded"
    assert resp["data"]["ringing_resident_ids"] == ["9"]
    assert resp["data"]["forward_after_s"] == 0.4
    assert resp["data"]["status"] == "ringing"
