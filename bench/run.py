"""MQTT broker benchmark: amqtt vs mosquitto vs ours, side by side, on 127.0.0.1.

    python bench/run.py [--short|--full] [--targets amqtt,mosquitto,ours]
                        [--scenarios qos0,qos1,fanout,reqresp,connect,idle] [--json out.json]

Every broker is restarted for every scenario case.  Each case has a wall-clock
cap (soft: the scenario stops and reports itself incomplete; hard: cap + 15 s,
the case is cancelled).  Targets that cannot start are skipped with a message.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import os
import platform
import resource
import shutil
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import mqttload
import procstats
from calls import CALL_SCENARIOS, CALL_TARGETS, site_config
from mqttload import MqttError
from report import CaseResults, cpu_table, notes, results_table
from scenarios import SCENARIOS, Ctx
from stats import CpuMeter, Result, median_of
from targets import TARGET_TYPES, AmqttTarget, OursAtRevTarget, OursMypycTarget, OursTarget, Target, TargetError

# call-level scenarios and the peer target (Mosquitto + our service in bridge mode): bench/calls.py
SCENARIOS.update(CALL_SCENARIOS)
TARGET_TYPES.update(CALL_TARGETS)

HARD_CAP_GRACE_S = 15.0
SETTLE_S = 0.5
# errors a scenario may raise that are reported in its row instead of aborting the run
CASE_ERRORS = (OSError, MqttError, ArithmeticError, LookupError, RuntimeError, TypeError, ValueError, struct.error)


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1_048_576
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # children inherit it
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    prof = ap.add_mutually_exclusive_group()
    prof.add_argument("--short", dest="profile", action="store_const", const="short", help="default, < 3 min")
    prof.add_argument("--full", dest="profile", action="store_const", const="full", help="issue-sized runs")
    ap.set_defaults(profile="short")
    ap.add_argument("--targets", default="amqtt,mosquitto,ours", help=f"comma list of {','.join(TARGET_TYPES)}")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma list of {','.join(SCENARIOS)}")
    ap.add_argument("--json", type=Path, help="write raw results to this file")
    ap.add_argument("--amqtt-plugins", choices=("default", "minimal"), default="default")
    ap.add_argument(
        "--pin",
        choices=("auto", "split", "same", "none"),
        default="auto",
        help="CPU placement of broker vs load generator (auto: per scenario; see README)",
    )
    ap.add_argument("--cap-scale", type=float, default=1.0, help="multiply every scenario's time cap")
    ap.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="SCENARIO.KEY=VALUE",
        help="override a scenario parameter for every case, e.g. fanout.window=1 (repeatable)",
    )
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each case wait up to S seconds for other processes to use < 10%% CPU (shared machines)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run every case N times, the targets' order rotating each round; each cell is the median (on a "
        "noisy VM a latency flips between modes from one broker start to the next)",
    )
    ap.add_argument("--keep-logs", action="store_true", help="keep the temp dir with broker logs")
    args = ap.parse_args(argv)
    args.target_names = [t for t in args.targets.split(",") if t]
    args.scenario_names = [s for s in args.scenarios.split(",") if s]
    for t in args.target_names:
        if t not in TARGET_TYPES and not t.startswith(("ours@", "ours+mypyc@")):
            ap.error(f"unknown target {t!r}")
    for s in args.scenario_names:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}")
    args.overrides = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        scen, dot, name = key.partition(".")
        if not sep or not dot or scen not in SCENARIOS:
            ap.error(f"bad --param {item!r}: want SCENARIO.KEY=VALUE")
        args.overrides.setdefault(scen, {})[name] = _number(value)
    return args


def _number(text: str) -> int | float | str:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def build_cases(args: argparse.Namespace) -> list[CaseResults]:
    cases = []
    for name in args.scenario_names:
        sc = SCENARIOS[name]
        plist = sc.full if args.profile == "full" else sc.short
        cap = (sc.cap_full_s if args.profile == "full" else sc.cap_short_s) * args.cap_scale
        plist = [{**p, **args.overrides.get(name, {})} for p in plist]
        cases += [CaseResults(name, sc.label(p), p, cap) for p in plist]
    return cases


def make_target(name: str, workdir: Path, args: argparse.Namespace) -> Target:
    if name == "amqtt":
        return AmqttTarget(workdir, plugins=args.amqtt_plugins)
    target: Target
    if name.startswith("ours@"):
        target = OursAtRevTarget(workdir, name.removeprefix("ours@"))
    elif name.startswith("ours+mypyc@"):
        target = OursMypycTarget(workdir, name.removeprefix("ours+mypyc@"))
    else:
        target = TARGET_TYPES[name](workdir)
    if isinstance(target, OursTarget):  # every revision and build of ours, one config: the call scenarios' site
        target.config = site_config(workdir)
    return target


def placement(mode: str) -> tuple[set[int], set[int]] | None:
    """(load generator CPUs, broker CPUs) for a pin mode, or None for no pinning."""
    cpus = sorted(os.sched_getaffinity(0))
    if mode == "none" or len(cpus) < 2:
        return None
    if mode == "same":
        return {cpus[1]}, {cpus[1]}
    return {cpus[0]}, {cpus[1]}


async def run_case(target: Target, case: CaseResults, pin: str) -> Result:
    mode = SCENARIOS[case.scenario].pin if pin == "auto" else pin
    place = placement(mode)
    all_cpus = os.sched_getaffinity(0)
    target.cpus = place[1] if place else None
    if place:
        os.sched_setaffinity(0, place[0])
    try:
        res = await _run_case(target, case)
    finally:
        os.sched_setaffinity(0, all_cpus)
    res.extra["pin"] = {"mode": mode, "loadgen": sorted(place[0]), "broker": sorted(place[1])} if place else None
    return res


async def _run_case(target: Target, case: CaseResults) -> Result:
    await target.start()
    meter = CpuMeter(target.pid)
    ctx = Ctx(target, case.params, time.perf_counter() + case.cap_s, meter)
    hard_cap = asyncio.timeout(case.cap_s + HARD_CAP_GRACE_S)
    try:
        async with hard_cap:
            res = await SCENARIOS[case.scenario].func(ctx)
    except TimeoutError as e:
        res = Result()
        if hard_cap.expired():
            res.incomplete(f"hard cap {case.cap_s + HARD_CAP_GRACE_S:.0f} s hit, cancelled")
        else:
            res.incomplete(f"error TimeoutError: {e}")
    except CASE_ERRORS as e:  # one failing case must not stop the run
        res = Result()
        res.incomplete(f"error {type(e).__name__}: {e}")
        traceback.print_exc()
    finally:
        await target.stop()
        gc.collect()
        await asyncio.sleep(SETTLE_S)  # let the kernel and both processes finish tearing down sockets
    if meter.result:
        res.extra["cpu"] = meter.result
    return res


def busy_pct(interval_s: float) -> float:
    """CPU used by everything on the machine over ``interval_s`` (% of one CPU)."""
    s0 = procstats.system_cpu_seconds()
    time.sleep(interval_s)
    return 100.0 * (procstats.system_cpu_seconds() - s0) / interval_s


async def wait_quiet(budget_s: float, threshold_pct: float = 10.0) -> float:
    """Sample machine CPU every 0.5 s until below threshold or budget spent; return the last sample."""
    deadline = time.monotonic() + budget_s
    while True:
        s0 = procstats.system_cpu_seconds()
        await asyncio.sleep(0.5)
        busy = 100.0 * (procstats.system_cpu_seconds() - s0) / 0.5
        if busy < threshold_pct or time.monotonic() >= deadline:
            return busy


def meta(args: argparse.Namespace, loop_name: str, nofile: int) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "uname": " ".join(platform.uname()).strip(),
        "python": sys.version.split()[0],
        "nproc": os.cpu_count(),
        "profile": args.profile,
        "loadgen_loop": loop_name,
        "nofile": nofile,
        "amqtt_plugins": args.amqtt_plugins,
        "pin": args.pin,
        "other_cpu_pct_at_start": round(busy_pct(1.0), 1),
    }


async def amain(args: argparse.Namespace, info: dict[str, Any]) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="mqtt-bench-"))
    targets = [make_target(n, workdir, args) for n in args.target_names]
    skipped: dict[str, str] = {}
    for t in targets:
        reason = t.skip_reason()
        if reason:
            skipped[t.name] = reason
            print(f"[skip] {t.name}: {reason}", flush=True)
    if info["other_cpu_pct_at_start"] > 10:
        busy = info["other_cpu_pct_at_start"]
        print(f"[warn] machine busy before start ({busy:.0f}% of one CPU): numbers will be noisy", flush=True)
    cases = build_cases(args)
    t_start = time.perf_counter()
    try:
        for case in cases:
            runs: dict[str, list[Result]] = {}
            for round_no in range(max(1, args.repeat)):
                shift = round_no % len(targets)
                for t in targets[shift:] + targets[:shift]:  # no target always runs first
                    if t.name in skipped:
                        continue
                    if args.wait_quiet > 0:
                        await wait_quiet(args.wait_quiet)
                    t0 = time.perf_counter()
                    try:
                        res = await run_case(t, case, args.pin)
                    except TargetError as e:
                        skipped[t.name] = str(e).splitlines()[0]
                        print(f"[skip] {e}", flush=True)
                        continue
                    runs.setdefault(t.name, []).append(res)
                    shown = ", ".join(f"{k}={v.value:.4g}{v.unit}" for k, v in res.metrics.items())
                    flag = "" if res.complete else "  INCOMPLETE: " + "; ".join(res.notes)
                    print(f"[{time.perf_counter() - t0:5.1f}s] {case.label:<28} {t.name:<10} {shown}{flag}",
                          flush=True)
            for name, done in runs.items():
                case.results[name] = done[0] if len(done) == 1 else median_of(done)
    finally:
        for t in targets:
            t.kill_now()
        if args.keep_logs:
            print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    names = [t.name for t in targets]
    print()
    print(f"# {info['date']}  profile={args.profile}  nproc={info['nproc']}  python {info['python']}")
    print(f"# {info['uname']}")
    busy = info["other_cpu_pct_at_start"]
    print(f"# loadgen loop {info['loadgen_loop']}, pin {args.pin}, CPU busy before start {busy:.0f}% of one CPU")
    if args.repeat > 1:
        print(f"# every cell: the median of {args.repeat} runs, the targets' order rotating each round")
    print(f"# total {time.perf_counter() - t_start:.0f} s; '*' = incomplete (see notes)\n")
    print(results_table(names, cases))
    print("\nCPU during the measured phase (% of one core; broker / load generator / other processes):\n")
    print(cpu_table(names, cases))
    for line in notes(cases):
        print("note:", line)
    for name, why in skipped.items():
        print(f"skipped: {name}: {why}")
    if args.json:
        doc = {
            "meta": info,
            "skipped": skipped,
            "cases": [
                {
                    "scenario": c.scenario,
                    "label": c.label,
                    "params": c.params,
                    "cap_s": c.cap_s,
                    "results": {k: v.to_json() for k, v in c.results.items()},
                }
                for c in cases
            ],
        }
        args.json.write_text(json.dumps(doc, indent=2))
        print(f"raw results written to {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nofile = raise_nofile()
    loop_name = "uvloop" if mqttload.install_uvloop() else "asyncio"
    info = meta(args, loop_name, nofile)
    return asyncio.run(amain(args, info))


if __name__ == "__main__":
    sys.exit(main())
