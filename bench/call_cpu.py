"""CPU per call setup and per lifecycle of the call service alone (no sockets), optionally under cProfile.

    .venv/bin/python bench/call_cpu.py [--calls 3000] [--per-tick 1] [--profile]

The real CallService, Directory, Trtc and a file-backed sqlite Store (WAL, in a temp dir) with 300
households of two residents and a door. Published messages are counted, not delivered, so the numbers
are the service's share of a call; bench/calls.py's ``call_rate`` measures the whole broker over the
wire. Each phase runs ``--repeat`` times and reports its best run (the machine is shared).
``--per-tick N`` yields to the event loop after every N calls, i.e. N calls share one group commit
(1 = the worst case: a commit per call setup).

* setup: device request -> call stored, both residents' ``incoming`` and the device reply encoded
  (what ``calls/request`` costs), then the device cancels (needed to call again; reported separately).
* lifecycle: request -> answered -> hangup.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.config import CallsConfig, Settings, SiteConfig
from broker.core.calls import CallService
from broker.core.directory import Directory
from broker.core.services import Services
from broker.core.status import StatusService
from broker.core.store import Store
from broker.core.trtc import Trtc
from plugins.call_router import on_publish

HOUSEHOLDS = 300


class CountingPublisher:
    def __init__(self) -> None:
        self.messages = 0

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, meta=None) -> None:
        self.messages += 1


def build(data_dir: Path) -> tuple[Services, CountingPublisher]:
    store = Store(data_dir / "intercom.db")
    directory = Directory(store, 1000, None)
    directory.seed_site(SiteConfig.model_validate({"households": [
        {"household_number": f"h{h}", "residents": [{"resident_id": f"r{h}a"}, {"resident_id": f"r{h}b"}],
         "devices": [{"device_id": f"d{h}"}]} for h in range(HOUSEHOLDS)]}))
    pub = CountingPublisher()
    trtc = Trtc(1400000001, "bench-secret-key", 86400)
    calls = CallService(store, directory, trtc, CallsConfig(), pub)
    return Services(Settings(), store, directory, trtc, calls, StatusService(store, directory, pub)), pub


async def run(svc: Services, n: int, per_tick: int, mode: str) -> dict[str, float]:
    """Drive the service through the MQTT entry point (on_publish), as the broker does."""
    calls = svc.calls
    ids: dict[int, str] = {}

    def start(h: int) -> None:
        on_publish(svc, None, f"calls/request/d{h}", b'{"household_number":"h%d","request_id":"r"}' % h)
        ids[h] = calls._by_device[f"d{h}"]

    def act(topic: str, call_id: str, action: str) -> None:
        on_publish(svc, None, topic, json.dumps({"call_info": {"call_id": call_id, "action": action}}).encode())

    t_setup = t_rest = 0.0
    for i in range(n):
        h = i % HOUSEHOLDS
        t0 = time.process_time()
        start(h)
        t1 = time.process_time()
        if mode == "setup":
            act(f"devices/d{h}/calls/control", ids[h], "cancelled")
        else:
            act(f"users/r{h}a/calls/control", ids[h], "answered")
            act(f"devices/d{h}/calls/control", ids[h], "hangup")
        t2 = time.process_time()
        if (i + 1) % per_tick == 0:
            t3 = time.process_time()
            await asyncio.sleep(0)  # the group commit runs here, then its messages are published
            t4 = time.process_time()
            # the commit is shared by the tick's transitions: split it by their count
            share = (t4 - t3) / (1 + (1 if mode == "setup" else 2))
            t_setup += share
            t_rest += (t4 - t3) - share
        t_setup += t1 - t0
        t_rest += t2 - t1
    await asyncio.sleep(0)
    assert calls.active_count == 0, "every call must have ended"
    return {"setup_ms": t_setup / n * 1e3, "rest_ms": t_rest / n * 1e3, "total_ms": (t_setup + t_rest) / n * 1e3}


def _commits(svc: Services) -> int:
    journal = getattr(svc.calls, "journal", None)  # absent before the group commit (baseline runs)
    return journal.commits if journal is not None else 0


async def amain(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="call-cpu-") as tmp:
        # the server's logging (broker/cli.py): INFO lines cost CPU too; written to a file here
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            filename=str(Path(tmp) / "log.txt"))
        svc, pub = build(Path(tmp))
        await run(svc, min(args.calls, 300), args.per_tick, "setup")  # warm-up: caches, sqlite pages
        for mode in ("setup", "lifecycle"):
            best: dict[str, float] | None = None
            commits0, msgs0 = _commits(svc), pub.messages
            for _ in range(args.repeat):  # a shared, noisy machine: keep the best run
                prof = cProfile.Profile() if args.profile else None
                if prof:
                    prof.enable()
                r = await run(svc, args.calls, args.per_tick, mode)
                if prof:
                    prof.disable()
                    pstats.Stats(prof).sort_stats("tottime").print_stats(25)
                if best is None or r["total_ms"] < best["total_ms"]:
                    best = r
            assert best is not None
            n = args.calls * args.repeat
            second = "cancel" if mode == "setup" else "answer+hangup"
            print(f"{mode:9s} {args.calls} calls x{args.repeat}, {args.per_tick}/tick: "
                  f"setup {best['setup_ms']:.3f} ms CPU, "
                  f"{second} {best['rest_ms']:.3f} ms, total {best['total_ms']:.3f} ms per call "
                  f"({(_commits(svc) - commits0) / n:.2f} group commits, "
                  f"{(pub.messages - msgs0) / n:.1f} messages per call; "
                  f"{getattr(svc.trtc, 'generated', 'n/a')} UserSigs made so far)", flush=True)
        svc.calls.close()
        svc.store.close()
        logging.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--per-tick", type=int, default=1, help="calls per event-loop tick (share one commit)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per phase; the best (least CPU) is reported")
    ap.add_argument("--profile", action="store_true", help="print the top of a cProfile of each run")
    args = ap.parse_args()
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
