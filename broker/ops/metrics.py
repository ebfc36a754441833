"""`/metrics` (Prometheus text), `$SYS/broker/...` topics and `/healthz`'s verdict, from one `Monitor`.

The hot paths only bump plain ints (the engine's `messages_in`/`messages_out`, refusal counters, the
histograms below); a scrape reads them through a custom collector, so no prometheus call runs per message.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import os
import time
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from broker.core.call_log import MISSED_END_REASONS
from broker.core.services import Services
from broker.core.states import CallSession, EndReason
from broker.mqtt.hooks import PRINCIPAL, PROTOCOL
from plugins.acl import TopicAclPlugin
from plugins.auth import IntercomAuthPlugin

__all__ = ["Histogram", "Monitor"]

log = logging.getLogger("intercom")

LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Counts per bucket as plain ints; cumulative only when scraped."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BOUNDS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        buckets, running = [], 0
        for bound, n in zip((*(str(b) for b in self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            buckets.append((bound, running))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.total)


def call_outcome(call: CallSession) -> str:
    """answered, rejected, missed or not_answered (forced, dropped): the call's outcome as history shows it."""
    if call.connected_at is not None or call.answered_by is not None:
        return "answered"
    if call.end_reason == EndReason.REJECTED:
        return "rejected"
    return "missed" if call.end_reason in MISSED_END_REASONS else "not_answered"


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _version() -> str:
    try:
        return version("intercom-broker")
    except PackageNotFoundError:
        return "unknown"


class Monitor:
    """Counters the core reports to, and the readings of the broker (None in bridge mode) at scrape time."""

    def __init__(self, services: Services, broker: Any = None) -> None:
        self.services = services
        self.broker = broker
        self.started = time.time()
        self.call_setup = Histogram()
        self.unlock_latency = Histogram()
        self.group_commit = Histogram((0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0))
        self.calls_ended: collections.Counter[tuple[str, str]] = collections.Counter()
        self.unlocks: collections.Counter[str] = collections.Counter()
        self.max_connected = 0
        # more health checks (bridge mode: the external broker link); each returns a problem or None
        self.checks: list[Callable[[], str | None]] = []
        self._sys_task: asyncio.Task[None] | None = None
        calls = services.calls
        calls.on_setup = self.call_setup.observe
        calls.on_ended = self._ended
        calls.journal.on_commit = self.group_commit.observe
        services.doors.unlock_listeners.append(self._unlocked)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self.registry.register(ProcessCollector(registry=None))

    def _ended(self, call: CallSession) -> None:
        self.calls_ended[(call_outcome(call), str(call.end_reason or "unknown"))] += 1

    def _unlocked(self, _opener: object, _device: str, _relay: int, outcome: str, seconds: float) -> None:
        self.unlocks[outcome] += 1
        if outcome in ("opened", "device_error"):  # the station answered: the time is its ack latency
            self.unlock_latency.observe(seconds)

    def start(self) -> None:
        self.services.calls.lag.start()  # sampled from start, not from the first call, for /healthz and /metrics
        interval = self.services.settings.metrics.sys_interval_s
        if self.broker is not None and interval > 0 and self._sys_task is None:
            self._sys_task = asyncio.get_running_loop().create_task(self._publish_sys())

    def stop(self) -> None:
        if self._sys_task is not None:
            self._sys_task.cancel()
            self._sys_task = None

    def scrape(self) -> bytes:
        return generate_latest(self.registry)

    # -- readings -----------------------------------------------------------------------------------

    def connections(self) -> collections.Counter[tuple[str, str]]:
        """Connected MQTT clients by (protocol, role)."""
        counts: collections.Counter[tuple[str, str]] = collections.Counter()
        if self.broker is None:
            return counts
        for session, _handler in list(self.broker._sessions.values()):
            if session.transitions.state != "connected":
                continue
            principal = session.attributes.get(PRINCIPAL)
            protocol = "mqtt5" if session.attributes.get(PROTOCOL) == 5 else "mqtt311"
            counts[(protocol, principal.role if principal is not None else "anonymous")] += 1
        self.max_connected = max(self.max_connected, sum(counts.values()))
        return counts

    def queues(self) -> tuple[int, int]:
        """(bytes written but not yet sent, messages waiting in backlogs) over every open outlet."""
        if self.broker is None:
            return 0, 0
        sent_later, waiting = 0, 0
        for outlet in list(self.broker._outlets.values()):
            sent_later += outlet.writer.buffered()
            waiting += len(outlet.backlog)
        return sent_later, waiting

    def dropped(self) -> int:
        if self.broker is None:
            return 0
        return int(self.broker.dropped_closed) + sum(int(o.dropped) for o in list(self.broker._outlets.values()))

    def refused(self) -> collections.Counter[str]:
        out: collections.Counter[str] = collections.Counter()
        out["call_admission"] = self.services.calls.admission.refused
        if self.broker is None:
            return out
        out.update(self.broker._hardening().gate.refused)
        for plugin in self.broker.plugins_manager.plugins:
            if isinstance(plugin, TopicAclPlugin):
                out["acl"] += plugin.refused
            elif isinstance(plugin, IntercomAuthPlugin):
                out.update(plugin.refused)
        return out

    def problems(self) -> list[str]:
        """Why the box is unhealthy (empty: healthy)."""
        out = []
        gate = self.services.store.gate
        if not gate.is_open:
            out.append(f"database write gate closed ({gate.name} locked by another process)")
        lag_ms = self.services.calls.lag.lag_s * 1000
        if lag_ms > self.services.settings.metrics.max_loop_lag_ms:
            out.append(f"event loop {lag_ms:.0f} ms behind (metrics.max_loop_lag_ms "
                       f"{self.services.settings.metrics.max_loop_lag_ms:g})")
        if self.broker is not None:
            gate_in = self.broker._hardening().gate
            if gate_in.open >= gate_in.max_connections:
                out.append(f"broker not accepting: {gate_in.open} connections, the maximum (limits.max_connections)")
        out.extend(problem for check in self.checks if (problem := check()) is not None)
        return out

    # -- $SYS ---------------------------------------------------------------------------------------

    def sys_topics(self) -> dict[str, str]:
        """Mosquitto's `$SYS/broker/...` names and formats, from the same readings as /metrics."""
        connected = sum(self.connections().values())
        total = len(self.broker._sessions) if self.broker is not None else 0
        b = self.broker
        return {
            "version": f"intercom-broker version {_version()}",
            "uptime": f"{int(time.time() - self.started)} seconds",
            "clients/connected": str(connected),
            "clients/active": str(connected),
            "clients/disconnected": str(max(0, total - connected)),
            "clients/inactive": str(max(0, total - connected)),
            "clients/total": str(total),
            "clients/maximum": str(self.max_connected),
            "messages/received": str(b.messages_in if b is not None else 0),
            "messages/sent": str(b.messages_out if b is not None else 0),
            "publish/messages/received": str(b.messages_in if b is not None else 0),
            "publish/messages/sent": str(b.messages_out if b is not None else 0),
            "publish/messages/dropped": str(self.dropped()),
            "subscriptions/count": str(len(b._index) if b is not None else 0),
            "retained messages/count": str(len(b._retained_messages) if b is not None else 0),
            "heap/current": str(_rss_bytes()),
        }

    async def _publish_sys(self) -> None:
        interval = self.services.settings.metrics.sys_interval_s
        while True:
            try:
                for name, value in self.sys_topics().items():
                    self.broker.publish(f"$SYS/broker/{name}", value.encode(), qos=0, retain=True)
            except Exception:
                log.exception("could not publish $SYS topics")
            await asyncio.sleep(interval)


