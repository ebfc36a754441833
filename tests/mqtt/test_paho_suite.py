"""Eclipse Paho's own MQTT 3.1.1 and MQTT 5 interoperability suites, unmodified, against `python -m broker`.

`tests/paho_interop/` vendors `interoperability/client_test.py`, `client_test5.py` and the test clients they
import from eclipse/paho.mqtt.testing (see its README.md); `run_suite.py` / `run_suite5.py` there run them
against one host and port. `tests/mqtt/test_interop.py` re-states the ten 3.1.1 scenarios with our own clients.
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

from tests.support.process import INTEROP_CONFIG, ROOT, ServerProcess

SUITE = ROOT / "tests" / "paho_interop"
TESTS = ("testBasic", "test_dollar_topics", "test_keepalive", "test_offline_message_queueing",
         "test_overlapping_subscriptions", "test_redelivery_on_reconnect", "test_retained_messages",
         "test_subscribe_failure", "test_unsubscribe", "test_zero_length_clientid")
VERDICT = re.compile(r"^paho-interop: (PASS|FAIL|ERROR|SKIP|NOT-RUN) (\w+)$", re.MULTILINE)  # run_suite.py's summary


TESTS5 = ("test_assigned_clientid", "test_basic", "test_client_topic_alias", "test_dollar_topics",
          "test_flow_control1", "test_flow_control2", "test_keepalive", "test_maximum_packet_size",
          "test_offline_message_queueing", "test_overlapping_subscriptions", "test_payload_format",
          "test_publication_expiry", "test_redelivery_on_reconnect", "test_request_response", "test_retained_message",
          "test_server_keep_alive", "test_server_topic_alias", "test_session_expiry", "test_shared_subscriptions",
          "test_subscribe_failure", "test_subscribe_identifiers", "test_subscribe_options", "test_unsubscribe",
          "test_user_properties", "test_will_delay", "test_will_message", "test_zero_length_clientid")
VERDICT5 = re.compile(r"^paho-interop5: (PASS|FAIL|ERROR|SKIP|NOT-RUN) (\w+)$", re.MULTILINE)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    # local-only mode; anonymous clients may use every topic but test/nosubscribe (the suites'
    # test_subscribe_failure expects SUBACK 0x80 for it)
    s = ServerProcess(tmp_path, INTEROP_CONFIG).start()
    yield s
    s.stop()


@pytest.fixture
def server5(tmp_path: Path) -> Iterator[ServerProcess]:
    # client_test5's test_server_keep_alive asks for 120 s and expects the server to answer 60
    s = ServerProcess(tmp_path, {**INTEROP_CONFIG, "limits": {"max_keepalive_s": 60}}).start()
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
    assert re.search(r"^Ran 10 tests in ", out, re.MULTILINE), out
    assert re.search(r"^OK$", out, re.MULTILINE), out
    assert proc.returncode == 0, out


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_paho_mqtt5_interoperability_suite_passes(server5: ServerProcess) -> None:
    """All 27 tests of Paho's client_test5.py run and pass against the broker (MQTT 5 on the TCP listener)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-u", "run_suite5.py", "-h", "127.0.0.1", "-p", str(server5.mqtt_port)],
                          cwd=SUITE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=400)
    out = proc.stdout
    print(out)
    print(f"paho MQTT 5 interoperability suite: {time.monotonic() - t0:.1f} s")

    per_test = {name: verdict for verdict, name in VERDICT5.findall(out)}
    assert per_test == dict.fromkeys(TESTS5, "PASS"), out
    assert re.search(r"^Ran 27 tests in ", out, re.MULTILINE), out
