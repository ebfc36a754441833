"""Scale-out: call setups/s and setup latency with 1, 2 and 3 bridged instances on PostgreSQL, vs the box.

Every configuration runs the same closed loop for DURATION_S: per site, HOUSEHOLDS doors each place a call
(`calls/request/d<i>`), wait for their resident's `incoming` (the setup latency), cancel it, wait for the
resident's `cancelled`, and call again. Configurations, after the `box` baseline (the embedded broker,
`python -m broker`, sqlite, one site):

- `--broker mosquitto` (the default): `bridge sqlite`, one bridged instance (`--external-broker`, Mosquitto, no
  authentication) with its sqlite store; `bridge pg xN`: N sites, one bridged instance each (`--site-id sK`, a
  lease each), each site with its own PostgreSQL database on one server (a PostgreSQL store holds one site,
  docs/scale-out.md).
- `--broker rabbitmq-cluster`: the 2-node RabbitMQ cluster of the scale-out proof (tests/rabbitmq_helpers.py),
  every client logged in with the site's generated broker ACL (`admin broker-acl --rabbitmq`: the doors and
  residents as their own users, the instances as `service-call@site`, MQTT 3.1.1, both nodes' addresses), each
  site's doors and residents split over both nodes (even households' doors on node 1 and their residents on node 2,
  odd ones the other way round: every call crosses the cluster). `bridge pg xN` as above, then one site served by
  2 and 3 instances (the holder and 1 or 2 standbys: only the holder serves, so this is the standbys' cost).

Everything (the broker(s), PostgreSQL, the instances, this load generator) shares the machine: on 2 cores this
shows correctness and overhead, not linear speed-up. Bounded: each configuration DURATION_S (2 s with --short)
plus start-up, 127.0.0.1 only; exit status 1 if a configuration completed no setup or had a closed-loop timeout.

Run: PYTHONPATH=. .venv/bin/python bench/scale_out.py [--broker rabbitmq-cluster] [--short]
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import yaml

from tests.mosquitto_helpers import Mosquitto
from tests.postgres_helpers import Postgres
from tests.rabbitmq_helpers import RabbitCluster, import_site
from tests.scale_helpers import Instance, wait_serving, wait_standby
from tests.support.process import ROOT, ServerProcess, households, stop_process

HOUSEHOLDS = 20  # doors calling in a closed loop, per site
LEASE_TTL_S = 6.0  # the product's default: a standby tries the lease every ttl/3


@dataclass(frozen=True)
class Pace:
    duration_s: float = 6.0
    warmup_s: float = 1.0


SHORT = Pace(2.0, 0.5)
# (role, household index) -> (broker port, user, password): where and as whom a party logs in
Login = Callable[[str, int], tuple[int, str | None, str | None]]


def anonymous(port: int) -> Login:
    return lambda role, i: (port, None, None)


class Loop:
    """One site's doors and residents (one MQTT connection each, named as the box's ACL wants); counts setups
    and their latencies."""

    def __init__(self, login: Login, prefix: str, households: int) -> None:
        self.login = login
        self.prefix = prefix
        self.households = households
        self.latencies: list[float] = []
        self.measuring = False
        self.errors = 0

    async def run(self, stop_at: float) -> None:
        await asyncio.gather(*(self._household(i, stop_at) for i in range(self.households)))

    def _client(self, role: str, i: int) -> aiomqtt.Client:
        site = f"@{self.prefix.split('/')[1]}" if self.prefix else ""
        port, user, password = self.login(role, i)
        # the box's ACL wants `{role}-{id}` as the client id; on an external broker it is the user name too
        # paho leaves Nagle on: a request would wait ~40 ms for a delayed ACK (as in broker/bridge.py)
        return aiomqtt.Client("127.0.0.1", port, identifier=f"{role}-{role[0]}{i}{site}", username=user,
                              password=password, timeout=10,
                              socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])

    async def _household(self, i: int, stop_at: float) -> None:
        p = self.prefix
        async with self._client("device", i) as door, self._client("resident", i) as resident:
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


async def measure(sites: list[tuple[Login, str]], pace: Pace, households: int = HOUSEHOLDS) -> dict[str, float]:
    """The closed loop for pace.duration_s after pace.warmup_s, per site: (how its parties log in, its prefix)."""
    loops = [Loop(login, prefix, households) for login, prefix in sites]
    own0 = sum(os.times()[:2])
    stop_at = time.perf_counter() + pace.warmup_s + pace.duration_s
    runs = asyncio.gather(*(lp.run(stop_at) for lp in loops))
    await asyncio.sleep(pace.warmup_s)
    for lp in loops:
        lp.measuring = True
    t0 = time.perf_counter()
    await runs
    elapsed = time.perf_counter() - t0
    lat = sorted(x for lp in loops for x in lp.latencies)
    if not lat:
        raise RuntimeError("no call set up in the closed loop")
    return {"setups_s": len(lat) / elapsed, "p50": statistics.median(lat), "p99": lat[int(len(lat) * 0.99)],
            "n": len(lat), "errors": sum(lp.errors for lp in loops),
            "loadgen_cpu": (sum(os.times()[:2]) - own0) / (elapsed + pace.warmup_s)}


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_cpu_s(pgids: set[int]) -> float:
    """CPU seconds so far of every process in these process groups (a RabbitMQ node: its script, beam, helpers)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in pgids:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


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
        return cpu_s(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc)


