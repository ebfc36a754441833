"""Benchmark scenarios and their registry.

A scenario is ``async def fn(ctx: Ctx) -> Result``; it must stop by
``ctx.deadline`` (``time.perf_counter()`` based), close its clients, and mark
the result incomplete if it could not finish.  Register it in ``SCENARIOS``
with per-profile parameter lists (one table row group per parameter dict).
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import procstats
from mqttload import MqttClient, MqttError, PublishTemplate, connect
from stats import CpuMeter, Progress, Result, latency_summary

HOST = "127.0.0.1"
STAMP = struct.Struct("!Id")  # sequence number, perf_counter() at send
STALL_S = 3.0  # no progress for this long -> give up (messages lost)
perf = time.perf_counter


class TargetLike(Protocol):
    name: str
    mqtt_port: int
    http_port: int | None
    username: str | None
    password: str | None

    @property
    def pid(self) -> int | None: ...


@dataclass
class Ctx:
    target: TargetLike
    params: dict[str, Any]
    deadline: float
    meter: CpuMeter

    def remaining(self) -> float:
        return self.deadline - perf()

    @property
    def protocol(self) -> int:
        """4 (MQTT 3.1.1) unless the case's params say `protocol: 5`."""
        return int(self.params.get("protocol", 4))

    async def client(self, client_id: str, limit_s: float = 10.0) -> MqttClient:
        return await connect(
            HOST,
            self.target.mqtt_port,
            client_id,
            username=self.target.username,
            password=self.target.password,
            limit_s=max(0.1, min(limit_s, self.remaining())),
            protocol=self.protocol,
        )


ScenarioFn = Callable[[Ctx], Awaitable[Result]]


@dataclass
class Scenario:
    func: ScenarioFn
    label: Callable[[dict[str, Any]], str]
    short: list[dict[str, Any]]
    full: list[dict[str, Any]]
    cap_short_s: float
    cap_full_s: float
    doc: str = ""
    pin: str = "split"  # "split": broker and load generator on different CPUs; "same": one shared CPU


def _payload(seq: int, pad: bytes) -> bytes:
    return STAMP.pack(seq & 0xFFFFFFFF, perf()) + pad


async def _close_all(clients: list[MqttClient]) -> None:
    for c in clients:
        try:
            await c.disconnect()
        except (OSError, RuntimeError):
            c.abort()
    await asyncio.sleep(0.05)


