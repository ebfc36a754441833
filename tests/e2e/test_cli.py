"""The real command: config validation, port 0, health, and clean shutdown on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from broker.config import ConfigError, load_settings
from tests.support.process import ROOT


def test_bad_config_values_are_named(tmp_path):
    """A bad value in broker.yaml is reported with its dotted key."""
    path = tmp_path / "bad.yaml"
    path.write_text("calls:\n  ring_timeout_s: -1\n  reject_policy: everyone\nserver:\n  bogus: 1\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    text = str(exc.value)
    assert "calls.ring_timeout_s" in text
    assert "calls.reject_policy" in text
    assert "server.bogus" in text


def test_shipped_yaml_declares_the_demo_site():
    """The shipped broker.yaml is valid and declares household 101 with residents 2, 3 and device 1."""
    s = load_settings(ROOT / "broker.yaml", env={})
    hh = s.site.households[0]
    assert hh.household_number == "101"
    assert [r.resident_id for r in hh.residents] == ["2", "3"]
    assert [d.device_id for d in hh.devices] == ["1"]
    assert s.local_only


def test_env_secrets_override(tmp_path):
    """Secrets come from the environment."""
    s = load_settings(None, env={"INTERCOM_TRTC_SECRET_KEY": "k", "INTERCOM_TRTC_SDK_APP_ID": "1400000099",
                                 "INTERCOM_ADMIN_TOKEN": "a" * 20})
    assert s.trtc.secret_key.get_secret_value() == "k"
    assert s.trtc.sdk_app_id == 1400000099
    assert s.admin_token.get_secret_value() == "a" * 20


def test_non_loopback_without_credentials_is_refused(tmp_path):
    """Binding beyond loopback without an admin token exits with a clear message."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERCOM_")}
    proc = subprocess.run([sys.executable, "-m", "broker", "--config", str(ROOT / "broker.yaml"), "--host", "0.0.0.0",
                           "--mqtt-port", "0", "--ws-port", "0", "--http-port", "0", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert "refusing to listen" in proc.stderr


def test_serves_on_port_zero_and_stops_on_sigterm(tmp_path):
    """`python -m broker` prints its real ports, answers /healthz and exits cleanly within 5 s of SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", "--config", str(ROOT / "broker.yaml"), "--mqtt-port", "0", "--ws-port", "0",
         "--http-port", "0", "--data-dir", str(tmp_path / "d")],
        stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        line = ""
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "serving" in line or not line:
                break
        m = re.search(r"mqtt://127\.0\.0\.1:(\d+) ws://127\.0\.0\.1:(\d+) http://127\.0\.0\.1:(\d+)", line)
        assert m, line
        with urllib.request.urlopen(f"http://127.0.0.1:{m.group(3)}/healthz", timeout=5) as r:
            assert r.status == 200
            assert b'"code": 0' in r.read()
        assert (tmp_path / "d" / "intercom.db").exists()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - t0 < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
