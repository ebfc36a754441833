"""Call-level scenarios, and the peer architecture as a target.

* ``call_rest`` / ``call_mqtt``: call setup latency. A call is started by ``POST /api/mqtt/call`` (or by
  the device publishing ``calls/request/{device}``); the sample is the time until *every* resident of
  the household holds its ``users/{id}/calls/incoming``. Households take turns, one call at a time,
  with ``idle`` extra clients connected (each subscribed to its own ``users/idle{i}/#``).
* ``call_cycle``: full lifecycles per second. Every household loops request -> incoming -> answered
  -> hangup (all over MQTT), all households at once, for ``seconds``.
* target ``peer``: Mosquitto + our same call service attached to it as an MQTT client
  (``--external-broker``), i.e. what a user would build instead of the embedded broker.

The site (households h0..h{SITE_HOUSEHOLDS-1}, residents r{h}a/r{h}b, door device d{h}) is declared in a
generated `--config` YAML `site:` for both our targets, so setting up costs no REST calls (the admin
REST API is rate limited per principal). This module therefore registers its own ``ours``: bench's
``OursTarget`` plus that config, which keeps every other setting at its default. Plain brokers (amqtt,
mosquitto) have no call service: their call rows say n/a.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from mqttload import MqttClient
from scenarios import Ctx, Scenario, connect_many
from stats import Result, latency_summary
from targets import BENCH_DIR, HOST, OursTarget, Target, _http_ok, free_port, port_open

__all__ = ["CALL_SCENARIOS", "CALL_TARGETS", "PeerTarget"]

perf = time.perf_counter
STALL_S = 5.0


SITE_HOUSEHOLDS = 500


def site_config(workdir: Path) -> Path:
    """A broker.yaml with only a `site:` section: SITE_HOUSEHOLDS households of two residents and a door."""
    path = workdir / "bench-site.yaml"
    if not path.exists():
        lines = ["site:", "  households:"]
        for h in range(SITE_HOUSEHOLDS):
            lines += [f'    - household_number: "h{h}"',
                      f'      residents: [{{resident_id: "r{h}a"}}, {{resident_id: "r{h}b"}}]',
                      f'      devices: [{{device_id: "d{h}"}}]']
        path.write_text("\n".join(lines) + "\n")
    return path


class SiteOursTarget(OursTarget):
    """bench's OursTarget (embedded broker, all plugins), started with the generated site config."""

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        argv, env, cwd = super().command()
        return [*argv, "--config", str(site_config(self.workdir))], env, cwd


class PeerTarget(Target):
    """Mosquitto + ``python -m broker --external-broker`` (bridge mode), both under bench/run_peer.py."""

    name = "peer"
    admin_token = OursTarget.admin_token

    def skip_reason(self) -> str | None:
        if shutil.which("mosquitto") is None:
            return "mosquitto not installed (apt-get install -y mosquitto)"
        return None

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        self.http_port = free_port()
        data_dir = self.workdir / f"peer-data-{self.runs}"
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, str(BENCH_DIR / "run_peer.py"), "--mqtt-port", str(self.mqtt_port),
                "--http-port", str(self.http_port), "--data-dir", str(data_dir),
                "--config", str(site_config(self.workdir))]
        return argv, {"INTERCOM_ADMIN_TOKEN": self.admin_token}, BENCH_DIR.parent

    async def ready(self) -> bool:
        if not await port_open(self.mqtt_port):
            return False
        return await asyncio.to_thread(_http_ok, f"http://{HOST}:{self.http_port}/healthz")


CALL_TARGETS: dict[str, type[Target]] = {"ours": SiteOursTarget, "peer": PeerTarget}