class Results:
    """The printed lines' numbers; `failed` once a configuration had a closed-loop timeout."""

    def __init__(self) -> None:
        self.failed = False

    def report(self, name: str, r: dict[str, float], cpu_ms: float | None = None,
               standby_ms: float | None = None, broker_ms: float | None = None) -> None:
        self.failed |= r["errors"] > 0
        cpu = f", instance CPU {cpu_ms:.2f} ms/setup" if cpu_ms is not None else ""
        cpu += f" (standbys {standby_ms:.0f} ms CPU in all)" if standby_ms is not None else ""
        cpu += f", cluster CPU {broker_ms:.2f} ms/setup" if broker_ms is not None else ""
        print(f"{name:<30} {r['setups_s']:7.0f} setups/s   p50 {r['p50']:6.1f} ms   p99 {r['p99']:6.1f} ms   "
              f"n={r['n']:.0f} errors={r['errors']:.0f}{cpu}, load generator {r['loadgen_cpu'] * 100:.0f} % of a "
              "core", flush=True)


def per_setup(cpu_s_used: float, r: dict[str, float], pace: Pace) -> float:
    """Instance CPU ms per setup (+ cancel): the setups of the warm-up are counted at the measured rate."""
    return cpu_s_used * 1000 / max(1.0, r["n"] * (1 + pace.warmup_s / pace.duration_s))


async def run_box(tmp: Path, pace: Pace, out: Results) -> None:
    (tmp / "box").mkdir()
    box = ServerProcess(tmp / "box", config={"site": {"households": households(HOUSEHOLDS)}}, loop="uvloop")
    box.start()
    try:
        out.report("box, 1 call at a time", await measure([(anonymous(box.mqtt_port), "")], pace, 1))
        out.report(f"box, {HOUSEHOLDS} doors", await measure([(anonymous(box.mqtt_port), "")], pace))
    finally:
        box.stop()


async def run_mosquitto(tmp: Path, pace: Pace, out: Results) -> None:
    mosq = Mosquitto(tmp)
    await mosq.start()
    pg = Postgres()
    pg.start()
    login = anonymous(mosq.port)
    try:
        configs: list[tuple[str, list[str | None], bool]] = [("bridge sqlite x1", [None], False)]
        configs += [(f"bridge pg x{n}", [f"s{k}" for k in range(n)], True) for n in (1, 2, 3)]
        for run, (name, sites, on_pg) in enumerate(configs):
            instances = [Bridged(tmp, f"r{run}-{site or 'one'}", mosq.port, pg.create_database() if on_pg else None,
                                 site) for site in sites]
            try:
                for inst in instances:
                    if not await asyncio.to_thread(inst.ready.wait, 60):
                        raise RuntimeError(f"{name}: an instance did not start")
                if len(sites) == 1:
                    out.report(f"{name}, 1 call at a time",
                               await measure([(login, f"sites/{sites[0]}/" if sites[0] else "")], pace, 1))
                cpu0 = sum(i.cpu_s() for i in instances)
                r = await measure([(login, f"sites/{s}/" if s else "") for s in sites], pace)
                out.report(f"{name}, {HOUSEHOLDS} doors/site", r,
                           per_setup(sum(i.cpu_s() for i in instances) - cpu0, r, pace))
            finally:
                for inst in instances:
                    inst.stop()
    finally:
        pg.stop()
        mosq.stop()


def cluster_login(ports: list[int], site: str, creds: dict[str, str]) -> Login:
    """Household i's door on node i % 2 and its resident on the other node (one port: all on it), each as its
    generated user."""
    def login(role: str, i: int) -> tuple[int, str | None, str | None]:
        user = f"{role}-{role[0]}{i}@{site}"
        return ports[(i + (role == "resident")) % len(ports)], user, creds[user]
    return login


