"""Plain-text side-by-side tables for benchmark results."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from stats import Result


@dataclass
class CaseResults:
    scenario: str
    label: str
    params: dict[str, object]
    cap_s: float
    results: dict[str, Result] = field(default_factory=dict)


def fmt_value(v: float) -> str:
    if math.isnan(v):
        return "nan"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.2f}x"


def ratio_pairs(targets: list[str], cases: list[CaseResults]) -> list[tuple[str, str]]:
    """ours/amqtt, ours/mosquitto and ours/ours@REV (an earlier revision) when ours has results, else
    amqtt/mosquitto."""
    ours_measured = any("ours" in c.results and c.results["ours"].metrics for c in cases)
    pairs: list[tuple[str, str]] = []
    if ours_measured:
        pairs += [("ours", b) for b in ("amqtt", "mosquitto") if b in targets]
        pairs += [("ours", b) for b in targets if b.startswith("ours@")]
        pairs += [(b, "ours") for b in targets if b.startswith("ours+mypyc")]  # the compiled engine's gain
    elif "amqtt" in targets and "mosquitto" in targets:
        pairs.append(("amqtt", "mosquitto"))
    return pairs


GEN_BOUND_PCT = 85.0


def generator_bound(r: Result) -> bool:
    """Broker and generator on separate CPUs and the generator's CPU was (nearly) saturated."""
    cpu, pin = r.extra.get("cpu") or {}, r.extra.get("pin") or {}
    return pin.get("mode") == "split" and cpu.get("loadgen_cpu_pct", 0.0) >= GEN_BOUND_PCT


def _marks(r: Result | None, higher_is_better: bool) -> str:
    if r is None:
        return ""
    return ("*" if not r.complete else "") + ("^" if higher_is_better and generator_bound(r) else "")


def _render(rows: list[list[str]], right_from: int) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        cells = [c.ljust(w) if i < right_from else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def results_table(targets: list[str], cases: list[CaseResults]) -> str:
    pairs = ratio_pairs(targets, cases)
    header = ["scenario", "metric", "unit", "better", *targets, *(f"{a}/{b}" for a, b in pairs)]
    rows = [header]
    for case in cases:
        names: list[str] = []
        for r in case.results.values():
            names += [m for m in r.metrics if m not in names]
        for name in names:
            vals: dict[str, float | None] = {}
            unit, better = "", ""
            row = [case.label, name]
            cells = []
            for t in targets:
                r = case.results.get(t)
                m = r.metrics.get(name) if r else None
                vals[t] = m.value if m else None
                if m is not None:
                    unit, better = m.unit, ("higher" if m.higher_is_better else "lower")
                    cells.append(fmt_value(m.value) + _marks(r, m.higher_is_better))
                else:
                    cells.append("-")
            row += [unit, better, *cells, *(_ratio(vals.get(a), vals.get(b)) for a, b in pairs)]
            rows.append(row)
    return _render(rows, right_from=4)


def cpu_table(targets: list[str], cases: list[CaseResults]) -> str:
    rows = [["scenario", *(f"{t} broker/gen/other %" for t in targets)]]
    for case in cases:
        row = [case.label]
        for t in targets:
            r = case.results.get(t)
            cpu = r.extra.get("cpu") if r else None
            if cpu:
                other = cpu.get("other_cpu_pct", float("nan"))
                row.append(f"{cpu['broker_cpu_pct']:.0f}/{cpu['loadgen_cpu_pct']:.0f}/{other:.0f}")
            else:
                row.append("-")
        rows.append(row)
    return _render(rows, right_from=1)


BUSY_OTHER_PCT = 15.0


def notes(cases: list[CaseResults]) -> list[str]:
    out = []
    for case in cases:
        for t, r in case.results.items():
            msgs = list(r.notes)
            other = (r.extra.get("cpu") or {}).get("other_cpu_pct", 0.0)
            if other >= BUSY_OTHER_PCT:
                msgs.append(f"other processes used {other:.0f}% CPU meanwhile: noisy")
            if msgs:
                out.append(f"{case.label} [{t}]: " + "; ".join(msgs))
    return out