# ----------------------------------------------------------------------------- the site
class Site:
    """Households h0..hN-1, each with residents r{h}a and r{h}b and door device d{h}, all connected."""

    def __init__(self, ctx: Ctx, households: int) -> None:
        self.ctx = ctx
        self.n = households
        self.clients: dict[str, MqttClient] = {}
        self.arrivals: dict[str, asyncio.Future[tuple[float, dict[str, Any]]]] = {}
        self.base = f"http://{HOST}:{ctx.target.http_port}"

    @staticmethod
    def residents(h: int) -> tuple[str, str]:
        return f"r{h}a", f"r{h}b"

    async def connect(self) -> None:
        async def one(kind: str, ident: str, prefix: str) -> None:
            client = await self.ctx.client(f"{kind}-{ident}")
            client.on_message = self._on_message
            await client.subscribe([(f"{prefix}/{ident}/#", 1)])
            self.clients[ident] = client

        jobs = []
        for h in range(self.n):
            jobs += [one("resident", r, "users") for r in self.residents(h)]
            jobs.append(one("device", f"d{h}", "devices"))
        sem = asyncio.Semaphore(50)

        async def limited(job: Any) -> None:
            async with sem:
                await job

        await asyncio.gather(*(limited(j) for j in jobs))

    def expect(self, ident: str, what: str) -> asyncio.Future[tuple[float, dict[str, Any]]]:
        """A future for the next `what` ('incoming' or a control action) that `ident` receives."""
        fut: asyncio.Future[tuple[float, dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self.arrivals[f"{ident} {what}"] = fut
        return fut

    def _on_message(self, client: MqttClient, topic: bytes, payload: bytes) -> None:
        now = perf()
        ident = client.client_id.split("-", 1)[1]
        if topic.endswith(b"/calls/incoming"):
            what = "incoming"
        elif topic.endswith(b"/calls/control"):
            try:
                body = json.loads(payload)
            except ValueError:
                return
            what = str((body.get("call_info") or {}).get("action") or ("error" if "error" in body else ""))
        else:
            return
        fut = self.arrivals.pop(f"{ident} {what}", None)
        if fut is not None and not fut.done():
            fut.set_result((now, json.loads(payload) if what == "incoming" else body))

    async def close(self) -> None:
        for c in self.clients.values():
            await c.disconnect()


def _no_call_service(ctx: Ctx) -> Result | None:
    if ctx.target.http_port is None:
        res = Result()
        res.incomplete(f"n/a: {ctx.target.name} is a plain broker without the call service")
        return res
    return None


async def _prepare(ctx: Ctx, res: Result, http: aiohttp.ClientSession) -> tuple[Site, list[MqttClient]]:
    households = ctx.params["households"]
    if households > SITE_HOUSEHOLDS:
        raise ValueError(f"households={households} > SITE_HOUSEHOLDS={SITE_HOUSEHOLDS}")
    site = Site(ctx, households)
    await site.connect()
    idle: list[MqttClient] = []
    n_idle = ctx.params.get("idle", 0)
    if n_idle:
        idle, errors = await connect_many(ctx, n_idle, "bench-idle", lambda i: [(f"users/idle{i}/#", 0)])
        if errors:
            res.incomplete(f"{len(errors)} idle connects failed: {errors[0]}")
    res.extra["idle_connected"] = len(idle)
    return site, idle


# ----------------------------------------------------------------------------- call setup
async def call_setup(ctx: Ctx) -> Result:
    """Sequential calls, households in turn; p50/p99 time until every resident holds its invite."""
    if (na := _no_call_service(ctx)) is not None:
        return na
    res = Result()
    via: str = ctx.params["via"]
    n_calls: int = ctx.params["calls"]
    samples: list[float] = []
    async with aiohttp.ClientSession() as http:
        site, idle = await _prepare(ctx, res, http)
        try:
            ctx.meter.begin()
            for i in range(n_calls + 20):  # 20 warm-up calls
                if perf() >= ctx.deadline:
                    res.incomplete(f"time cap: {len(samples)}/{n_calls} calls")
                    break
                h = i % site.n
                device = site.clients[f"d{h}"]
                waits = [site.expect(r, "incoming") for r in site.residents(h)]
                t0 = perf()
                if via == "rest":
                    # no token: on loopback the REST API is open, and the admin token's per-principal
                    # rate limit (limits.http_per_principal) would throttle a benchmark
                    async with http.post(site.base + "/api/mqtt/call", json={"device_id": f"d{h}"}) as r:
                        if r.status != 200:
                            res.incomplete(f"call {i}: HTTP {r.status} {await r.text()}")
                            break
                else:
                    device.publish(f"calls/request/d{h}", json.dumps(
                        {"household_number": f"h{h}", "request_id": str(i)}).encode(), 1)
                try:
                    arrivals = await asyncio.wait_for(asyncio.gather(*waits), STALL_S)
                except TimeoutError:
                    res.incomplete(f"call {i}: invites not delivered within {STALL_S:.0f} s")
                    break
                if i >= 20:
                    samples.append(max(t for t, _ in arrivals) - t0)
                call_id = arrivals[0][1]["call_id"]
                device.publish(f"devices/d{h}/calls/control", json.dumps(
                    {"call_info": {"call_id": call_id, "action": "cancelled"}}).encode(), 1)
            ctx.meter.end()
        finally:
            await site.close()
            for c in idle:
                c.abort()
    s = latency_summary(samples)
    res.extra["latency"] = s
    res.add("setup p50", s["p50_ms"], "ms", False)
    res.add("setup p99", s["p99_ms"], "ms", False)
    cpu = ctx.meter.result
    if samples and cpu:
        res.add("broker CPU/call", cpu["broker_cpu_pct"] / 100 * cpu["wall_s"] / (len(samples) + 20) * 1e3, "ms",
                False)
    return res


# ----------------------------------------------------------------------------- lifecycles
async def _household_loop(site: Site, h: int, until: float, done: list[int], errors: list[str]) -> None:
    a, _b = site.residents(h)
    device = site.clients[f"d{h}"]
    resident = site.clients[a]
    n = 0
    while perf() < until and len(errors) < 5:
        n += 1
        incoming = site.expect(a, "incoming")
        answered = site.expect(f"d{h}", "answered")
        device.publish(f"calls/request/d{h}", json.dumps(
            {"household_number": f"h{h}", "request_id": f"{h}-{n}"}).encode(), 1)
        try:
            _, invite = await asyncio.wait_for(incoming, STALL_S)
            call_id = invite["call_id"]
            hangup = site.expect(a, "hangup")
            resident.publish(f"users/{a}/calls/control", json.dumps(
                {"call_info": {"call_id": call_id, "action": "answered"}}).encode(), 1)
            await asyncio.wait_for(answered, STALL_S)
            device.publish(f"devices/d{h}/calls/control", json.dumps(
                {"call_info": {"call_id": call_id, "action": "hangup"}}).encode(), 1)
            await asyncio.wait_for(hangup, STALL_S)
        except TimeoutError:
            errors.append(f"household h{h}: lifecycle {n} stalled")
            return
        done[0] += 1


async def call_cycle(ctx: Ctx) -> Result:
    """All households loop request -> answered -> hangup over MQTT; completed lifecycles per second."""
    if (na := _no_call_service(ctx)) is not None:
        return na
    res = Result()
    seconds: float = ctx.params["seconds"]
    async with aiohttp.ClientSession() as http:
        site, idle = await _prepare(ctx, res, http)
        try:
            done, errors = [0], []
            ctx.meter.begin()
            t0 = perf()
            until = min(t0 + seconds, ctx.deadline - STALL_S)
            await asyncio.gather(*(_household_loop(site, h, until, done, errors) for h in range(site.n)))
            wall = perf() - t0
            ctx.meter.end()
        finally:
            await site.close()
            for c in idle:
                c.abort()
    if errors:
        res.incomplete(f"{len(errors)} household(s) stalled: {errors[0]}")
    res.extra["lifecycles"] = done[0]
    res.add("calls/s", done[0] / wall, "calls/s", True)
    cpu = ctx.meter.result
    if done[0] and cpu:
        res.add("broker CPU/call", cpu["broker_cpu_pct"] / 100 * cpu["wall_s"] / done[0] * 1e3, "ms", False)
    return res


CALL_SCENARIOS: dict[str, Scenario] = {
    "call_rest": Scenario(
        call_setup,
        lambda p: f"call setup REST idle={p['idle']}",
        short=[{"via": "rest", "calls": 200, "households": 100, "idle": i} for i in (50, 1000)],
        full=[{"via": "rest", "calls": 500, "households": 100, "idle": i} for i in (50, 1000, 5000)],
        cap_short_s=60,
        cap_full_s=180,
        doc="POST /api/mqtt/call -> both residents hold calls/incoming (QoS 1), households in turn",
    ),
    "call_mqtt": Scenario(
        call_setup,
        lambda p: f"call setup MQTT idle={p['idle']}",
        short=[{"via": "mqtt", "calls": 200, "households": 100, "idle": i} for i in (50, 1000)],
        full=[{"via": "mqtt", "calls": 500, "households": 100, "idle": i} for i in (50, 1000, 5000)],
        cap_short_s=60,
        cap_full_s=180,
        doc="device publishes calls/request -> both residents hold calls/incoming (QoS 1)",
    ),
    "call_cycle": Scenario(
        call_cycle,
        lambda p: f"call lifecycles {p['households']} hh",
        short=[{"households": 100, "seconds": 5, "idle": 50}],
        full=[{"households": 300, "seconds": 15, "idle": 1000}],
        cap_short_s=60,
        cap_full_s=180,
        doc="request -> incoming -> answered -> hangup per household, all households at once",
    ),
}
