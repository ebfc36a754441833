"""REST rate limits: per principal and per address, 429 with Retry-After."""

from __future__ import annotations

from tests.support.harness import ADMIN
from tests.support.security import secure_harness


async def test_principal_over_its_rate_gets_429_with_retry_after(make_harness):
    """Resident 2's 6th request in a burst of 5 gets 429 and Retry-After; resident 3 is unaffected."""
    h, t = await secure_harness(make_harness, limits={"http_per_principal": {"per_s": 0.5, "burst": 5}})
    statuses = [(await h.get("/api/calls/active", t["resident-2"]))[0] for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    async with h.http.get(h.base + "/api/calls/active", headers={"Authorization": f"Bearer {t['resident-2']}"}) as r:
        body = await r.json()
        assert r.status == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert body["code"] == 429
    assert (await h.get("/api/calls/active", t["resident-3"]))[0] == 200


async def test_address_over_its_rate_gets_429_before_authentication(make_harness):
    """With loopback not exempt, the address's burst is spent by bad tokens too, then even admin gets 429."""
    h = await make_harness(auth={"allow_anonymous_on_loopback": False},
                           limits={"exempt_networks": [], "http_per_ip": {"per_s": 0.5, "burst": 4}})
    statuses = [(await h.get("/api/calls", "resident.2.guessguessguessguessguess"))[0] for _ in range(4)]
    assert statuses == [401] * 4
    status, body = await h.get("/api/admin/households", ADMIN)
    assert status == 429
    assert "retry after" in body["message"]


async def test_loopback_is_exempt_from_address_limits_by_default(make_harness):
    """Default `exempt_networks` covers 127.0.0.0/8, so a local process is not throttled per address."""
    h = await make_harness(limits={"http_per_ip": {"per_s": 0.5, "burst": 2}})
    statuses = [(await h.get("/healthz"))[0] for _ in range(5)]
    assert statuses == [200] * 5


async def test_resident_cannot_read_another_households_device_status_over_rest(make_harness):
    """Resident 4 (household 102) gets 403 for device 1's status (household 101); resident 2 gets it."""
    h, t = await secure_harness(make_harness)
    assert (await h.post("/api/mqtt/device/status", {"device_id": "1", "online": True}, t["device-1"]))[0] == 200
    assert (await h.get("/api/devices/1/status", t["resident-2"]))[0] == 200
    assert (await h.get("/api/devices/1/status", t["resident-4"]))[0] == 403
