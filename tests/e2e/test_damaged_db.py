"""Damaged or unusable database files at start: one clear line naming the file, never a silent loss.

intercom.db (directory, tokens, call history) is refused: starting empty would lock every client out.
sessions.db (MQTT sessions, queues, retained messages) is moved aside to `sessions.db.corrupt-<time>`
with an ERROR naming both paths, and the server starts with no stored sessions.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.support.process import ServerProcess

pytestmark = pytest.mark.slow


def _client(server: ServerProcess, client_id: str, clean: bool) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
                    protocol=mqtt.MQTTv311)
    c.connect("127.0.0.1", server.mqtt_port, keepalive=30)
    c.loop_start()
    for _ in range(100):
        if c.is_connected():
            return c
        time.sleep(0.05)
    raise AssertionError("MQTT connect timed out")


def _close(c: mqtt.Client) -> None:
    c.disconnect()
    c.loop_stop()


@pytest.fixture
def used_data_dir(tmp_path: Path) -> Path:
    """A data dir after one clean run: a persistent session with a queued QoS 1 message, a retained topic."""
    server = ServerProcess(tmp_path).start()
    try:
        sub = _client(server, "resident-r0", clean=False)
        sub.subscribe("users/r0/#", qos=1)
        time.sleep(0.3)
        _close(sub)
        pub = _client(server, "device-d0", clean=True)
        pub.publish("users/r0/notes", b"queued while offline", qos=1).wait_for_publish(5)
        pub.publish("site/notice", b"retained", qos=1, retain=True).wait_for_publish(5)
        _close(pub)
        time.sleep(0.3)
    finally:
        server.stop()
    with contextlib.closing(sqlite3.connect(server.data_dir / "sessions.db")) as db:
        assert db.execute("SELECT COUNT(*) FROM mqtt_queue").fetchone()[0] == 1
        assert db.execute("SELECT COUNT(*) FROM mqtt_retained WHERE topic = ?", ("site/notice",)).fetchone()[0] == 1
    return server.data_dir


def _overwrite(path: Path, offset: int, size: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(b"\xa5" * size)


def _one_clear_line(err: str, path: Path) -> None:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if str(path) in line]
    assert lines, f"no line names {path}:\n{err}"


def test_a_damaged_page_in_sessions_db_is_moved_aside_with_an_error_naming_both_files(tmp_path, used_data_dir):
    """Page 2 of sessions.db overwritten: the file is moved to sessions.db.corrupt-<time>, an ERROR names both."""
    sessions = used_data_dir / "sessions.db"
    _overwrite(sessions, 4096, 4096)
    server = ServerProcess(tmp_path, data_dir=used_data_dir).start()
    try:
        assert server.http("GET", "/healthz")[0] == 200
        moved = list(used_data_dir.glob("sessions.db.corrupt-*"))
        assert len(moved) == 1, list(used_data_dir.iterdir())
        errors = [line for line in server.log if " ERROR " in line and str(sessions) in line and str(moved[0]) in line]
        assert errors, "".join(server.log)
    finally:
        server.stop()


def test_a_corrupt_header_in_sessions_db_is_moved_aside(tmp_path, used_data_dir):
    """sessions.db whose header is garbage: moved aside with an ERROR, the server starts empty."""
    sessions = used_data_dir / "sessions.db"
    _overwrite(sessions, 0, 100)
    server = ServerProcess(tmp_path, data_dir=used_data_dir).start()
    try:
        moved = list(used_data_dir.glob("sessions.db.corrupt-*"))
        assert len(moved) == 1
        assert any(" ERROR " in line and str(moved[0]) in line for line in server.log), "".join(server.log)
        with contextlib.closing(sqlite3.connect(sessions)) as db:
            assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    finally:
        server.stop()


def test_a_corrupt_header_in_intercom_db_is_refused_with_one_line(tmp_path, used_data_dir):
    """intercom.db whose header is garbage: exit non-zero with one line naming it, no traceback."""
    db = used_data_dir / "intercom.db"
    _overwrite(db, 0, 100)
    code, err = ServerProcess(tmp_path, data_dir=used_data_dir).run_to_exit()
    assert code != 0
    _one_clear_line(err, db)
    assert db.exists()
    assert not list(used_data_dir.glob("intercom.db.corrupt-*"))


def test_a_truncated_intercom_db_is_refused_with_one_line(tmp_path, used_data_dir):
    """intercom.db cut short: exit non-zero with one line naming it, no traceback."""
    db = used_data_dir / "intercom.db"
    size = db.stat().st_size
    with db.open("r+b") as f:
        f.truncate(size // 2)
    code, err = ServerProcess(tmp_path, data_dir=used_data_dir).run_to_exit()
    assert code != 0
    _one_clear_line(err, db)


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[None]:
    """chmod 555, and as root (who ignores modes) the immutable attribute too."""
    path.chmod(0o555)
    immutable = shutil.which("chattr") is not None and subprocess.run(
        ["chattr", "+i", str(path)], capture_output=True, check=False).returncode == 0
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(0o755)


def test_a_read_only_data_dir_is_refused_with_one_line(tmp_path, used_data_dir):
    """A data dir the server cannot write: exit non-zero with one line naming the path, no traceback."""
    with _read_only(used_data_dir):
        probe = used_data_dir / "probe"
        try:
            probe.touch()
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip("cannot make a directory read-only here")
        code, err = ServerProcess(tmp_path, data_dir=used_data_dir).run_to_exit()
    assert code != 0
    assert "Traceback" not in err, err
    assert any(str(used_data_dir) in line for line in err.splitlines()), err


def test_an_unusable_data_dir_path_is_refused_with_one_line(tmp_path):
    """A data dir path that is a file: exit non-zero with one line naming it, no traceback."""
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("a file, not a directory")
    code, err = ServerProcess(tmp_path, data_dir=not_a_dir).run_to_exit()
    assert code != 0
    _one_clear_line(err, not_a_dir)
    assert "cannot listen" not in err  # a storage problem, not a port problem
