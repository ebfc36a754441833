"""The integrator view across sites (issue 23 item 4): `intercom-broker integrator` as a subprocess, in front of two
bridged site instances on one Mosquitto. Both listed; one stopped shows unreachable while the other still answers;
a wrong token is 401; a configured site whose URL answers as another site is flagged and lends it no numbers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
import yaml
from pydantic import SecretStr

from broker.bridge import BridgedServer
from broker.integrator.config import load_config
from tests.mosquitto_helpers import Mosquitto, free_port, needs_mosquitto
from tests.support.harness import Harness, make_settings
from tests.support.inbox import Inbox
from tests.support.process import ROOT, read_until_ready

pytestmark = needs_mosquitto

READY = re.compile(r"intercom-broker integrator serving http://127\.0\.0\.1:(\d+)")
INTEGRATOR = "integrator-token-0123456789abcdef"
TOKENS = {"a": "site-a-admin-token-0123456789", "b": "site-b-admin-token-0123456789"}
TIMEOUT_S = 2.0


class Integrator:
    """`python -m broker integrator` on a free port; stderr kept line by line."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.config = config
        self.env = {**os.environ, **env}
        self.log: list[str] = []
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def spawn(self) -> subprocess.Popen[str]:
        self.proc = subprocess.Popen([sys.executable, "-m", "broker", "integrator", "--config", str(self.config),
                                      "--http-port", "0"], cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        return self.proc

    def start(self, timeout: float = 20.0) -> Integrator:
        self.port = int(read_until_ready(self.spawn(), READY, self.log, "integrator", timeout).group(1))
        return self

    def run_to_exit(self, timeout: float = 20.0) -> tuple[int, str]:
        _, err = self.spawn().communicate(timeout=timeout)
        assert self.proc is not None
        return self.proc.returncode, err

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def write_config(path: Path, sites: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"token_env": "TEST_INTEGRATOR_TOKEN", "pbkdf2_iterations": 1000,
                                    "timeout_s": TIMEOUT_S, "sites": sites}))
    return path


ENV = {"TEST_INTEGRATOR_TOKEN": INTEGRATOR, "TEST_SITE_A_TOKEN": TOKENS["a"], "TEST_SITE_B_TOKEN": TOKENS["b"]}


@pytest.fixture
async def sites(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[dict[str, Harness]]:
    """Sites `a` and `b`, each its own instance, data dir and admin token."""
    out: dict[str, Harness] = {}
    for site in ("a", "b"):
        data = tmp_path / site
        data.mkdir()
        settings = make_settings(data, auth={"allow_anonymous_on_loopback": False})
        settings = settings.model_copy(update={"admin_token": SecretStr(TOKENS[site])})
        server = BridgedServer(settings, f"mqtt://127.0.0.1:{mosquitto.port}", site_id=site)
        await server.start()
        out[site] = Harness(server, aiohttp.ClientSession())  # type: ignore[arg-type]
    yield out
    for h in out.values():
        await h.http.close()
        await h.server.stop()


@pytest.fixture
def integrator(tmp_path: Path, sites: dict[str, Harness]) -> Iterator[Integrator]:
    """Sites a, b; `c` configured at site a's URL (a wrong URL: flagged); `down` at a port nobody listens on."""
    config = write_config(tmp_path / "integrator.yaml", [
        {"site_id": "a", "url": sites["a"].base, "token_env": "TEST_SITE_A_TOKEN"},
        {"site_id": "b", "url": sites["b"].base, "token_env": "TEST_SITE_B_TOKEN"},
        {"site_id": "c", "url": sites["a"].base, "token_env": "TEST_SITE_A_TOKEN"},
        {"site_id": "down", "url": f"http://127.0.0.1:{free_port()}", "token_env": "TEST_SITE_B_TOKEN"},
    ])
    proc = Integrator(config, ENV).start()
    yield proc
    proc.stop()


async def get(port: int, path: str, token: str | None = INTEGRATOR) -> tuple[int, Any, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}", headers=headers) as r:
        return r.status, await r.json(content_type=None), dict(r.headers)


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["site_id"]: r for r in rows}


async def call_in_site(port: int, site: str) -> str:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"{site}-door-1") as door:
        await door.subscribe(f"sites/{site}/devices/1/#", qos=1)
        inbox = Inbox(door)
        try:
            await door.publish(f"sites/{site}/devices/1/status", json.dumps({"online": True}), qos=1)
            await door.publish(f"sites/{site}/calls/request/1", json.dumps({"household_number": "101",
                                                                           "request_id": "rq"}), qos=1)
            _, reply = await inbox.wait_for(lambda t, b: isinstance(b, dict) and b.get("request_id") == "rq")
        finally:
            await inbox.close()
    return str(reply["call_id"])


