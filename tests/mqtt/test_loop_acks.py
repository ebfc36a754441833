"""A stock MQTT 3.1.1 client (mosquitto_pub) gets the PUBACK of every QoS 1 call request, over TCP and TLS, on
both event loops: in-process (the loop of the test) and as `python -m broker --loop ...`."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.process import ServerProcess, households
from tests.support.tls import tls_section

pytestmark = pytest.mark.skipif(shutil.which("mosquitto_pub") is None or shutil.which("openssl") is None,
                                reason="needs mosquitto_pub and the openssl CLI")

N = 20  # requests in a row, each from a new connection, each starting a call (its own device)
PUB_TIMEOUT_S = 10.0


def _pub_args(port: int, device: str, cafile: Path | None) -> list[str]:
    tls = ["--cafile", str(cafile)] if cafile is not None else []
    return ["mosquitto_pub", "-d", "-h", "127.0.0.1", "-p", str(port), *tls, "-q", "1",
            "-t", f"calls/request/{device}", "-m", "{}"]


def _unacknowledged(outputs: list[tuple[str, int | None]]) -> list[str]:
    """The devices whose request got no PUBACK (output of `mosquitto_pub -d`, exit code; None: timed out)."""
    return [f"d{i}: rc={rc} {out[-300:]!r}" for i, (out, rc) in enumerate(outputs)
            if rc != 0 or "received PUBACK" not in out]


async def _pub_async(port: int, device: str, cafile: Path | None) -> tuple[str, int | None]:
    proc = await asyncio.create_subprocess_exec(*_pub_args(port, device, cafile), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), PUB_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        return out.decode(errors="replace"), None
    return out.decode(errors="replace"), proc.returncode


def _pub(port: int, device: str, cafile: Path | None) -> tuple[str, int | None]:
    try:
        done = subprocess.run(_pub_args(port, device, cafile), capture_output=True, text=True, timeout=PUB_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        return str(exc.stdout or ""), None
    return done.stdout + done.stderr, done.returncode


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_every_call_request_is_acknowledged_in_process(make_harness, pki, transport):
    """20 QoS 1 `calls/request` from mosquitto_pub in a row: each gets its PUBACK and each call is started."""
    tls = transport == "tls"
    h = await make_harness(site={"households": households(N)}, **({"mqtt": {"tls": tls_section(pki)}} if tls else {}))
    port = h.server.mqtts_port if tls else h.server.mqtt_port
    outputs = [await _pub_async(port, f"d{i}", pki / "ca.crt" if tls else None) for i in range(N)]
    assert _unacknowledged(outputs) == []
    assert h.svc.calls.active_count == N


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_every_call_request_is_acknowledged_by_the_command(tmp_path, pki, server_loop, transport):
    """The same against `python -m broker --loop <loop>` (the TLS listener as its only one): 20 of 20 PUBACKs."""
    loop = server_loop
    tls = transport == "tls"
    config = {"site": {"households": households(N)}}
    if tls:
        config["mqtt"] = {"tls": tls_section(pki, plain=False)}
    server = ServerProcess(tmp_path, config, loop=loop).start()
    try:
        outputs = [_pub(server.mqtt_port, f"d{i}", pki / "ca.crt" if tls else None) for i in range(N)]
        assert _unacknowledged(outputs) == [], "".join(server.log[-20:])
        status, resp = server.http("GET", "/healthz")
        assert status == 200, resp
    finally:
        assert server.stop() == 0
    assert f"event loop: {loop}" in "".join(server.log)
    assert "Traceback" not in "".join(server.log)
