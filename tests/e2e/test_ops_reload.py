"""SIGHUP on a running box: broker.yaml re-read, live settings applied, an invalid file refused, the process alive."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.config import load_settings
from broker.ops.reload import Reloader
from tests.support.harness import ADMIN
from tests.support.process import ServerProcess, households
from tests.support.tls import _issue, tls_section


def _wait_log(server: ServerProcess, needle: str, after: int, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.log[after:]:
            if needle in line:
                return line
        time.sleep(0.02)
    raise AssertionError(f"no log line with {needle!r} in:\n{''.join(server.log[after:])}")


def _rewrite(server: ServerProcess, change: dict[str, Any]) -> None:
    raw = yaml.safe_load(server.config_path.read_text())
    for section, values in change.items():
        raw[section] = {**(raw.get(section) or {}), **values} if isinstance(values, dict) else values
    server.config_path.write_text(yaml.safe_dump(raw))


def _hup(server: ServerProcess) -> int:
    assert server.proc is not None
    mark = len(server.log)
    server.proc.send_signal(signal.SIGHUP)
    return mark


def _ended(server: ServerProcess, call_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, resp = server.http("GET", f"/api/mqtt/session?call_id={call_id}")
        assert status == 200, resp
        if resp["data"]["status"] == "ended":
            return dict(resp["data"])
        time.sleep(0.05)
    raise AssertionError(f"call {call_id} still {resp['data']['status']} after {timeout} s")


@pytest.mark.slow
def test_sighup_applies_a_new_ring_time_to_the_next_call_and_refuses_an_invalid_file(tmp_path: Path):
    """ring_timeout_s 30 -> 1 on SIGHUP: logged, the next call rings 1 s and times out; a restart-only key is
    named as such; a new household is served; an invalid file gets one ERROR line and changes nothing."""
    server = ServerProcess(tmp_path, {"calls": {"ring_timeout_s": 30}, "site": {"households": households(2)}}).start()
    try:
        first = server.http("POST", "/api/mqtt/call", {"device_id": "d0"})[1]["data"]
        assert first["ring_timeout_s"] == 30

        _rewrite(server, {"calls": {"ring_timeout_s": 1}, "store": {"busy_timeout_ms": 250},
                          "site": {"households": households(3)}})
        mark = _hup(server)
        applied = _wait_log(server, "reload: applied", mark)
        assert "calls.ring_timeout_s 30.0 -> 1.0" in applied
        assert "site.households changed" in applied
        assert "store.busy_timeout_ms" in _wait_log(server, "reload: needs a restart", mark)

        call = server.http("POST", "/api/mqtt/call", {"device_id": "d1"})[1]["data"]
        assert call["ring_timeout_s"] == 1
        started = time.monotonic()
        ended = _ended(server, call["call_id"], timeout=8)
        assert ended["end_reason"] == "timeout"
        assert time.monotonic() - started < 6
        assert server.http("GET", f"/api/mqtt/session?call_id={first['call_id']}")[1]["data"]["status"] == "ringing"
        assert server.http("GET", "/api/admin/households/h2")[0] == 200  # declared by the reloaded site

        for bad in ("calls: {ring_timeout_s: -5}\n", "calls: [unclosed\n"):
            server.config_path.write_text(bad)
            mark = _hup(server)
            refused = _wait_log(server, "reload refused", mark)
            time.sleep(0.3)
            assert server.proc is not None, "SIGHUP ended the process"
            assert server.proc.poll() is None, "SIGHUP ended the process"
            new_lines = [line for line in server.log[mark:] if line.strip()]
            assert new_lines == [refused], new_lines  # one line, nothing applied
            assert "running configuration kept" in refused
        assert server.http("GET", "/healthz")[0] == 200
        again = server.http("POST", "/api/mqtt/call", {"device_id": "d2"})[1]["data"]
        assert again["ring_timeout_s"] == 1  # still the last good file's value
    finally:
        assert server.stop() == 0


def _served_cn(port: int, pki: Path) -> str:
    """The CN of the certificate a TLS listener presents to a new connection."""
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        cert = tls.getpeercert()
    assert cert is not None
    return dict(x[0] for x in cert["subject"])["commonName"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI to make certificates")
async def test_reload_swaps_tls_certificates_for_new_connections_and_refuses_a_missing_one(make_harness, pki,
                                                                                         tmp_path: Path):
    """A renewed certificate and key in broker.yaml: new MQTT/TLS and HTTPS handshakes present it after a reload;
    a certificate file that does not exist refuses the reload and the old one stays in service."""
    https = {"certfile": str(pki / "server.crt"), "keyfile": str(pki / "server.key")}
    h = await make_harness(mqtt={"tls": tls_section(pki)}, http={"tls": https})
    config = tmp_path / "test.yaml"  # what make_settings wrote
    renewed = tmp_path / "renewed"
    renewed.mkdir()
    for name in ("ca.crt", "ca.key"):
        shutil.copy(pki / name, renewed / name)
    await asyncio.to_thread(_issue, renewed, "server2", "IP:127.0.0.1")
    server = h.server

    async def served(port: int) -> str:
        return await asyncio.to_thread(_served_cn, port, pki)  # a blocking handshake, off the server's loop

    reloader = Reloader(lambda: load_settings(config, env={"INTERCOM_ADMIN_TOKEN": ADMIN}), server.services,
                        server.broker, server.tls_contexts, server.presence)
    assert await served(server.mqtts_port) == "server"
    assert await served(server.http_port) == "server"

    raw = yaml.safe_load(config.read_text())
    for section in ("mqtt", "http"):
        raw[section]["tls"] |= {"certfile": str(renewed / "server2.crt"), "keyfile": str(renewed / "server2.key")}
    config.write_text(yaml.safe_dump(raw))
    assert reloader.reload() is True
    assert await served(server.mqtts_port) == "server2"
    assert await served(server.http_port) == "server2"

    raw["mqtt"]["tls"]["certfile"] = str(renewed / "missing.crt")
    config.write_text(yaml.safe_dump(raw))
    assert reloader.reload() is False
    assert await served(server.mqtts_port) == "server2"
