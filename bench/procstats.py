"""Linux /proc readings for a process and its descendants (RSS, CPU time)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Return ``pid`` and all of its live descendants (via /proc/*/task/*/children)."""
    out: list[int] = []
    stack = [pid]
    seen: set[int] = set()
    while stack and len(out) < 10_000:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        out.append(p)
        task_dir = Path(f"/proc/{p}/task")
        try:
            tasks = list(task_dir.iterdir())
        except OSError:
            continue
        for t in tasks:
            with contextlib.suppress(OSError):
                stack.extend(int(c) for c in (t / "children").read_text().split())
    return out


def rss_kb(pid: int) -> int:
    """VmRSS (kB) summed over ``pid`` and its descendants; 0 if gone."""
    total = 0
    for p in descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass
    return total


def system_cpu_seconds() -> float:
    """user+nice+system time (s) of all CPUs since boot, from /proc/stat (no irq/softirq/steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[1]) + int(fields[2]) + int(fields[3])) / _CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime+stime (s) summed over ``pid`` and its descendants."""
    total = 0
    for p in descendants(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / _CLK_TCK
