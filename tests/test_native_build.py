"""The optional compiled engine (broker/native_build.py), on a copy of the tree: one small module compiled for real
(mypyc + the C compiler), the status and the server's start-up check, the stale check after an edit, `--clean`.

Runs once (not per event loop), in the `timing` xdist group: the compile takes a core for a few seconds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from broker.native_build import GROUP, toolchain_problem
from tests.support import process
from tests.support.process import ServerProcess

pytestmark = pytest.mark.xdist_group("timing")

MODULE = "broker.mqtt.reason"  # small, and imported by the server at start
PACKAGES = ("broker", "plugins", "http_api")


def run(tree: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m broker.native_build ARGS` (or `python -c`) with the copy first on sys.path (it is the cwd)."""
    return subprocess.run([sys.executable, *args], cwd=tree, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, check=False)


def shared_objects(tree: Path) -> list[Path]:
    return sorted(p for p in tree.rglob("*") if p.suffix == ".so")


def server_in(tree: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> ServerProcess:
    """A server process started from the copy (`python -m broker` runs in support/process.py's ROOT)."""
    monkeypatch.setattr(process, "ROOT", tree)
    run_dir.mkdir()
    return ServerProcess(run_dir, loop="asyncio")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The importable packages of this checkout, copied without caches or compiled files."""
    if problem := toolchain_problem():
        pytest.skip(f"cannot compile here: {problem} (CI installs gcc and python3-dev)")
    root = Path(__file__).resolve().parents[1]
    copy = tmp_path / "tree"
    for pkg in PACKAGES:
        shutil.copytree(root / pkg, copy / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.so", "_native.json"))
    return copy


def assert_server_logs(server: ServerProcess, text: str) -> None:
    """The server starts, logs `text`, and stops cleanly."""
    try:
        server.start()
        assert any(text in line for line in server.log), server.log
    finally:
        assert server.stop() == 0


def test_compile_stale_refusal_and_clean(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = run(tree, "-m", "broker.native_build", "--module", MODULE)
    assert built.returncode == 0, built.stderr
    made = shared_objects(tree)
    assert {p.name.split(".")[0] for p in made} == {"reason", GROUP.rsplit(".", 1)[-1] + "__mypyc"}, made
    assert (tree / "broker" / "_native.json").exists()

    # compiled: Python loads the extension, status() says so, the server starts and logs it
    loaded = run(tree, "-c", f"import {MODULE} as m; print(m.__file__)")
    assert loaded.stdout.strip().endswith(".so"), loaded
    check = run(tree, "-m", "broker.native_build", "--check")
    assert check.returncode == 0, check.stdout
    assert f"{MODULE}: compiled" in check.stdout
    assert "engine: 1 module compiled (mypyc)" in check.stdout
    assert_server_logs(server_in(tree, tmp_path / "compiled", monkeypatch), "engine: 1 module compiled (mypyc)")

    # an edited .py behind its .so: stale, `--check` exits 1, the server refuses to start with one line
    source = tree / "broker" / "mqtt" / "reason.py"
    source.write_text(source.read_text() + "\n# edited after the compile\n")
    check = run(tree, "-m", "broker.native_build", "--check")
    assert check.returncode == 1, check.stdout
    assert f"{MODULE}: stale" in check.stdout
    code, err = server_in(tree, tmp_path / "stale", monkeypatch).run_to_exit()
    assert code == 2, err
    refusal = [line for line in err.splitlines() if "stale" in line]
    assert len(refusal) == 1, err
    assert MODULE in refusal[0]
    assert "python -m broker.native_build" in refusal[0]
    assert "--clean" in refusal[0]

    # --clean: nothing compiled left, pure Python again
    cleaned = run(tree, "-m", "broker.native_build", "--clean")
    assert cleaned.returncode == 0, cleaned.stderr
    assert shared_objects(tree) == []
    assert not (tree / "broker" / "_native.json").exists()
    check = run(tree, "-m", "broker.native_build", "--check")
    assert check.returncode == 0, check.stdout
    assert "engine: pure Python" in check.stdout
    assert_server_logs(server_in(tree, tmp_path / "pure", monkeypatch), "engine: pure Python")


def test_missing_compiler_is_one_line_and_exit_2(tmp_path: Path) -> None:
    copy = tmp_path / "tree"
    shutil.copytree(Path(__file__).resolve().parents[1] / "broker", copy / "broker",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "_native.json"))
    result = run(copy, "-m", "broker.native_build", env={"CC": str(tmp_path / "no-such-cc")})
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1, result.stderr
    assert "pip install '.[native]' and a C compiler (apt-get install gcc python3-dev)" in result.stderr
    assert shared_objects(copy) == []


WEAKLY_REFERENCED = '''
from __future__ import annotations

import asyncio


class Watched(asyncio.Protocol):  # a Python base class: mypyc gives it a __dict__ and a __weakref__ slot
    def __init__(self) -> None:
        self.n = 1


class Failed(Exception):  # a built-in base: the other dealloc mypyc writes
    def __init__(self, code: int) -> None:
        super().__init__("failed")
        self.code = code
'''
DROP_THEM = '''
import gc, weakref, watched
fired = []
items = [watched.Watched() for _ in range(500)] + [watched.Failed(i) for i in range(500)]
refs = [weakref.ref(i, fired.append) for i in items]
del items
gc.collect()
print(sum(r() is not None for r in refs), len(fired))
'''


def test_weak_references_to_compiled_objects_are_cleared(tmp_path: Path) -> None:
    """mypyc/mypyc#1102: without fix_weakref_dealloc, a weakref outlives its compiled object (as the deadline
    sweeper's did, to an MqttProtocol(asyncio.Protocol)): SIGSEGV. The real build path (`_compile`), two classes."""
    if problem := toolchain_problem():
        pytest.skip(f"cannot compile here: {problem} (CI installs gcc and python3-dev)")
    (tmp_path / "watched.py").write_text(WEAKLY_REFERENCED)
    build = ("import sys, tempfile; from pathlib import Path; from broker.native_build import _compile\n"
             "with tempfile.TemporaryDirectory() as tmp: _compile(Path(tmp), ['watched.py'], Path(sys.argv[1]), 'w')")
    built = subprocess.run([sys.executable, "-c", build, str(tmp_path)], cwd=Path(__file__).resolve().parents[1],
                           capture_output=True, text=True, timeout=120, check=False)
    assert built.returncode == 0, built.stderr
    assert list(tmp_path.glob("watched.*.so")), list(tmp_path.iterdir())
    dropped = run(tmp_path, "-c", DROP_THEM)
    assert dropped.returncode == 0, (dropped.returncode, dropped.stderr[-2000:])
    assert dropped.stdout.split() == ["0", "1000"]  # all cleared, every callback ran
