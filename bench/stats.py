"""Result containers, percentiles and CPU metering shared by scenarios and the runner."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import procstats


@dataclass
class Metric:
    value: float
    unit: str
    higher_is_better: bool


@dataclass
class Result:
    metrics: dict[str, Metric] = field(default_factory=dict)
    complete: bool = True
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, value: float, unit: str, higher_is_better: bool) -> None:
        self.metrics[name] = Metric(float(value), unit, higher_is_better)

    def incomplete(self, note: str) -> None:
        self.complete = False
        self.notes.append(note)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def median_of(runs: list[Result]) -> Result:
    """One result from the same case run several times (`run.py --repeat`): each metric the median over the runs
    that reported it, every run's values kept in `extra["repeats"]`, the notes of all, the CPU of the median run of
    the first metric; incomplete if any run was."""
    out = Result(complete=all(r.complete for r in runs), notes=[n for r in runs for n in r.notes])
    for name, first in runs[0].metrics.items():
        values = [r.metrics[name].value for r in runs if name in r.metrics]
        out.add(name, statistics.median(values), first.unit, first.higher_is_better)
    key = next(iter(runs[0].metrics), None)
    ranked = sorted((r for r in runs if key in r.metrics), key=lambda r: r.metrics[key].value) if key else runs[:1]
    out.extra = dict(ranked[len(ranked) // 2].extra)
    out.extra["repeats"] = {name: [r.metrics[name].value for r in runs if name in r.metrics] for name in out.metrics}
    return out


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100.0 * len(sorted_values)) - 1))
    return sorted_values[k]


def latency_summary(samples_s: list[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds."""
    s = sorted(samples_s)
    return {
        "n": float(len(s)),
        "p50_ms": percentile(s, 50) * 1e3,
        "p90_ms": percentile(s, 90) * 1e3,
        "p99_ms": percentile(s, 99) * 1e3,
        "max_ms": (s[-1] * 1e3) if s else float("nan"),
    }


class Progress:
    """A counter that coroutines can wait on until it reaches a threshold."""

    def __init__(self) -> None:
        self.count = 0
        self.last_t = 0.0
        self._want = 0
        self._fut: asyncio.Future[None] | None = None

    def add(self, k: int = 1) -> None:
        self.count += k
        fut = self._fut
        if fut is not None and self.count >= self._want:
            self._fut = None
            if not fut.done():
                fut.set_result(None)

    async def wait(self, want: int, limit_s: float) -> bool:
        """Wait until count >= want; False on timeout."""
        if self.count >= want:
            return True
        if limit_s <= 0:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._want, self._fut = want, fut
        try:
            await asyncio.wait_for(fut, limit_s)
        except TimeoutError:
            return self.count >= want
        finally:
            self._fut = None
        return True


class CpuMeter:
    """Broker and load-generator CPU time over a measured phase."""

    def __init__(self, broker_pid: int | None) -> None:
        self.pid = broker_pid
        self._t0 = self._b0 = self._g0 = self._s0 = 0.0
        self.result: dict[str, float] = {}

    def begin(self) -> None:
        self._t0 = time.perf_counter()
        self._g0 = time.process_time()
        self._b0 = procstats.cpu_seconds(self.pid) if self.pid else 0.0
        self._s0 = procstats.system_cpu_seconds()

    def end(self) -> None:
        wall = max(time.perf_counter() - self._t0, 1e-9)
        broker = (procstats.cpu_seconds(self.pid) - self._b0) if self.pid else float("nan")
        gen = time.process_time() - self._g0
        system = procstats.system_cpu_seconds() - self._s0
        self.result = {
            "wall_s": wall,
            "broker_cpu_pct": 100.0 * broker / wall,
            "loadgen_cpu_pct": 100.0 * gen / wall,
            # everything else on the machine (other processes); ~0 on a quiet machine
            "other_cpu_pct": max(0.0, 100.0 * (system - broker - gen) / wall),
        }