class _Collector(Collector):
    def __init__(self, monitor: Monitor) -> None:
        self.m = monitor

    def collect(self) -> Iterator[Any]:
        m, svc, b = self.m, self.m.services, self.m.broker
        conns = GaugeMetricFamily("intercom_mqtt_connections", "Connected MQTT clients",
                                  labels=["protocol", "role"])
        for (protocol, role), n in sorted(m.connections().items()):
            conns.add_metric([protocol, role], n)
        yield conns
        yield CounterMetricFamily("intercom_mqtt_messages_received", "Messages routed by the broker (client and "
                                  "server publishes)", value=b.messages_in if b is not None else 0)
        yield CounterMetricFamily("intercom_mqtt_messages_sent", "Deliveries to subscribers",
                                  value=b.messages_out if b is not None else 0)
        dropped = CounterMetricFamily("intercom_mqtt_messages_dropped", "Messages dropped", labels=["reason"])
        dropped.add_metric(["queue_overflow"], m.dropped())
        yield dropped
        refused = CounterMetricFamily("intercom_refused", "Connections, logins, publishes and call setups refused",
                                      labels=["reason"])
        for reason, n in sorted(m.refused().items()):
            refused.add_metric([reason], n)
        yield refused
        sent_later, waiting = m.queues()
        yield GaugeMetricFamily("intercom_mqtt_queue_bytes", "Bytes written to MQTT sockets, not yet sent",
                                value=sent_later)
        yield GaugeMetricFamily("intercom_mqtt_queued_messages", "Messages waiting in per-connection backlogs",
                                value=waiting)
        yield GaugeMetricFamily("intercom_calls_active", "Ringing and connected calls", value=svc.calls.active_count)
        ended = CounterMetricFamily("intercom_calls_ended", "Calls ended, by outcome and end reason",
                                    labels=["outcome", "end_reason"])
        for (outcome, reason), n in sorted(m.calls_ended.items()):
            ended.add_metric([outcome, reason], n)
        yield ended
        yield m.call_setup.family("intercom_call_setup_seconds", "Call setup: request to invites sent (committed)")
        unlocks = CounterMetricFamily("intercom_door_unlocks", "Door unlock attempts by outcome", labels=["outcome"])
        for outcome, n in sorted(m.unlocks.items()):
            unlocks.add_metric([outcome], n)
        yield unlocks
        yield m.unlock_latency.family("intercom_door_unlock_ack_seconds", "Unlock request to the station's ack")
        yield m.group_commit.family("intercom_group_commit_seconds", "sqlite commit of one group of call transitions")
        yield GaugeMetricFamily("intercom_event_loop_lag_seconds", "How late the event loop runs a timer",
                                value=svc.calls.lag.lag_s)
        yield GaugeMetricFamily("intercom_db_write_gate_open", "1 while intercom.db accepts writes, 0 while "
                                "another process holds it locked", value=1 if svc.store.gate.is_open else 0)
        yield GaugeMetricFamily("intercom_rss_bytes", "Resident set size", value=_rss_bytes())
