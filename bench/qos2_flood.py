"""QoS 2 memory at full size: authenticated clients send QoS 2 PUBLISHes and never PUBREL.

    python bench/qos2_flood.py                               # 1 client x 20,000 x 16 KB, refused topic
    python bench/qos2_flood.py --clients 4                   # four such clients at once
    python bench/qos2_flood.py --topic users/2/commands      # an allowed topic: the window closes them
    python bench/qos2_flood.py --root /path/to/other/checkout  # the same attack on another version

Starts `python -m broker` from --root (default: this repository) on 127.0.0.1 with a fresh data dir,
issues resident 2 a token, and runs the attack while probing `GET /healthz` (1 s timeout) every 0.1 s.
Prints RSS (VmRSS of the server) before, at its peak and 2 s after the clients left, PUBLISHes sent and
PUBRECs received per client, and the /healthz latencies. Everything stays on 127.0.0.1 and is bounded
by --messages and --cap-s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import aiohttp
import yaml
from mqttload import encode_packet as _packet  # bench's one MQTT encoder
from mqttload import encode_string as _str

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"intercom-broker serving mqtt://127\.0\.0\.1:(\d+) .*http://127\.0\.0\.1:(\d+)")
ADMIN = "bench-admin-token-0123456789abcdef"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_server(root: Path, workdir: Path) -> tuple[subprocess.Popen[str], int, int]:
    config = workdir / "broker.yaml"
    config.write_text(yaml.safe_dump({"auth": {"pbkdf2_iterations": 1000}, "site": {"households": [
        {"household_number": "101", "residents": [{"resident_id": "2"}, {"resident_id": "3"}],
         "devices": [{"device_id": "1"}]}]}}))
    env = {**os.environ, "INTERCOM_ADMIN_TOKEN": ADMIN, "INTERCOM_TRTC_SECRET_KEY": "bench-secret"}
    proc = subprocess.Popen([sys.executable, "-m", "broker", "--config", str(config), "--host", "127.0.0.1",
                             "--mqtt-port", "0", "--ws-port", "0", "--http-port", "0", "--data-dir",
                             str(workdir / "data")], cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise SystemExit(f"server exited with {proc.wait()}")
        if m := READY.search(line):
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe from filling
            return proc, int(m.group(1)), int(m.group(2))
    proc.kill()
    raise SystemExit("server did not start in 15 s")


def issue_token(http_port: int) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{http_port}/api/admin/residents/2/token", method="POST",
                                 headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return str(json.loads(r.read())["data"]["token"])


async def attacker(port: int, client_id: str, token: str, topic: str, messages: int, payload: bytes,
                   cap_s: float) -> tuple[int, int, bool]:
    """(PUBLISHes written, PUBRECs received, closed by the server)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = _str("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 60) + _str(client_id) + _str("2") + _str(token)
    writer.write(_packet(0x10, body))
    connack = await reader.readexactly(4)
    if connack[3] != 0:
        raise SystemExit(f"CONNACK {connack[3]}")
    recs, sent, closed = 0, 0, False
    progress = asyncio.Event()

    async def count() -> None:
        nonlocal recs, closed
        buf = b""
        while chunk := await reader.read(65536):
            buf += chunk
            recs += buf.count(b"\x50\x02")  # PUBRECs are all the broker sends here
            buf = buf[-1:] if buf.endswith(b"\x50") else b""
            progress.set()
        closed = True
        progress.set()

    counter = asyncio.create_task(count())
    deadline = time.monotonic() + cap_s
    try:
        for i in range(messages):
            writer.write(_packet(0x34, _str(topic) + struct.pack("!H", i % 65535 + 1) + payload))
            sent += 1
            if i % 50 == 49:
                await writer.drain()
            if closed or time.monotonic() > deadline:
                break
        await writer.drain()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                while recs < sent and not closed:
                    progress.clear()
                    await progress.wait()
    except ConnectionError:
        closed = True
    counter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await counter
    writer.close()
    return sent, recs, closed


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--messages", type=int, default=20_000, help="QoS 2 PUBLISHes per client")
    ap.add_argument("--payload", type=int, default=16 * 1024, help="bytes per PUBLISH")
    ap.add_argument("--topic", default="users/3/commands", help="refused for resident 2 by the default ACL")
    ap.add_argument("--cap-s", type=float, default=60.0, help="stop sending after this long")
    ap.add_argument("--root", type=Path, default=ROOT, help="checkout whose `broker` package is run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, mqtt_port, http_port = start_server(args.root, Path(tmp))
        try:
            token = issue_token(http_port)
            await asyncio.sleep(0.5)
            base = peak = rss_mb(proc.pid)
            probes: list[float] = []
            failed = 0
            done = asyncio.Event()

            async def watch(http: aiohttp.ClientSession) -> None:
                nonlocal peak, failed
                while not done.is_set():
                    peak = max(peak, rss_mb(proc.pid))
                    t0 = time.perf_counter()
                    try:
                        async with http.get(f"http://127.0.0.1:{http_port}/healthz",
                                            timeout=aiohttp.ClientTimeout(total=1.0)) as r:
                            await r.read()
                        probes.append(time.perf_counter() - t0)
                    except (TimeoutError, aiohttp.ClientError):
                        failed += 1
                    await asyncio.sleep(0.1)

            payload = b"\xa5" * args.payload
            async with aiohttp.ClientSession() as http:
                watcher = asyncio.create_task(watch(http))
                t0 = time.perf_counter()
                results = await asyncio.gather(*(
                    attacker(mqtt_port, f"resident-2/flood{i}", token, args.topic, args.messages, payload, args.cap_s)
                    for i in range(args.clients)))
                elapsed = time.perf_counter() - t0
                await asyncio.sleep(2.0)
                after = rss_mb(proc.pid)
                done.set()
                await watcher
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    sent = sum(r[0] for r in results)
    print(f"attack: {args.clients} client(s) x {args.messages} x {args.payload} B QoS 2 on {args.topic!r}, "
          f"no PUBREL, {elapsed:.1f} s ({sent / elapsed:,.0f} PUBLISH/s written)")
    for i, (s, r, c) in enumerate(results):
        print(f"  client {i}: sent {s}, PUBREC {r}, {'closed by server' if c else 'still open at the end'}")
    print(f"RSS MB: before {base:.1f}, peak {peak:.1f} (+{peak - base:.1f}), 2 s after the clients left "
          f"{after:.1f} (+{after - base:.1f})")
    if probes:
        probes.sort()
        print(f"/healthz: {len(probes)} ok, {failed} failed (1 s timeout), p50 {probes[len(probes) // 2] * 1000:.1f} "
              f"ms, max {probes[-1] * 1000:.1f} ms")
    else:
        print(f"/healthz: 0 ok, {failed} failed (1 s timeout)")


if __name__ == "__main__":
    asyncio.run(main())
