"""Eclipse Paho's own MQTT 3.1.1 interoperability suite, unmodified, against the real server (`python -m broker`).

`tests/paho_interop/` vendors `interoperability/client_test.py` and the 3.1.1 test client it imports from
eclipse/paho.mqtt.testing (see its README.md); `run_suite.py` there runs its ten tests against one host and
port. `tests/mqtt/test_interop.py` re-states the same ten scenarios with our own clients; this runs Paho's code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server_process import INTEROP_CONFIG, ROOT, ServerProcess

SUITE = ROOT / "tests" / "paho_interop"
TESTS = ("testBasic", "test_dollar_topics", "test_keepalive", "test_offline_message_queueing",
         "test_overlapping_subscriptions", "test_redelivery_on_reconnect", "test_retained_messages",
         "test_subscribe_failure", "test_unsubscribe", "test_zero_length_clientid")
VERDICT = re.compile(r"^paho-interop: (PASS|FAIL|ERROR|SKIP|NOT-RUN) (\w+)$", re.MULTILINE)  # run_suite.py's summary


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path, INTEROP_CONFIG).start()
    yield s
    s.stop()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_paho_interoperability_suite_passes(server: ServerProcess) -> None:
    """All ten tests of Paho's client_test.py run and pass (its sleeps add up to ~40 s; 15 s of it is keepalive)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-u", "run_suite.py", "-h", "127.0.0.1", "-p", str(server.mqtt_port)],
                          cwd=SUITE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=180)
    out = proc.stdout
    elapsed = time.monotonic() - t0
    print(out)
    print(f"paho interoperability suite: {elapsed:.1f} s")

    per_test = {name: verdict for verdict, name in VERDICT.findall(out)}
    assert per_test == dict.fromkeys(TESTS, "PASS"), out
    assert re.search(r"^Ran 10 tests in ", out, re.MULTILINE) and re.search(r"^OK$", out, re.MULTILINE), out
    assert proc.returncode == 0, out