# ---------------------------------------------------------------- throughput
async def throughput_1to1(ctx: Ctx) -> Result:
    """One publisher, one subscriber, one topic; windowed flood of N messages."""
    n: int = ctx.params["messages"]
    qos: int = ctx.params["qos"]
    size: int = ctx.params.get("size", 64)
    window: int = ctx.params.get("window", 1000)
    batch: int = ctx.params.get("batch", 100)
    res = Result()
    topic = "bench/tp"
    tmpl = PublishTemplate(topic, size, qos, ctx.protocol)
    pad = bytes(size - STAMP.size)
    clients: list[MqttClient] = []
    try:
        sub = await ctx.client("bench-tp-sub")
        clients.append(sub)
        await sub.subscribe([(topic, qos)])
        pub = await ctx.client("bench-tp-pub")
        clients.append(pub)
        got, acked = Progress(), Progress()
        lat: list[float] = []

        def on_msg(_c: MqttClient, _t: bytes, payload: bytes) -> None:
            now = perf()
            lat.append(now - STAMP.unpack_from(payload)[1])
            got.last_t = now
            got.add()

        sub.on_message = on_msg
        pub.on_puback = lambda _c, _pid: acked.add()
        sent = 0
        ctx.meter.begin()
        t0 = perf()
        while sent < n and perf() < ctx.deadline:
            outstanding = sent - got.count
            if outstanding >= window:
                if not await got.wait(sent - window // 2, min(STALL_S, ctx.remaining())):
                    break
                continue
            k = min(batch, window - outstanding, n - sent)
            if qos:
                parts = [tmpl.encode(_payload(sent + j, pad), pub.next_packet_id()) for j in range(k)]
            else:
                parts = [tmpl.encode(_payload(sent + j, pad)) for j in range(k)]
            pub.write(b"".join(parts))
            sent += k
            await pub.drain()
            await asyncio.sleep(0)
        await got.wait(sent, min(STALL_S, ctx.remaining()))
        if qos:
            await acked.wait(sent, min(STALL_S, ctx.remaining()))
        ctx.meter.end()
        elapsed = max((got.last_t or perf()) - t0, 1e-9)
        res.add("msgs/s", got.count / elapsed, "msg/s", True)
        res.extra.update(sent=sent, received=got.count, pubacks=acked.count, elapsed_s=elapsed)
        res.extra["latency"] = latency_summary(lat)
        if sent < n:
            res.incomplete(f"time cap: sent {sent}/{n}")
        if got.count < sent:
            res.incomplete(f"received {got.count}/{sent}")
        if qos and acked.count < sent:
            res.incomplete(f"pubacks {acked.count}/{sent}")
    finally:
        await _close_all(clients)
    return res


# ------------------------------------------------------------------- fan-out
class _Deliveries:
    """Delivery counter + latency samples shared by all fan-out subscribers."""

    def __init__(self) -> None:
        self.got = Progress()
        self.lat: list[float] = []

    def on_msg(self, _c: MqttClient, _t: bytes, payload: bytes) -> None:
        now = perf()
        self.lat.append(now - STAMP.unpack_from(payload)[1])
        self.got.last_t = now
        self.got.add()


async def _fanout_phase(
    ctx: Ctx, pub: MqttClient, tmpl: PublishTemplate, d: _Deliveries, n: int, fan: int, window: int
) -> tuple[int, float]:
    """Publish up to n messages keeping <= window of them not fully delivered; (sent, elapsed s)."""
    pad = bytes(tmpl.payload_len - STAMP.size)
    got = d.got
    sent = 0
    t0 = perf()
    while sent < n and perf() < ctx.deadline:
        if sent - got.count // fan >= window:
            if not await got.wait((sent - max(window // 2, 1) + 1) * fan, min(STALL_S, ctx.remaining())):
                break
            continue
        pub.write(tmpl.encode(_payload(sent, pad)))
        sent += 1
        await asyncio.sleep(0)
    await got.wait(sent * fan, min(STALL_S, ctx.remaining()))
    return sent, max((got.last_t or perf()) - t0, 1e-9)


async def fanout(ctx: Ctx) -> Result:
    """One publisher, S subscribers on one topic (QoS 0).

    Phase 1 keeps ``window`` messages in flight and reports deliveries/s.
    Phase 2 sends one message at a time (next only after all S copies arrived)
    and reports per-delivery latency without queueing behind earlier messages.
    """
    n: int = ctx.params["messages"]
    nsubs: int = ctx.params["subscribers"]
    window: int = ctx.params.get("window", 10)
    size: int = ctx.params.get("size", 64)
    res = Result()
    topic = "bench/fan"
    tmpl = PublishTemplate(topic, size, 0, ctx.protocol)
    clients: list[MqttClient] = []
    try:
        subs, errors = await connect_many(ctx, nsubs, "bench-fan", lambda i: [(topic, 0)])
        clients.extend(subs)
        if errors:
            res.incomplete(f"{len(errors)} subscriber connects failed: {errors[0]}")
        fan = max(len(subs), 1)
        pub = await ctx.client("bench-fan-pub")
        clients.append(pub)
        phases = {}
        for phase, win in (("throughput", window), ("latency", 1)):
            d = _Deliveries()
            for s in subs:
                s.on_message = d.on_msg
            if phase == "throughput":
                ctx.meter.begin()
            sent, elapsed = await _fanout_phase(ctx, pub, tmpl, d, n, fan, win)
            if phase == "throughput":
                ctx.meter.end()
            phases[phase] = d
            res.extra[phase] = {
                "window": win,
                "sent": sent,
                "deliveries": d.got.count,
                "elapsed_s": elapsed,
                "deliveries_per_s": d.got.count / elapsed,
                "latency": latency_summary(d.lat),
            }
            if sent < n:
                res.incomplete(f"{phase}: time cap, sent {sent}/{n}")
            if d.got.count < sent * fan:
                res.incomplete(f"{phase}: deliveries {d.got.count}/{sent * fan}")
        res.extra["subscribers"] = len(subs)
        res.add(f"deliveries/s ({window} in flight)", res.extra["throughput"]["deliveries_per_s"], "msg/s", True)
        res.add("p50 (1 in flight)", res.extra["latency"]["latency"]["p50_ms"], "ms", False)
        res.add("p99 (1 in flight)", res.extra["latency"]["latency"]["p99_ms"], "ms", False)
    finally:
        await _close_all(clients)
    return res


# ---------------------------------------------------------- request/response
MAX_RR_LOST = 5


def _expire(fut: asyncio.Future[float]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def _round_trips(ctx: Ctx, n: int, warmup: int, res: Result) -> list[float]:
    """A publishes to B's request topic, B echoes to A's response topic; RTT samples (s)."""
    req_topic, resp_topic = "users/__rr_b/req", "users/__rr_a/resp"
    size: int = ctx.params.get("size", 64)
    pad = bytes(size - STAMP.size)
    req_t = PublishTemplate(req_topic, size, 0)
    resp_t = PublishTemplate(resp_topic, size, 0)
    clients: list[MqttClient] = []
    rtts: list[float] = []
    try:
        a = await ctx.client("bench-rr-a")
        clients.append(a)
        b = await ctx.client("bench-rr-b")
        clients.append(b)
        await a.subscribe([(resp_topic, 0)])
        await b.subscribe([(req_topic, 0)])
        b.on_message = lambda c, _t, payload: c.write(resp_t.encode(payload))
        waiter: list[asyncio.Future[float]] = []
        expected = [-1]

        def on_resp(_c: MqttClient, _t: bytes, payload: bytes) -> None:
            # match by sequence number so a late answer is never taken for the current one
            if waiter and not waiter[0].done() and STAMP.unpack_from(payload)[0] == expected[0]:
                waiter[0].set_result(perf())

        a.on_message = on_resp
        loop = asyncio.get_running_loop()
        lost = 0
        ctx.meter.begin()
        for i in range(n + warmup):
            if perf() >= ctx.deadline:
                res.incomplete(f"time cap: {max(0, i - warmup)}/{n} round trips")
                break
            fut: asyncio.Future[float] = loop.create_future()
            waiter[:] = [fut]
            expected[0] = i
            timer = loop.call_later(max(0.01, min(STALL_S, ctx.remaining())), _expire, fut)
            t_send = perf()
            a.write(req_t.encode(_payload(i, pad)))
            try:
                t_recv = await fut
            except TimeoutError:
                if ctx.remaining() < 0.05:
                    continue  # the time cap, reported at the top of the loop
                lost += 1
                if i >= warmup:
                    rtts.append(STALL_S)
                if lost >= MAX_RR_LOST:
                    res.incomplete(f"stopped after {lost} unanswered round trips")
                    break
                continue
            finally:
                timer.cancel()
            if i >= warmup:
                rtts.append(t_recv - t_send)
        if lost:
            res.notes.append(f"{lost} round trip(s) unanswered within {STALL_S:.0f} s, counted as {STALL_S:.0f} s")
        ctx.meter.end()
    finally:
        await _close_all(clients)
    return rtts


async def request_response(ctx: Ctx) -> Result:
    res = Result()
    n: int = ctx.params["round_trips"]
    rtts = await _round_trips(ctx, n, ctx.params.get("warmup", 50), res)
    s = latency_summary(rtts)
    res.add("rtt p50", s["p50_ms"], "ms", False)
    res.add("rtt p99", s["p99_ms"], "ms", False)
    res.extra["latency"] = s
    return res


# ------------------------------------------------------------ connect storm
async def connect_many(
    ctx: Ctx,
    n: int,
    prefix: str,
    topics: Callable[[int], list[tuple[str, int]]],
    concurrency: int = 100,
    max_errors: int = 20,
) -> tuple[list[MqttClient], list[str]]:
    """Connect ``n`` clients (``concurrency`` handshakes in flight), each subscribing ``topics(i)``."""
    clients: list[MqttClient] = []
    errors: list[str] = []
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < n and perf() < ctx.deadline and len(errors) < max_errors:
            i = next_i
            next_i += 1
            c: MqttClient | None = None
            try:
                c = await ctx.client(f"{prefix}-{i}")
                subs = topics(i)
                if subs:
                    await c.subscribe(subs, limit_s=max(0.1, min(10.0, ctx.remaining())))
                clients.append(c)
            except (OSError, TimeoutError, MqttError) as e:
                if c is not None:
                    c.abort()
                if ctx.remaining() < 0.05:  # loop timers may fire ~1 ms early
                    return  # cut short by the time cap: not a broker error
                errors.append(f"{type(e).__name__}: {e}")

    await asyncio.gather(*(worker() for _ in range(min(concurrency, max(n, 1)))))
    return clients, errors


def _user_topic(i: int) -> list[tuple[str, int]]:
    return [(f"users/{i}/#", 1)]


async def connect_storm(ctx: Ctx) -> Result:
    """N clients connect and subscribe users/{i}/#; wall time and broker RSS growth.

    RSS is read at the start, after the first half and at the end: "RSS/1k conns" is the growth over all N, which
    credits the broker with any heap its start-up freed (the first connections reuse it); "RSS/1k, 2nd half" is the
    growth over the second half only, the marginal cost of a connection once that slack is used up."""
    n: int = ctx.params["clients"]
    concurrency = ctx.params.get("concurrency", 100)
    half = n // 2
    res = Result()
    pid = ctx.target.pid
    await asyncio.sleep(0.3)
    rss0 = procstats.rss_kb(pid) if pid else 0
    clients: list[MqttClient] = []
    try:
        ctx.meter.begin()
        t0 = perf()
        clients, errors = await connect_many(ctx, half, "bench-storm", _user_topic, concurrency)
        wall = perf() - t0
        await asyncio.sleep(0.2)  # not timed: the first half settles before the mid-point reading
        rss_mid = procstats.rss_kb(pid) if pid else 0
        t1 = perf()
        more, errors2 = await connect_many(ctx, n - half, "bench-storm-b", lambda i: _user_topic(half + i),
                                           concurrency)
        wall += perf() - t1
        ctx.meter.end()
        clients += more
        errors += errors2
        await asyncio.sleep(0.5)
        rss1 = procstats.rss_kb(pid) if pid else 0
        ok = len(clients)
        res.add("wall", wall, "s", False)
        res.add("conn/s", ok / max(wall, 1e-9), "conn/s", True)
        if pid and ok:
            res.add("RSS/1k conns", (rss1 - rss0) / 1024.0 / (ok / 1000.0), "MiB", False)
        if pid and more:
            res.add("RSS/1k, 2nd half", (rss1 - rss_mid) / 1024.0 / (len(more) / 1000.0), "MiB", False)
        res.extra.update(connected=ok, errors=errors[:5], rss_before_kb=rss0, rss_mid_kb=rss_mid, rss_after_kb=rss1)
        if ok < n:
            why = f" (first error: {errors[0]})" if errors else " (time cap)"
            res.incomplete(f"connected {ok}/{n}{why}")
    finally:
        await _close_all(clients)
    return res


async def idle_clients_rr(ctx: Ctx) -> Result:
    """Request/response latency with N idle clients each subscribed to users/{i}/#."""
    n: int = ctx.params["idle"]
    res = Result()
    clients: list[MqttClient] = []
    try:
        t0 = perf()
        clients, errors = await connect_many(ctx, n, "bench-idle", _user_topic)
        res.extra.update(idle_connected=len(clients), connect_s=perf() - t0, errors=errors[:5])
        if len(clients) < n:
            res.incomplete(f"idle clients connected {len(clients)}/{n}")
        if ctx.remaining() <= 0:
            res.incomplete("time cap reached while connecting idle clients; no round trips")
            return res
        rtts = await _round_trips(ctx, ctx.params["round_trips"], ctx.params.get("warmup", 50), res)
        s = latency_summary(rtts)
        res.add("rtt p50", s["p50_ms"], "ms", False)
        res.add("rtt p99", s["p99_ms"], "ms", False)
        res.extra["latency"] = s
    finally:
        await _close_all(clients)
    return res


# ------------------------------------------------------------------ registry
SCENARIOS: dict[str, Scenario] = {
    "qos0": Scenario(
        throughput_1to1,
        lambda p: f"qos0 1->1 {p['messages']} msgs",
        short=[{"qos": 0, "messages": 20_000}],
        full=[{"qos": 0, "messages": 100_000}],
        cap_short_s=20,
        cap_full_s=120,
        doc="QoS 0 throughput, one publisher -> one subscriber, 64 B payloads, 1000-message window",
    ),
    "qos1": Scenario(
        throughput_1to1,
        lambda p: f"qos1 1->1 {p['messages']} msgs",
        short=[{"qos": 1, "messages": 20_000}],
        full=[{"qos": 1, "messages": 100_000}],
        cap_short_s=20,
        cap_full_s=150,
        doc="QoS 1 throughput (publisher gets PUBACKs, subscriber PUBACKs deliveries)",
    ),
    "fanout": Scenario(
        fanout,
        lambda p: f"fanout 1->{p['subscribers']} x{p['messages']}",
        short=[{"subscribers": 100, "messages": 200}],
        full=[{"subscribers": 100, "messages": 1000}],
        cap_short_s=20,
        cap_full_s=90,
        doc="1 publisher -> 100 subscribers on one topic, QoS 0: deliveries/s (10 in flight), latency (1 in flight)",
    ),
    # the same three with MQTT 5 clients (empty property blocks): the v5 path beside the 3.1.1 one
    "qos0v5": Scenario(
        throughput_1to1,
        lambda p: f"qos0 1->1 {p['messages']} msgs, MQTT 5",
        short=[{"qos": 0, "messages": 20_000, "protocol": 5}],
        full=[{"qos": 0, "messages": 100_000, "protocol": 5}],
        cap_short_s=20,
        cap_full_s=120,
        doc="as qos0, with MQTT 5 publisher and subscriber",
    ),
    "qos1v5": Scenario(
        throughput_1to1,
        lambda p: f"qos1 1->1 {p['messages']} msgs, MQTT 5",
        short=[{"qos": 1, "messages": 20_000, "protocol": 5}],
        full=[{"qos": 1, "messages": 100_000, "protocol": 5}],
        cap_short_s=20,
        cap_full_s=150,
        doc="as qos1, with MQTT 5 publisher and subscriber",
    ),
    "fanoutv5": Scenario(
        fanout,
        lambda p: f"fanout 1->{p['subscribers']} x{p['messages']}, MQTT 5",
        short=[{"subscribers": 100, "messages": 200, "protocol": 5}],
        full=[{"subscribers": 100, "messages": 1000, "protocol": 5}],
        cap_short_s=20,
        cap_full_s=90,
        doc="as fanout, with MQTT 5 publisher and subscribers",
    ),
    "reqresp": Scenario(
        request_response,
        lambda p: f"req/resp {p['round_trips']} rt",
        short=[{"round_trips": 2000}],
        full=[{"round_trips": 2000}],
        cap_short_s=20,
        cap_full_s=60,
        doc="sequential request/response round trips between two clients (QoS 0)",
        pin="same",
    ),
    "connect": Scenario(
        connect_storm,
        lambda p: f"connect storm {p['clients']}",
        short=[{"clients": 1000}],
        full=[{"clients": 1000}, {"clients": 5000}, {"clients": 10000}],
        cap_short_s=30,
        cap_full_s=120,
        doc="N clients CONNECT + SUBSCRIBE users/{i}/# (100 handshakes in flight)",
    ),
    "idle": Scenario(
        idle_clients_rr,
        lambda p: f"req/resp w/ {p['idle']} idle",
        short=[{"idle": 50, "round_trips": 500}, {"idle": 1000, "round_trips": 500}],
        full=[{"idle": n, "round_trips": 2000} for n in (50, 1000, 5000)],
        cap_short_s=30,
        cap_full_s=240,
        doc="request/response RTT while N idle clients hold users/{i}/# subscriptions",
        pin="same",
    ),
}
