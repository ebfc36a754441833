"""Shared-subscription groups are authorised on the full `$share/{group}/{filter}`: nobody joins another's group."""

from __future__ import annotations

import asyncio

from broker.core.tokens import hash_token
from tests.support.harness import ADMIN
from tests.support.security import granted, login, secure_harness

BMS = "integrator.bms.0123456789abcdefghij"
OPS = "integrator.ops.0123456789abcdefghij"


async def _harness(make_harness, **acl):
    return await secure_harness(make_harness, acl={"integrators": {
        "bms": {"token_hash": hash_token(BMS, 1000), "acl": {"subscribe": ["system/#"]}},
        "ops": {"token_hash": hash_token(OPS, 1000), "acl": {"subscribe": ["system/#", "$share/night/system/#"]}},
    }, **acl})


async def test_a_resident_cannot_join_an_integrators_group(make_harness):
    """Resident 2 may read `system/#`, but `$share/bms/system/#` is integrator bms's group: SUBACK 0x80."""
    h, t = await _harness(make_harness)
    async with h.mqtt("integrator-bms", "bms", BMS) as bms, h.mqtt(**login(t, "resident-2")) as r2:
        assert granted(await bms.subscribe("$share/bms/system/#", qos=1)) == [1]
        assert granted(await r2.subscribe("system/#", qos=1)) == [1]
        assert granted(await r2.subscribe("$share/bms/system/#", qos=1)) == [128]
        assert granted(await r2.subscribe("$share/night/system/#", qos=1)) == [128]  # named in ops' ACL only


async def test_a_device_cannot_join_an_integrators_group_and_no_message_is_taken(make_harness):
    """With the resident's and a device's attempts refused, bms receives every system message, not half."""
    h, t = await _harness(make_harness)
    async with h.mqtt("integrator-bms", "bms", BMS) as bms, h.mqtt(**login(t, "resident-2")) as r2, \
            h.mqtt(**login(t, "device-1")) as d1:
        assert granted(await bms.subscribe("$share/bms/system/#", qos=1)) == [1]
        await r2.subscribe("$share/bms/system/#", qos=1)
        await d1.subscribe("$share/bms/system/#", qos=1)
        for i in range(6):
            body = {"type": "notice", "level": "info", "message": f"m{i}"}
            status, _ = await h.post("/api/mqtt/system/message", body, token=ADMIN)
            assert status == 200
        got = []
        async with asyncio.timeout(5):
            async for msg in bms.messages:
                got.append(msg.topic.value)
                if len(got) == 6:
                    break
        assert got == ["system/notice"] * 6


async def test_integrators_use_their_own_group_or_groups_their_acl_names(make_harness):
    """bms may share under `bms` only; ops under `ops` and the `night` group its ACL names, not `bms`."""
    h, _ = await _harness(make_harness)
    async with h.mqtt("integrator-bms", "bms", BMS) as bms, h.mqtt("integrator-ops", "ops", OPS) as ops:
        assert granted(await bms.subscribe("$share/ops/system/#", qos=1)) == [128]
        assert granted(await bms.subscribe("$share/night/system/#", qos=1)) == [128]
        assert granted(await ops.subscribe("$share/ops/system/#", qos=1)) == [1]
        assert granted(await ops.subscribe("$share/night/system/#", qos=1)) == [1]
        assert granted(await ops.subscribe("$share/bms/system/#", qos=1)) == [128]
        assert granted(await bms.subscribe("$share/bms/users/2/#", qos=1)) == [128]  # not its filter either


async def test_residents_and_devices_share_their_own_topics_and_their_own_group(make_harness):
    """A resident may share its own `users/{id}/#` under any group, and anything it reads under its own
    group `resident-{id}`; a device likewise."""
    h, t = await _harness(make_harness)
    async with h.mqtt(**login(t, "resident-4")) as r4, h.mqtt(**login(t, "device-5")) as d5:
        assert granted(await r4.subscribe("$share/g/users/4/#", qos=1)) == [1]
        assert granted(await r4.subscribe("$share/resident-4/system/#", qos=1)) == [1]
        assert granted(await r4.subscribe("$share/resident-4/devices/5/status", qos=0)) == [0]
        assert granted(await r4.subscribe("$share/g/devices/5/status", qos=0)) == [128]  # household residents share it
        assert granted(await r4.subscribe("$share/resident-2/system/#", qos=1)) == [128]
        assert granted(await d5.subscribe("$share/g/devices/5/#", qos=1)) == [1]
        assert granted(await d5.subscribe("$share/g/devices/1/#", qos=1)) == [128]


async def test_acl_rules_can_name_a_group_for_a_role(make_harness):
    """`acl.roles.resident` with `$share/concierge/system/#` lets residents join that group (and no other)."""
    h, t = await _harness(make_harness, roles={"resident": {
        "publish": ["users/%u/calls/control"], "subscribe": ["users/%u/#", "$share/concierge/system/#"]}})
    async with h.mqtt(**login(t, "resident-2")) as r2:
        assert granted(await r2.subscribe("$share/concierge/system/#", qos=1)) == [1]
        assert granted(await r2.subscribe("$share/bms/system/#", qos=1)) == [128]
        assert granted(await r2.subscribe("system/#", qos=1)) == [128]


async def test_local_only_anonymous_clients_may_not_join_an_integrators_group(make_harness):
    """In local-only mode anonymous clients still share freely, except under an integrator's name."""
    h = await make_harness(acl={"integrators": {"bms": {"token_hash": hash_token(BMS, 1000),
                                                          "acl": {"subscribe": ["system/#"]}}}})
    async with h.mqtt("anon") as c:
        assert granted(await c.subscribe("$share/workers/jobs/#", qos=1)) == [1]
        assert granted(await c.subscribe("$share/bms/system/#", qos=1)) == [128]
