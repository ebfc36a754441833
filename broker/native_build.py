"""The optional compiled engine: `python -m broker.native_build [--clean] [--check]`.

Compiles the hot engine modules (MODULES) with mypyc, in place, for whichever tree `broker` is imported from (the
source checkout or an installed copy): each `<module>.py` gets a `<module>.<ext-suffix>.so` beside it, which Python
imports instead of the `.py`, plus one shared library for the group (GROUP). The pure-Python modules stay the
fallback: `--clean` removes exactly what the build made. A manifest (MANIFEST, in the package) records each module's
source sha256 at compile time, so `status()` can tell a compiled module whose `.py` was edited since (stale: the
`.so` would silently run old code); the server refuses to start on one (broker/cli.py), and so does the test session.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["GROUP", "MANIFEST", "MODULES", "NativeStatus", "build", "clean", "fix_weakref_dealloc", "main", "status",
           "toolchain_problem"]

# What is compiled: the per-packet path. One place; the build, the status and CI read it.
MODULES: tuple[str, ...] = (
    "broker.mqtt.protocol",  # the socket: framing, dispatch, back-pressure
    "broker.mqtt.connection",  # each packet's handler
    "broker.mqtt.router",  # a PUBLISH accepted, routed, delivered, acknowledged
    "broker.mqtt.outlet",  # per-connection output, flow control
    "broker.mqtt.send_publish",
    "broker.mqtt.packet_guard",
    "broker.mqtt.codec",
    "broker.mqtt.encode",
    "broker.mqtt.topics",
    "broker.mqtt.tree",
    "broker.mqtt.topic_index",
    "broker.mqtt.shared_index",
    "broker.mqtt.sub_options",
    "broker.mqtt.reason",
)
# mypyc's group name: its shared library is intercom_native__mypyc.<suffix>.so beside `broker/` (a predictable name to
# clean). Top-level on purpose: mypyc derives the modules' __file__ from the library's directory as if it were.
GROUP = "intercom_native"
PACKAGE_DIR = Path(__file__).resolve().parent  # the `broker` package this module belongs to
ROOT = PACKAGE_DIR.parent  # the directory holding `broker/`: a checkout, or site-packages
MANIFEST = PACKAGE_DIR / "_native.json"
TOOLCHAIN_HINT = "pip install '.[native]' and a C compiler (apt-get install gcc python3-dev)"
REBUILD_HINT = "run `python -m broker.native_build` again (or `python -m broker.native_build --clean` for pure Python)"

# mypy settings for the compile, independent of any config file (an installed copy has no pyproject.toml): errors in
# the modules imported but not compiled are not ours to fix here; the compiled ones are mypy-strict in CI anyway.
_MYPY_INI = """[mypy]
ignore_missing_imports = True
follow_imports = silent
plugins = pydantic.mypy
cache_dir = {cache}
"""


class NativeBuildError(Exception):
    """The build cannot run or failed (one line for the user)."""


@dataclass(frozen=True, slots=True)
class NativeStatus:
    """Which engine modules run compiled, and which of those no longer match their source."""

    modules: tuple[str, ...]  # the modules looked at: MODULES and any the manifest names
    compiled: tuple[str, ...]  # loaded (or would load) from an extension module
    stale: tuple[str, ...]  # compiled, but the .py changed (or vanished) since the compile, or no manifest entry

    def summary(self) -> str:
        """The start-up log line."""
        if not self.compiled:
            return "engine: pure Python"
        n = len(self.compiled)
        return f"engine: {n} module{'s' if n != 1 else ''} compiled (mypyc)"

    def refusal(self) -> str | None:
        """One line saying why the server must not start, or None."""
        if not self.stale:
            return None
        return f"compiled engine modules are stale (source edited since the compile): {', '.join(self.stale)}; " \
               f"{REBUILD_HINT}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_manifest() -> dict[str, Any]:
    try:
        data = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _origin(name: str) -> str | None:
    """The file `name` was (or would be) loaded from, without importing it if it is not loaded yet."""
    mod = sys.modules.get(name)
    if mod is not None:
        return getattr(mod, "__file__", None)
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None else None


def _source_of(name: str) -> Path:
    return ROOT.joinpath(*name.split(".")).with_suffix(".py")


def status() -> NativeStatus:
    """Cheap (a few small files hashed, nothing compiled or imported beyond packages): safe at every start."""
    manifest = _read_manifest()
    hashes: dict[str, str] = manifest.get("modules") or {}
    names = tuple(dict.fromkeys([*MODULES, *hashes]))
    compiled: list[str] = []
    stale: list[str] = []
    for name in names:
        origin = _origin(name)
        if origin is None or origin.endswith(".py"):
            continue
        compiled.append(name)
        source = _source_of(name)
        if name not in hashes or not source.exists() or _sha256(source) != hashes[name]:
            stale.append(name)
    return NativeStatus(names, tuple(compiled), tuple(stale))


def toolchain_problem() -> str | None:
    """What is missing to compile (mypyc, setuptools, a C compiler, Python's headers), or None."""
    for mod in ("mypyc.build", "setuptools"):
        try:
            importlib.import_module(mod)
        except ImportError:
            return f"{mod.split('.')[0]} is not installed"
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]  # distutils' choice too
    if shutil.which(cc) is None:
        return f"no C compiler ({cc})"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers (Python.h)"
    return None


