"""The audit log (admin changes, tokens, door unlocks, console sign-ins) and JSON logs with rotation."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from broker.cli import loader_from_args
from tests.support.doors import station
from tests.support.harness import ADMIN, Harness
from tests.support.process import ServerProcess, households
from tests.support.security import secure_harness


async def _all_pages(h: Harness, query: str, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(50):
        path = f"/api/admin/audit?limit={limit}{query}" + (f"&cursor={cursor}" if cursor else "")
        status, resp = await h.get(path, ADMIN)
        assert status == 200, resp
        page = resp["data"]
        assert len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("paging did not end")


async def test_every_admin_change_token_unlock_and_sign_in_is_audited_and_paged(make_harness: Any):
    """Creates, updates, deletes, token issues (and the revocation a delete implies), a refused change, a door
    unlock and console sign-ins (one refused) are each one row: who, what, target, outcome; paged newest first."""
    h, t = await secure_harness(make_harness)
    assert (await h.post("/api/admin/households", {"household_number": "201"}, ADMIN))[0] == 200
    assert (await h.post("/api/admin/devices", {"device_id": "9", "household_number": "201"}, ADMIN))[0] == 200
    assert (await h.post("/api/admin/devices/9/token", None, ADMIN))[0] == 200
    async with h.http.patch(h.base + "/api/admin/devices/9", json={"name": "Gate"},
                            headers={"Authorization": f"Bearer {ADMIN}"}) as r:
        assert r.status == 200
    assert (await h.delete("/api/admin/devices/9", ADMIN))[0] == 200
    assert (await h.post("/api/admin/households", {"household_number": "202"}, t["resident-2"]))[0] == 403
    assert (await h.post("/api/console/signin", {}, ADMIN))[0] == 200
    assert (await h.post("/api/console/signin", {}, "not-a-token-at-all-0123456789"))[0] == 401
    assert (await h.post("/api/console/signin", {}, t["resident-2"]))[0] == 403
    async with station(h, token=t["device-1"], admin=ADMIN):
        call = (await h.post("/api/mqtt/call", {"device_id": "1"}, t["device-1"]))[1]["data"]
        status, resp = await h.post("/api/doors/unlock", {"device_id": "1", "call_id": call["call_id"]},
                                    t["resident-2"])
        assert status == 200, resp
    # resident 4 (another household) is refused: still an unlock attempt, audited with its outcome
    assert (await h.post("/api/doors/unlock", {"device_id": "1"}, t["resident-4"]))[0] == 403

    items = await _all_pages(h, "", limit=4)
    ids = [i["id"] for i in items]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == len(ids)
    rows = [(i["actor"], i["action"], i["target"], i["outcome"]) for i in reversed(items)]
    # secure_harness issued 5 tokens first
    assert rows[:5] == [("admin:admin", "token.issue", f"{kind}/{i}", "ok") for kind, i in
                        (("residents", "2"), ("residents", "3"), ("residents", "4"), ("devices", "1"),
                         ("devices", "5"))]
    assert rows[5:] == [
        ("admin:admin", "admin.create", "households/201", "ok"),
        ("admin:admin", "admin.create", "devices/9", "ok"),
        ("admin:admin", "token.issue", "devices/9", "ok"),
        ("admin:admin", "admin.update", "devices/9", "ok"),
        ("admin:admin", "admin.delete", "devices/9", "ok"),
        ("admin:admin", "token.revoke", "devices/9", "ok"),
        ("resident:2", "admin.create", "households", "403"),
        ("admin:admin", "console.sign_in", None, "ok"),
        ("unknown", "console.sign_in", None, "401"),
        ("resident:2", "console.sign_in", None, "403"),
        ("resident:2", "door.unlock", "devices/1", "opened"),
        ("resident:4", "door.unlock", "devices/1", "no_call"),
    ]
    assert all(i["at"].endswith("Z") and i["remote"] in ("127.0.0.1", None) for i in items)

    middle = items[len(items) // 2]["at"]
    since, until = await _all_pages(h, f"&since={middle}", limit=5), await _all_pages(h, f"&until={middle}", limit=5)
    assert since + until == items
    assert since
    assert until
    assert all(i["at"] >= middle for i in since)
    assert all(i["at"] < middle for i in until)
    assert (await h.get("/api/admin/audit?bogus=1", ADMIN))[0] == 400
    assert (await h.get("/api/admin/audit?cursor=!!notours", ADMIN))[0] == 400
    assert (await h.get("/api/admin/audit", t["resident-2"]))[0] == 403


def test_log_format_flag_overrides_the_file(tmp_path: Path):
    """`--log-format json` wins over broker.yaml's `logging.format`, on start and on every reload."""
    config = tmp_path / "broker.yaml"
    config.write_text("logging: {format: text}\n")
    load = loader_from_args(["--config", str(config), "--log-format", "json"])
    assert load().logging.format == "json"
    config.write_text("logging: {format: text, max_bytes: 8192}\n")
    assert load().logging.format == "json"
    assert load().logging.max_bytes == 8192


@pytest.mark.slow
def test_json_logs_carry_call_and_principal_fields_and_the_file_rotates(tmp_path: Path):
    """With logging.format json every stderr line is one JSON object; a call's end line has its call_id, an
    admin change its principal, a refused MQTT login its client_id; logging.file rotates at max_bytes keeping
    `backups` files."""
    log_file = tmp_path / "logs" / "broker.log"
    server = ServerProcess(tmp_path, {"logging": {"format": "json", "file": str(log_file), "max_bytes": 4096,
                                                   "backups": 2},
                                      "calls": {"ring_timeout_s": 0.2},
                                      "site": {"households": households(30)}}).start()
    try:
        call_ids = []
        for i in range(30):
            status, resp = server.http("POST", "/api/mqtt/call", {"device_id": f"d{i}"})
            assert status == 200, resp
            call_ids.append(resp["data"]["call_id"])
        assert server.http("PATCH", "/api/admin/households/h0", {"name": "Renamed"})[0] == 200
        bad = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="resident-r1", protocol=mqtt.MQTTv311)
        bad.username_pw_set("r1", "resident.r1.not-the-token-0123456789")
        with contextlib.suppress(OSError):
            bad.connect("127.0.0.1", server.mqtt_port, keepalive=10)
            bad.loop_start()
            time.sleep(0.5)
            bad.loop_stop()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(call_ids[-1] in line for line in server.log):
            time.sleep(0.05)
    finally:
        assert server.stop() == 0
    records = [json.loads(line) for line in server.log if line.strip()]
    assert all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    ended = [r for r in records if "ended timeout" in r["message"]]
    assert {r["call_id"] for r in ended} == set(call_ids)
    audit = [r for r in records if r["message"].startswith("audit: ")]
    assert audit
    assert audit[-1]["principal"] == "anonymous"
    assert "admin.update households/h0" in audit[-1]["message"]
    refused = [r for r in records if "bad credentials" in r["message"]]
    assert refused
    assert refused[0]["client_id"] == "resident-r1"
    assert refused[0]["level"] == "WARNING"
    assert log_file.exists()
    assert log_file.with_name("broker.log.1").exists()
    assert not log_file.with_name("broker.log.3").exists()
    assert log_file.stat().st_size <= 4096
    for line in log_file.read_text().splitlines():
        json.loads(line)