async def test_every_site_listed_with_its_numbers_and_a_wrong_url_flagged(sites, integrator, mosquitto):
    call_id = await call_in_site(mosquitto.port, "a")
    status, body, _ = await get(integrator.port, "/api/sites")
    assert status == 200, body
    rows = by_id(body["data"])
    assert list(rows) == ["a", "b", "c", "down"]
    a, b, c, down = rows["a"], rows["b"], rows["c"], rows["down"]
    for row, site in ((a, "a"), (b, "b")):
        assert row["reachable"] is True
        assert row["site_id_ok"] is True
        assert row["reported_site_id"] == site
        assert row["health"]["healthy"] is True, row
        assert row["devices"]["total"] == 2
        assert row["flags"] == []
        assert row["last_error"] is None
    assert a["live_calls"] == 1
    assert a["devices"]["online"] == 1
    assert a["last_24h"]["calls"] == 1
    assert b["live_calls"] == 0
    assert b["devices"]["online"] == 0
    # c's URL is site a's instance: it says so, c is flagged, and a's numbers are not shown as c's
    assert c["reachable"] is True
    assert c["site_id_ok"] is False
    assert c["reported_site_id"] == "a"
    assert c["flags"]
    assert "site_id_mismatch" in c["flags"][0]
    assert c["devices"] is None
    assert c["live_calls"] is None
    assert "site_id_mismatch" in c["last_error"]
    assert down["reachable"] is False
    assert down["last_error"]
    assert down["last_error_at"]
    # one site's read-only views through the integrator, by the site's own prefix
    status, body, _headers = await get(integrator.port, "/api/sites/a/calls?status=ringing&limit=1")
    assert status == 200, body
    assert [r["call_id"] for r in body["data"]] == [call_id]
    status, body, _ = await get(integrator.port, "/api/sites/b/calls")
    assert (status, body["data"]) == (200, [])
    status, body, _ = await get(integrator.port, "/api/sites/a/devices")
    assert {d["device_id"] for d in body["data"]} == {"1", "5"}
    status, body, _ = await get(integrator.port, "/api/sites/c/calls")
    assert (status, body["data"]) == (404, {"reason": "unknown_site"})  # site a's instance refuses to be c
    status, body, _ = await get(integrator.port, "/api/sites/zz/calls")
    assert (status, body["data"]) == (404, {"reason": "unknown_site"})
    status, body, _ = await get(integrator.port, "/api/sites/a/audit")
    assert status == 404
    status, body, _ = await get(integrator.port, "/api/sites/down/site")
    assert (status, body["data"]) == (502, {"reason": "site_unreachable"})


async def test_a_stopped_site_shows_unreachable_while_the_other_still_answers(sites, integrator):
    await sites["b"].server.stop()
    started = time.monotonic()
    status, body, _ = await get(integrator.port, "/api/sites")
    elapsed = time.monotonic() - started
    assert status == 200, body
    rows = by_id(body["data"])
    assert rows["b"]["reachable"] is False
    assert rows["b"]["last_error"]
    assert rows["a"]["reachable"] is True
    assert rows["a"]["devices"]["total"] == 2
    assert elapsed < TIMEOUT_S + 3  # concurrent, each bounded: a dead site costs at most its timeout
    status, body, _ = await get(integrator.port, "/api/sites/b/calls")
    assert (status, body["data"]["reason"]) == (502, "site_unreachable")
    status, body, _ = await get(integrator.port, "/api/sites/a/calls")
    assert status == 200


async def test_the_integrator_token_is_required_and_the_page_is_public(sites, integrator):
    for token in (None, "wrong-token-0123456789", TOKENS["a"]):
        status, body, _ = await get(integrator.port, "/api/sites", token)
        assert status == 401, body
        assert body["code"] == 401
        status, _, _ = await get(integrator.port, "/api/sites/a/calls", token)
        assert status == 401
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{integrator.port}/") as r:
        assert r.status == 200
        page = await r.text()
        csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "default-src 'self'" in csp
    assert 'src="integrator/integrator.js"' in page
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{integrator.port}/integrator/integrator.js") as r:
        assert r.status == 200
        assert "javascript" in r.headers["Content-Type"]
    assert INTEGRATOR not in "".join(integrator.log)


def test_secrets_stay_out_of_the_file_and_missing_ones_stop_the_start(tmp_path):
    site = {"site_id": "a", "url": "http://127.0.0.1:1", "token_env": "TEST_SITE_A_TOKEN"}
    code, err = Integrator(write_config(tmp_path / "one.yaml", [{**site, "token": "x"}]), ENV).run_to_exit()
    assert code == 2
    assert "token" in err
    env = {k: v for k, v in ENV.items() if k != "TEST_SITE_A_TOKEN"}
    code, err = Integrator(write_config(tmp_path / "two.yaml", [site]), env).run_to_exit()
    assert code == 2
    assert "TEST_SITE_A_TOKEN" in err
    code, err = Integrator(write_config(tmp_path / "three.yaml", [site, site]), ENV).run_to_exit()
    assert code == 2
    assert "listed twice" in err


def test_the_commented_example_is_a_valid_configuration():
    env = {"INTERCOM_INTEGRATOR_TOKEN": INTEGRATOR, "INTERCOM_SITE_A_TOKEN": "a", "INTERCOM_SITE_B_TOKEN": "b"}
    loaded = load_config(ROOT / "contrib" / "integrator.yaml", env)
    assert [s.site_id for s in loaded.config.sites] == ["A", "B"]
    assert loaded.site_tokens == {"A": "a", "B": "b"}
    assert loaded.config.http.port == 8090
