"""Call history at scale: date ranges, cursor paging past the newest page, unknown parameters, CSV, retention."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from broker.core.retention import prune
from tests.support.harness import ADMIN, Harness


async def _calls(h: Harness, n: int) -> list[tuple[str, float]]:
    """`n` ended calls from device 1, 20 ms apart: (call_id, wall time just before it started)."""
    made = []
    for _ in range(n):
        at = time.time()
        call_id = (await h.start_call())["call_id"]
        assert (await h.post("/api/mqtt/end-session", {"call_id": call_id}))[0] == 200
        made.append((call_id, at))
        await asyncio.sleep(0.02)
    return made


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _get(h: Harness, path: str) -> tuple[int, Any, Any]:
    async with h.http.get(h.base + path) as r:
        return r.status, r.headers, await r.json()


async def test_cursor_paging_reaches_every_call_once(harness: Harness) -> None:
    """limit=3 pages walk all 8 calls newest first, each exactly once, and the last page has no cursor."""
    made = await _calls(harness, 8)
    seen: list[str] = []
    path = "/api/calls?device_id=1&limit=3"
    for _ in range(5):
        status, headers, body = await _get(harness, path)
        assert status == 200, body
        seen += [c["call_id"] for c in body["data"]]
        if "X-Next-Cursor" not in headers:
            break
        assert 'rel="next"' in headers["Link"]
        path = f"/api/calls?device_id=1&limit=3&cursor={headers['X-Next-Cursor']}"
    assert seen == [c for c, _ in reversed(made)]


async def test_since_and_until_select_a_range(harness: Harness) -> None:
    """since/until (ISO 8601) keep only the calls started in [since, until)."""
    made = await _calls(harness, 6)
    since, until = _iso(made[2][1]), _iso(made[5][1])
    status, _, body = await _get(harness, f"/api/calls?since={since}&until={until}&limit=100")
    assert status == 200, body
    assert [c["call_id"] for c in body["data"]] == [made[4][0], made[3][0], made[2][0]]
    status, _, body = await _get(harness, f"/api/calls?since={since[:10]}&limit=100")  # a bare date: UTC midnight
    assert status == 200
    assert len(body["data"]) == 6


async def test_unknown_or_bad_parameters_are_a_400(harness: Harness) -> None:
    """A misspelt filter, an unparsable date, a forged cursor or an empty range: 400 in the envelope."""
    await _calls(harness, 1)
    for query, word in (("sinse=2026-01-01", "sinse"), ("since=yesterday", "since"), ("cursor=bm9wZQ", "cursor"),
                        ("since=2026-01-02&until=2026-01-01", "until"), ("format=xml", "format")):
        status, _, body = await _get(harness, f"/api/calls?{query}")
        assert status == 400, query
        assert body["code"] == 400, body
        assert word in body["message"], body
        assert body["data"] is None, body


async def test_csv_export_of_a_date_range(harness: Harness) -> None:
    """/api/calls.csv and ?format=csv list every call of the range past one page, one row per call."""
    made = await _calls(harness, 5)
    for path in (f"/api/calls.csv?since={_iso(made[1][1])}", f"/api/calls?format=csv&since={_iso(made[1][1])}"):
        async with harness.http.get(harness.base + path) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/csv")
            rows = list(csv.DictReader(io.StringIO(await r.text())))
        assert [row["call_id"] for row in rows] == [c for c, _ in reversed(made[1:])]
        assert all(row["status"] == "ended" and row["device_id"] == "1" for row in rows)


async def test_a_resident_exports_only_its_household(make_harness: Any) -> None:
    """A resident's token scopes the CSV to its own household; asking for another is 403."""
    h = await make_harness(server={"host": "0.0.0.0"})
    async with h.http.post(h.base + "/api/admin/residents/2/token", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
        token = (await r.json())["data"]["token"]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
            http.get(h.base + "/api/calls.csv?household_number=102") as r:
        assert r.status == 403


async def test_search_finds_a_call_by_id_prefix_or_party(harness: Harness) -> None:
    """q= matches a call id prefix, or a rung resident's id; LIKE wildcards in it match only themselves."""
    made = await _calls(harness, 3)
    other = await harness.start_call("5")  # household 102 (resident 4)
    _, _, body = await _get(harness, f"/api/calls?q={made[1][0][:-3]}")
    assert [c["call_id"] for c in body["data"]] == [made[1][0]]
    _, _, body = await _get(harness, "/api/calls?q=4")
    assert [c["call_id"] for c in body["data"]] == [other["call_id"]]
    _, _, body = await _get(harness, "/api/calls?q=call-%25")
    assert body["data"] == []


async def test_device_health_summarises_status_changes(harness: Harness) -> None:
    """The health report lists online/battery changes (not unchanged reports) and sums the time offline."""
    for report in ({"online": True, "battery": 90}, {"battery": 90}, {"battery": 70}, {"online": False}):
        assert (await harness.post("/api/mqtt/device/status", {"device_id": "1", **report}))[0] == 200
    await asyncio.sleep(0.3)  # the clock: time offline to sum
    status, _, body = await _get(harness, "/api/devices/1/status/history?days=1")
    assert status == 200, body
    data = body["data"]
    assert [(c["online"], c["battery"]) for c in data["changes"]] == [(True, 90), (True, 70), (False, 70)]
    assert data["summary"]["battery_first"] == 90
    assert data["summary"]["battery_last"] == 70
    assert data["summary"]["offline_s"] >= 0.2
    assert 0 < data["summary"]["online_ratio"] < 1
    assert (await _get(harness, "/api/devices/1/status/history?days=0"))[0] == 400
    assert (await _get(harness, "/api/devices/nope/status/history"))[0] == 404


def test_retention_prunes_old_rows_in_batches(tmp_path: Path) -> None:
    """prune() deletes ended calls (events, per-resident rows), door events and status history before the cutoff;
    live calls and newer rows stay."""
    from broker.core.store import Store

    path = tmp_path / "intercom.db"
    Store(path).close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        for i in range(25):
            status = "ringing" if i == 0 else "ended"
            db.execute("INSERT INTO calls (call_id, device_id, status, start_time) VALUES (?, '1', ?, ?)",
                       (f"old{i}", status, 1000.0 + i))
            db.execute("INSERT INTO call_events (call_id, ts) VALUES (?, ?)", (f"old{i}", 1000.0 + i))
            db.execute("INSERT INTO resident_calls (resident_id, call_id, start_time, outcome, seen)"
                       " VALUES ('2', ?, ?, 'missed', 0)", (f"old{i}", 1000.0 + i))
            db.execute("INSERT INTO door_events (ts, device_id) VALUES (?, '1')", (1000.0 + i,))
            db.execute("INSERT INTO device_status_history (device_id, ts, online) VALUES ('1', ?, 1)", (1000.0 + i,))
        db.execute("INSERT INTO calls (call_id, device_id, status, start_time) VALUES ('new', '1', 'ended', 9000)")
        db.execute("INSERT INTO door_events (ts, device_id) VALUES (9000, '1')")
        db.commit()
    assert prune(path, cutoff=5000.0, status_cutoff=None, batch=7) == 24 + 25
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT COUNT(*) FROM device_status_history").fetchone()[0] == 25
    assert prune(path, cutoff=None, status_cutoff=5000.0, batch=7) == 25
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert [r[0] for r in db.execute("SELECT call_id FROM calls ORDER BY call_id")] == ["new", "old0"]
        assert db.execute("SELECT COUNT(*) FROM call_events").fetchone()[0] == 1
        assert db.execute("SELECT COUNT(*) FROM resident_calls").fetchone()[0] == 1
        assert db.execute("SELECT ts FROM door_events").fetchall() == [(9000.0,)]
        assert db.execute("SELECT COUNT(*) FROM device_status_history").fetchone()[0] == 0


async def test_retention_runs_at_start(make_harness: Any, tmp_path: Path) -> None:
    """A box with history.retention_days prunes calls older than that at start, and keeps newer ones."""
    h = await make_harness()
    made = await _calls(h, 3)
    await h.server.stop()
    with contextlib.closing(sqlite3.connect(tmp_path / "intercom.db")) as db:
        db.execute("UPDATE calls SET start_time = start_time - 40 * 86400 WHERE call_id != ?", (made[2][0],))
        db.commit()
    h2 = await make_harness(history={"retention_days": 30})
    for _ in range(100):
        _, _, body = await _get(h2, "/api/calls?limit=100")
        if len(body["data"]) == 1:
            break
        await asyncio.sleep(0.05)
    assert [c["call_id"] for c in body["data"]] == [made[2][0]]
