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
generated `--config` YAML `site:` (`site_config`) for both our targets, so setting up costs no REST calls (the
admin REST API is rate limited per principal). run.py starts every ``ours`` target (``ours@REV``, ``ours+mypyc``
too) with that config, which keeps every other setting at its default, so they all serve the same site with the
same settings. Plain brokers (amqtt, mosquitto) have no call service: their call rows say n/a.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import aiohttp
from mqttload import MqttClient
from scenarios import Ctx, Scenario, connect_many
from stats import Result, latency_summary
from targets import BENCH_DIR, HOST, OursTarget, Target, _http_ok, free_port, port_open

__all__ = ["CALL_SCENARIOS", "CALL_TARGETS", "PeerTarget", "site_config"]

perf = time.perf_counter
STALL_S = 5.0


# call_rate with cancel=0 needs a household per call: BENCH_SITE_HOUSEHOLDS=4000 (start-up takes longer)
SITE_HOUSEHOLDS = int(os.environ.get("BENCH_SITE_HOUSEHOLDS", "500"))


def site_config(workdir: Path) -> Path:
    """A broker.yaml with only a `site:` section: SITE_HOUSEHOLDS households of two residents and a door."""
    path = workdir / f"bench-site-{SITE_HOUSEHOLDS}.yaml"
    if not path.exists():
        lines = ["site:", "  households:"]
        for h in range(SITE_HOUSEHOLDS):
            lines += [f'    - household_number: "h{h}"',
                      f'      residents: [{{resident_id: "r{h}a"}}, {{resident_id: "r{h}b"}}]',
                      f'      devices: [{{device_id: "d{h}"}}]']
        path.write_text("\n".join(lines) + "\n")
    return path


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


CALL_TARGETS: dict[str, type[Target]] = {"peer": PeerTarget}


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


# ----------------------------------------------------------------------------- sustained call rate
class _RateHousehold:
    __slots__ = ("call_id", "device", "got", "h", "t0")

    def __init__(self, h: int, device: MqttClient) -> None:
        self.h = h
        self.device = device
        self.t0 = 0.0
        self.got = 0
        self.call_id: str | None = None


