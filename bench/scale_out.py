"""Scale-out: call setups/s and setup latency with 1, 2 and 3 bridged instances on PostgreSQL, vs the box.

Every configuration runs the same closed loop for DURATION_S: per site, HOUSEHOLDS doors each place a call
(`calls/request/d<i>`), wait for their resident's `incoming` (the setup latency), cancel it, wait for the
resident's `cancelled`, and call again. Configurations:

- `box`: the embedded broker (`python -m broker`, sqlite), one site;
- `bridge sqlite`: one bridged instance (`--external-broker`, Mosquitto) with its sqlite store;
- `bridge pg xN`: N sites, one bridged instance each (`--site-id sK`, a lease each), each site with its own
  PostgreSQL database on one server (a PostgreSQL store holds one site, docs/scale-out.md).

Everything (Mosquitto, PostgreSQL, the instances, this load generator) shares the machine: on 2 cores this shows
correctness and overhead, not linear speed-up. Bounded: 5 configurations x (DURATION_S + start-up), 127.0.0.1.

Run: PYTHONPATH=. .venv/bin/python bench/scale_out.py
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiomqtt
import yaml

from tests.mosquitto_helpers import Mosquitto
from tests.postgres_helpers import Postgres
from tests.support.process import ROOT, ServerProcess, households

HOUSEHOLDS = 20  # doors calling in a closed loop, per site
DURATION_S = 6.0
WARMUP_S = 1.0


class Loop:
    """One site's doors and residents (one MQTT connection each, named as the box's ACL wants); counts setups
    and their latencies."""

    def __init__(self, port: int, prefix: str, households: int) -> None:
        self.port = port
        self.prefix = prefix
        self.households = households
        self.latencies: list[float] = []
        self.measuring = False
        self.errors = 0

    async def run(self, stop_at: float) -> None:
        await asyncio.gather(*(self._household(i, stop_at) for i in range(self.households)))

    def _client(self, name: str) -> aiomqtt.Client:
        site = f"@{self.prefix.split('/')[1]}" if self.prefix else ""
        # paho leaves Nagle on: a request would wait ~40 ms for a delayed ACK (as in broker/bridge.py)
        return aiomqtt.Client("127.0.0.1", self.port, identifier=f"{name}{site}",
                              socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])

    async def _household(self, i: int, stop_at: float) -> None:
        p = self.prefix
        async with self._client(f"device-d{i}") as door, self._client(f"resident-r{i}") as resident:
            await door.subscribe(f"{p}devices/d{i}/#", qos=1)
            await resident.subscribe(f"{p}users/r{i}/#", qos=1)
            heard: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            reader = asyncio.create_task(self._read(resident, heard))
            try:
                while time.perf_counter() < stop_at:
                    t0 = time.perf_counter()
                    await door.publish(f"{p}calls/request/d{i}", json.dumps({"household_number": f"h{i}"}), qos=1)
                    try:
                        ring = await asyncio.wait_for(self._next(heard, "incoming"), 10)
                    except TimeoutError:
                        self.errors += 1
                        continue
                    if self.measuring:
                        self.latencies.append((time.perf_counter() - t0) * 1000)
                    await door.publish(f"{p}devices/d{i}/calls/control", json.dumps(
                        {"call_info": {"call_id": ring["call_id"], "action": "cancelled"}}), qos=1)
                    try:
                        await asyncio.wait_for(self._next(heard, "cancelled"), 10)
                    except TimeoutError:
                        self.errors += 1
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    @staticmethod
    async def _read(client: aiomqtt.Client, heard: asyncio.Queue[dict[str, Any]]) -> None:
        async for msg in client.messages:
            body = json.loads(msg.payload)  # type: ignore[arg-type]
            topic = str(msg.topic)
            if isinstance(body, dict) and topic.endswith("/calls/incoming"):
                heard.put_nowait({"kind": "incoming", **body})
            elif isinstance(body, dict) and topic.endswith("/calls/control"):
                heard.put_nowait({"kind": body.get("call_info", {}).get("action"), **body})

    @staticmethod
    async def _next(heard: asyncio.Queue[dict[str, Any]], kind: str) -> dict[str, Any]:
        while True:
            msg = await heard.get()
            if msg["kind"] == kind:
                return msg


async def measure(port: int, prefixes: list[str], households: int = HOUSEHOLDS) -> dict[str, float]:
    loops = [Loop(port, p, households) for p in prefixes]
    own0 = sum(os.times()[:2])
    stop_at = time.perf_counter() + WARMUP_S + DURATION_S
    runs = asyncio.gather(*(lp.run(stop_at) for lp in loops))
    await asyncio.sleep(WARMUP_S)
    for lp in loops:
        lp.measuring = True
    t0 = time.perf_counter()
    await runs
    elapsed = time.perf_counter() - t0
    lat = sorted(x for lp in loops for x in lp.latencies)
    return {"setups_s": len(lat) / elapsed, "p50": statistics.median(lat), "p99": lat[int(len(lat) * 0.99)],
            "n": len(lat), "errors": sum(lp.errors for lp in loops),
            "loadgen_cpu": (sum(os.times()[:2]) - own0) / (elapsed + WARMUP_S)}


class Bridged:
    """`python -m broker --external-broker …` as a subprocess, until it logs that it serves."""

    def __init__(self, tmp: Path, name: str, broker_port: int, store_url: str | None, site: str | None) -> None:
        config = tmp / f"{name}.yaml"
        raw: dict[str, Any] = {"auth": {"pbkdf2_iterations": 1000}, "site": {"households": households(HOUSEHOLDS)}}
        if store_url:
            raw["store"] = {"url": store_url}
        config.write_text(yaml.safe_dump(raw))
        (tmp / name).mkdir()
        env = {**os.environ, "INTERCOM_TRTC_SECRET_KEY": "bench-secret"}
        env.pop("INTERCOM_ADMIN_TOKEN", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "broker", "--config", str(config), "--host", "127.0.0.1", "--http-port", "0",
             "--data-dir", str(tmp / name), "--external-broker", f"mqtt://127.0.0.1:{broker_port}",
             "--broker-protocol", "5", *(["--site-id", site] if site else [])],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if "intercom-broker (bridge) http://" in line:
                self.ready.set()

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def report(name: str, r: dict[str, float], cpu_ms: float | None = None) -> None:
    cpu = f", instance CPU {cpu_ms:.2f} ms/setup" if cpu_ms is not None else ""
    print(f"{name:<24} {r['setups_s']:7.0f} setups/s   p50 {r['p50']:6.1f} ms   p99 {r['p99']:6.1f} ms   "
          f"n={r['n']:.0f} errors={r['errors']:.0f}{cpu}, load generator {r['loadgen_cpu'] * 100:.0f} % of a core",
          flush=True)


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="scale-out-"))
    (tmp / "box").mkdir()
    box = ServerProcess(tmp / "box", config={"site": {"households": households(HOUSEHOLDS)}}, loop="uvloop")
    box.start()
    try:
        report("box, 1 call at a time", await measure(box.mqtt_port, [""], 1))
        report(f"box, {HOUSEHOLDS} doors", await measure(box.mqtt_port, [""]))
    finally:
        box.stop()
    mosq = Mosquitto(tmp)
    await mosq.start()
    pg = Postgres()
    pg.start()
    try:
        configs: list[tuple[str, list[str | None], bool]] = [
            ("bridge sqlite x1", [None], False), *((f"bridge pg x{n}", [f"s{k}" for k in range(n)], True)
                                                   for n in (1, 2, 3))]
        for run, (name, sites, on_pg) in enumerate(configs):
            instances = [Bridged(tmp, f"r{run}-{site or 'one'}", mosq.port, pg.create_database() if on_pg else None,
                                 site) for site in sites]
            try:
                for inst in instances:
                    if not await asyncio.to_thread(inst.ready.wait, 60):
                        raise RuntimeError(f"{name}: an instance did not start")
                if len(sites) == 1:
                    report(f"{name}, 1 call at a time", await measure(mosq.port, [f"sites/{sites[0]}/" if sites[0]
                                                                                 else ""], 1))
                cpu0 = sum(i.cpu_s() for i in instances)
                r = await measure(mosq.port, [f"sites/{s}/" if s else "" for s in sites])
                cpu = (sum(i.cpu_s() for i in instances) - cpu0) * 1000
                report(f"{name}, {HOUSEHOLDS} doors/site", r, cpu / max(1.0, r["n"] * (1 + WARMUP_S / DURATION_S)))
            finally:
                for inst in instances:
                    inst.stop()
    finally:
        pg.stop()
        mosq.stop()


if __name__ == "__main__":
    asyncio.run(main())