def _artifacts(names: tuple[str, ...]) -> list[Path]:
    """Every extension file of these modules and of the group's library that exists in this tree."""
    found: list[Path] = []
    for name in (*names, f"{GROUP}__mypyc"):
        base = ROOT.joinpath(*name.split("."))
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = base.with_name(base.name + suffix)
            if path.exists():
                found.append(path)
    return found


def clean() -> list[Path]:
    """Remove what a build made (the .so files, the group library, the manifest): pure Python again."""
    names = tuple(dict.fromkeys([*MODULES, *(_read_manifest().get("modules") or {})]))
    removed = _artifacts(names)
    for path in removed:
        path.unlink()
    if MANIFEST.exists():
        MANIFEST.unlink()
        removed.append(MANIFEST)
    return removed


def build(modules: tuple[str, ...] = MODULES) -> list[Path]:
    """Compile `modules` in place (mypyc, then the C compiler; work files in a temp dir): the files made."""
    if problem := toolchain_problem():
        raise NativeBuildError(f"cannot compile: {problem}: {TOOLCHAIN_HINT}")
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        raise NativeBuildError(f"not an engine module of MODULES: {', '.join(unknown)}")
    clean()  # nothing of an earlier build may survive (a module dropped from MODULES would shadow its .py)
    sources = {m: _source_of(m) for m in modules}
    hashes = {m: _sha256(path) for m, path in sources.items()}  # what is compiled, hashed before compiling
    try:
        with tempfile.TemporaryDirectory(prefix="intercom-native-") as tmp:
            _compile(Path(tmp), [str(p.relative_to(ROOT)) for p in sources.values()])
    except NativeBuildError:
        clean()  # a half-finished build must not be mistaken for a good one
        raise
    made = _artifacts(modules)
    from mypy.version import __version__ as mypy_version

    MANIFEST.write_text(json.dumps({"mypy": mypy_version, "python": sys.version.split()[0], "group": GROUP,
                                    "modules": hashes}, indent=1) + "\n")
    return [*made, MANIFEST]


def _compile(tmp: Path, paths: list[str], root: Path = ROOT, group: str = GROUP) -> None:
    """mypycify + setuptools' build_ext --inplace, run from `root` (in-place output lands by package name)."""
    from mypyc.build import mypycify
    from setuptools import Distribution

    ini = tmp / "mypy.ini"
    ini.write_text(_MYPY_INI.format(cache=tmp / "mypy_cache"))
    cwd = Path.cwd()
    os.chdir(root)
    try:
        exts = mypycify(["--config-file", str(ini), *paths], opt_level="3", target_dir=str(tmp / "c"),
                        group_name=group)
        for c_file in (tmp / "c").glob("*.c"):
            c_file.write_text(fix_weakref_dealloc(c_file.read_text()))
        dist = Distribution({"name": "intercom-native", "ext_modules": exts, "script_name": "native_build",
                             "script_args": ["-q", "build_ext", "--inplace", "--build-temp", str(tmp / "obj"),
                                             "--build-lib", str(tmp / "lib")]})
        dist.parse_command_line()
        dist.run_commands()
    except SystemExit as exc:  # mypyc reports type errors, and distutils compile errors, by exiting
        raise NativeBuildError(f"compile failed ({exc}); see the output above") from None
    except Exception as exc:  # CompileError, LinkError: one line, the compiler printed the detail above
        raise NativeBuildError(f"compile failed: {exc}") from None
    finally:
        os.chdir(cwd)