def site_config(tmp: Path, name: str, store_url: str) -> Path:
    config = tmp / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"auth": {"pbkdf2_iterations": 1000}, "store": {"url": store_url},
                                      "site": {"households": households(HOUSEHOLDS)}}))
    return config


async def run_cluster(tmp: Path, pace: Pace, out: Results) -> None:
    cluster = RabbitCluster(tmp / "rmq")
    started = time.monotonic()
    await cluster.start()
    ports = [n.mqtt_port for n in cluster.nodes]
    nodes = {n.proc.pid for n in cluster.nodes if n.proc is not None}  # each node's process group (its session)
    print(f"(2-node RabbitMQ cluster up in {time.monotonic() - started:.0f} s: MQTT on {ports[0]} and {ports[1]})",
          flush=True)
    pg = Postgres()
    pg.start()
    parties = [(f"r{i}", f"h{i}") for i in range(HOUSEHOLDS)], [(f"d{i}", f"h{i}") for i in range(HOUSEHOLDS)]
    try:
        # (name, sites, instances per site): N sites x 1 instance, then 1 site x 2 and 3 instances
        configs = [*((f"bridge pg x{n}", n, 1) for n in (1, 2, 3)),
                   *((f"1 site, {k} instances", 1, k) for k in (2, 3))]
        for run, (name, n_sites, per_site) in enumerate(configs):
            sites = [f"c{run}s{k}" for k in range(n_sites)]  # fresh users, database and session queue per run
            creds = await asyncio.gather(*(import_site(cluster.nodes[0], tmp / f"acl-{s}", s, *parties)
                                           for s in sites))
            by_site: dict[str, list[Instance]] = {}
            for site, site_creds in zip(sites, creds, strict=True):
                config = site_config(tmp, site, pg.create_database())
                url = f"mqtt://service-call%40{site}@127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}"
                by_site[site] = []
                for k in range(per_site):
                    (tmp / f"{site}-{k}").mkdir()
                    by_site[site].append(Instance(f"{site}-{k}", config, tmp / f"{site}-{k}", url, site, LEASE_TTL_S,
                                                  ("--broker-protocol", "3.1.1"), site_creds[f"service-call@{site}"]))
            instances = [i for insts in by_site.values() for i in insts]
            try:
                holders = [await wait_serving(insts, 60) for insts in by_site.values()]  # one holder per site
                await wait_standby([i for i in instances if i not in holders], 60)
                deadline = time.monotonic() + 30
                while not all("bridged to mqtt://" in h.text() for h in holders):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name}: an instance did not link to the cluster")
                    await asyncio.sleep(0.05)
                loops = [(cluster_login(ports, s, c), f"sites/{s}/") for s, c in zip(sites, creds, strict=True)]
                if n_sites == 1 and per_site == 1:  # the call crossing the cluster, then all on the service's node
                    out.report(f"{name}, 1 call at a time", await measure(loops, pace, 1))
                    one_node = cluster_login(ports[:1], sites[0], creds[0])
                    out.report("  the same, all on node 1", await measure([(one_node, f"sites/{sites[0]}/")], pace, 1))
                cpu0 = {i.name: cpu_s(i.proc.pid) for i in instances}
                rabbit0 = group_cpu_s(nodes)
                r = await measure(loops, pace)
                rabbit = group_cpu_s(nodes) - rabbit0
                used = {i.name: cpu_s(i.proc.pid) - cpu0[i.name] for i in instances}
                standby = sum(used[i.name] for i in instances if i not in holders) * 1000 if per_site > 1 else None
                out.report(f"{name}, {HOUSEHOLDS} doors/site", r, per_setup(sum(used.values()), r, pace), standby,
                           per_setup(rabbit, r, pace))
                for inst in instances:  # nobody lost its lease or stopped during the run
                    if inst.proc.poll() is not None:
                        raise RuntimeError(f"{inst.name} exited:\n{inst.text()}")
            finally:
                for inst in instances:
                    inst.stop()
    finally:
        pg.stop()
        await asyncio.to_thread(cluster.stop)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", choices=("mosquitto", "rabbitmq-cluster"), default="mosquitto")
    ap.add_argument("--short", action="store_true", help=f"{SHORT.duration_s:g} s per configuration (a smoke run)")
    args = ap.parse_args()
    pace = SHORT if args.short else Pace()
    tmp = Path(tempfile.mkdtemp(prefix="scale-out-"))
    out = Results()
    await run_box(tmp, pace, out)
    await (run_cluster if args.broker == "rabbitmq-cluster" else run_mosquitto)(tmp, pace, out)
    return 1 if out.failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