async def call_rate(ctx: Ctx) -> Result:
    """Sustained call setups/s: devices publish calls/request, a setup counts when every resident has its invite.

    ``rate`` > 0 is open loop: requests go out on a fixed schedule, round-robin over the households that
    are free (previous call set up and cancelled); a request due while no household is free is *missed*.
    ``rate`` = 0 is closed loop: ``window`` households (default all) each call again as soon as their
    previous setup completed, i.e. the broker's capacity. Each set-up call is cancelled by its device
    (so the household can call again), so the broker CPU per setup includes that cancel transition.
    ``cancel`` = 0 (open loop only) leaves every call ringing and uses each household once: the CPU of
    the setup alone; it needs households >= rate x (warmup_s + seconds).
    Only setups completing inside the measured ``seconds`` (after ``warmup_s``) count.
    """
    if (na := _no_call_service(ctx)) is not None:
        return na
    res = Result()
    rate: float = float(ctx.params.get("rate", 0))
    seconds: float = ctx.params["seconds"]
    warmup_s: float = ctx.params.get("warmup_s", 1.0)
    window: int = int(ctx.params.get("window", 0)) or ctx.params["households"]
    via: str = ctx.params.get("via", "mqtt")
    cancel = bool(ctx.params.get("cancel", 1))
    if not cancel and rate <= 0:
        raise ValueError("call_rate: cancel=0 needs an open-loop rate > 0")
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        site, idle = await _prepare(ctx, res, http)
        households = [_RateHousehold(h, site.clients[f"d{h}"]) for h in range(site.n)]
        free: deque[_RateHousehold] = deque(households)
        stats = {"issued": 0, "missed": 0, "errors": 0, "done": 0, "in_window": 0}
        samples: list[float] = []
        in_flight = [0]
        window_open = [0.0, float("inf")]  # measured phase [begin, end) in perf() time
        last_error: list[str] = []
        rest_tasks: set[asyncio.Task[None]] = set()
        stop = [False]

        async def rest_request(hh: _RateHousehold) -> None:
            async with http.post(site.base + "/api/mqtt/call", json={"device_id": f"d{hh.h}"}) as r:
                if r.status != 200:
                    stats["errors"] += 1
                    last_error[:] = [f"HTTP {r.status} {await r.text()}"]

        def issue() -> None:
            hh = free.popleft()
            hh.t0 = perf()
            hh.got = 0
            hh.call_id = None
            in_flight[0] += 1
            stats["issued"] += 1
            if via == "rest":
                t = loop.create_task(rest_request(hh))
                rest_tasks.add(t)
                t.add_done_callback(rest_tasks.discard)
            else:
                hh.device.publish(f"calls/request/d{hh.h}", b'{"household_number":"h%d"}' % hh.h, 1)

        def on_resident(client: MqttClient, topic: bytes, payload: bytes) -> None:
            if not topic.endswith(b"/calls/incoming"):
                return  # the `cancelled` that follows our own cancel
            now = perf()
            hh = households[int(client.client_id[10:-1])]  # "resident-r{h}a"
            if hh.call_id is None:
                hh.call_id = json.loads(payload)["call_id"]
            hh.got += 1
            if hh.got < 2:
                return
            in_flight[0] -= 1
            stats["done"] += 1
            if window_open[0] <= now < window_open[1]:
                stats["in_window"] += 1
                if hh.t0 >= window_open[0]:
                    samples.append(now - hh.t0)
            if not cancel:
                return  # left ringing: this household is used once
            hh.device.publish(f"devices/d{hh.h}/calls/control", b'{"call_info":{"call_id":"%s","action":"cancelled"}}'
                              % hh.call_id.encode(), 1)
            free.append(hh)
            if rate == 0 and not stop[0]:
                while free and in_flight[0] < window:
                    issue()  # written after the cancel on the same connection, so never busy

        def on_device(_client: MqttClient, _topic: bytes, payload: bytes) -> None:
            if b'"error"' in payload:
                stats["errors"] += 1
                last_error[:] = [payload[:200].decode(errors="replace")]

        for hh in households:
            hh.device.on_message = on_device
            for r in site.residents(hh.h):
                site.clients[r].on_message = on_resident
        try:
            t_start = perf()
            window_open[0] = t_start + warmup_s
            t_end = min(window_open[0] + seconds, ctx.deadline - STALL_S)
            window_open[1] = t_end
            began = False
            last_done, last_progress = 0, t_start
            if rate == 0:
                while free and in_flight[0] < window:
                    issue()
            while (now := perf()) < t_end:
                if not began and now >= window_open[0]:
                    ctx.meter.begin()
                    began = True
                if rate > 0:
                    due = int((now - t_start) * rate) - stats["issued"] - stats["missed"]
                    while due > 0 and free:
                        issue()
                        due -= 1
                    stats["missed"] += max(0, due)
                if stats["done"] != last_done:
                    last_done, last_progress = stats["done"], now
                elif in_flight[0] and now - last_progress > STALL_S:
                    res.incomplete(f"stalled: no setup completed for {STALL_S:.0f} s ({in_flight[0]} in flight)")
                    break
                if stats["errors"] > 20:
                    res.incomplete(f"{stats['errors']} errors, last: {last_error[0]}")
                    break
                await asyncio.sleep(0.001 if rate > 0 else 0.05)
            window_open[1] = min(window_open[1], perf())
            if began:
                ctx.meter.end()
            stop[0] = True
            for _ in range(int(STALL_S / 0.01)):  # let in-flight calls finish (not counted)
                if not in_flight[0]:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # let the last cancels reach the broker before disconnecting
        finally:
            for t in list(rest_tasks):
                t.cancel()
            await site.close()
            for c in idle:
                c.abort()
    measured = max(window_open[1] - window_open[0], 1e-9)
    setups = stats["in_window"]
    res.add("setups/s", setups / measured, "calls/s", True)
    s = latency_summary(samples)
    res.extra.update(latency=s, **stats, measured_s=measured, offered_rate=rate, window=window, cancel=cancel)
    res.add("setup p50", s["p50_ms"], "ms", False)
    res.add("setup p99", s["p99_ms"], "ms", False)
    cpu = ctx.meter.result
    if setups and cpu:
        res.add("broker CPU/setup", cpu["broker_cpu_pct"] / 100 * cpu["wall_s"] / setups * 1e3, "ms", False)
    if rate > 0:
        res.add("missed", stats["missed"], "calls", False)
        if stats["missed"] > 0.01 * (stats["issued"] + stats["missed"]):
            res.incomplete(f"offered {rate:.0f}/s not sustained: {stats['missed']} requests found no free household")
    if stats["errors"] and res.complete:
        res.incomplete(f"{stats['errors']} error replies, last: {last_error[0]}")
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
    "call_rate": Scenario(
        call_rate,
        lambda p: f"call rate {p['rate'] or 'max'}/s {p['households']} hh{'' if p.get('cancel', 1) else ' no cancel'}",
        short=[{"households": 300, "rate": r, "seconds": 5} for r in (0, 1000)],
        full=[{"households": 300, "rate": r, "seconds": 15} for r in (0, 1000)],
        cap_short_s=60,
        cap_full_s=120,
        doc="sustained call setups/s (MQTT calls/request -> both residents' incoming), open loop or max",
    ),
}