# mypyc (up to at least 2.4.1, Python < 3.12; mypyc/mypyc#1102) gives a compiled class with a Python or built-in
# base class (an asyncio.Transport subclass, an exception) a __weakref__ slot, but treats the slot as an owned
# reference: traverse visits it, clear and dealloc Py_CLEAR it, and nothing calls PyObject_ClearWeakRefs. A
# weakref.ref to such an object then outlives it and crashes the process (SIGSEGV in the GC or on the next ref();
# found when MqttProtocol still subclassed asyncio.Protocol and the keepalive sweeper held it weakly). The C it
# emits is patched before compiling: the slot is left alone and dealloc clears the weak references as CPython's
# own subtype_dealloc does.
_WEAKLIST = re.compile(r"^\s*Py_(?:VISIT|CLEAR)\(\*\(\(PyObject \*\*\)\(\(char \*\)self \+ sizeof\(PyObject \*\) "
                       r"\+ sizeof\(\w+\)\)\)\);\n", re.MULTILINE)
_DEALLOC = re.compile(r"^\w+_dealloc\([^)]*\)\n\{\n.*?^\}\n", re.MULTILINE | re.DOTALL)  # one function
_UNTRACK = "PyObject_GC_UnTrack(self);\n"  # after any finalizer ran, before anything is cleared or freed
_CLEAR_WEAKREFS = "    if (Py_TYPE(self)->tp_weaklistoffset) PyObject_ClearWeakRefs((PyObject *)self);\n"


def fix_weakref_dealloc(c_source: str) -> str:
    """The generated C with the weak-reference slot handled correctly (see above); unchanged if it has none."""
    if '{"__weakref__", T_OBJECT_EX' not in c_source:
        return c_source
    fixed, slot_uses = _WEAKLIST.subn("", c_source)
    deallocs = 0

    def clear_first(m: re.Match[str]) -> str:
        nonlocal deallocs
        body = m.group(0)
        if _UNTRACK not in body:
            return body
        deallocs += 1
        return body.replace(_UNTRACK, _UNTRACK + _CLEAR_WEAKREFS, 1)

    fixed = _DEALLOC.sub(clear_first, fixed)
    if not slot_uses or not deallocs:  # mypyc's output changed shape: refuse rather than build a crashing engine
        raise NativeBuildError("this mypyc's C output is not the shape the __weakref__ fix expects "
                               "(broker/native_build.py, fix_weakref_dealloc)")
    return fixed


def _print_status(st: NativeStatus) -> None:
    print(f"{st.summary()} in {ROOT}")
    for name in st.modules:
        state = "stale" if name in st.stale else "compiled" if name in st.compiled else "pure"
        print(f"  {name}: {state}")
    if msg := st.refusal():
        print(msg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m broker.native_build", description=__doc__.split("\n\n")[0])
    ap.add_argument("--clean", action="store_true", help="remove the compiled modules: back to pure Python")
    ap.add_argument("--check", action="store_true", help="print which modules run compiled; exit 1 if any is stale")
    ap.add_argument("--module", action="append", metavar="NAME",
                    help="compile only this module of MODULES (repeatable; the tests use it)")
    args = ap.parse_args(argv)
    if args.check:
        st = status()
        _print_status(st)
        return 1 if st.stale else 0
    if args.clean:
        removed = clean()
        print(f"native_build: removed {len(removed)} file(s); engine: pure Python")
        return 0
    started = time.monotonic()
    try:
        made = build(tuple(args.module) if args.module else MODULES)
    except NativeBuildError as exc:
        print(f"native_build: {exc}", file=sys.stderr)
        return 2
    print(f"native_build: {len(made)} files made in {time.monotonic() - started:.0f} s under {ROOT}; "
          f"{status().summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
