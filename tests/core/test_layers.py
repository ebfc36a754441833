"""The import graph keeps its layers, transitively: what a module loads through any chain of project imports
counts, so a shared piece cannot carry the core into the engine (or the engine into the REST listener)."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

ASSEMBLY = ("broker.app", "broker.server", "broker.bridge", "broker.cli", "broker.__main__", "broker.ops",
            "broker.backup", "broker.admin_cli", "broker.scale", "broker.integrator")
# The neutral pieces every layer may use: configuration, value types, limits, listeners' plumbing.
SHARED = ("broker.config", "broker.ids", "broker.tls", "broker.limiter", "broker.db_open", "broker.accept_loop",
          "broker.fd_budget", "broker.http_site", "broker.log_context", "broker.write_gate",
          "broker.migrations", "broker.data_lock", "broker.web_guard")

# layer -> module prefixes it must never load, directly or through another project module
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "broker.core": ("amqtt", "aiohttp", "broker.mqtt", "plugins", "http_api", *ASSEMBLY),
    "broker.mqtt": ("aiohttp", "plugins", "http_api", "broker.core", *ASSEMBLY),
    "plugins": ("http_api", "aiohttp", *ASSEMBLY),
    "http_api": ("plugins", "amqtt", "broker.mqtt", *ASSEMBLY),
    **{shared: ("broker.core", "broker.mqtt", "plugins", "http_api", "amqtt", *ASSEMBLY) for shared in SHARED},
}
# `broker.http_site` is the REST listener: aiohttp is its job. Every other shared piece stays free of it.
WEB_FREE = tuple(s for s in SHARED if s != "broker.http_site")


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("broker", "plugins", "http_api"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path, module: str) -> set[str]:
    """Every name a module imports (`a.b` and, for `from a.b import c`, `a.b.c` too)."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _project_module(name: str) -> str | None:
    """The project module a name loads (`broker.core.wire.calls.CallInfo` -> `broker.core.wire.calls`), if any."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


@cache
def _loads(module: str) -> frozenset[str]:
    """Every name the module brings in, through project modules, parents' `__init__` included."""
    names: set[str] = set()
    visited: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current in visited:
            continue
        visited.add(current)
        imported = _imports(MODULES[current], current)
        names.update(imported)
        for name in imported:
            target = _project_module(name)
            if target is None:
                continue
            # importing a.b.c runs a/__init__ and a/b/__init__ first
            parents = [".".join(target.split(".")[:i]) for i in range(1, target.count(".") + 1)]
            todo.extend(m for m in (target, *parents) if m in MODULES and m not in visited)
    return frozenset(names | (visited - {module}))


def _chain(module: str, bad: str) -> str:
    """One import chain from module to bad, for the failure message."""
    paths = {module: [module]}
    todo = [module]
    while todo:
        current = todo.pop(0)
        for name in sorted(_imports(MODULES[current], current)):
            if name == bad or name.startswith(bad + "."):
                return " -> ".join([*paths[current], name])
            target = _project_module(name)
            if target and target not in paths:
                paths[target] = [*paths[current], target]
                todo.append(target)
    return f"{module} -> ... -> {bad}"


def _violations(forbidden: dict[str, tuple[str, ...]]) -> list[str]:
    bad = []
    for module in MODULES:
        for layer, refused in forbidden.items():
            if module != layer and not module.startswith(layer + "."):
                continue
            for f in refused:
                if any(name == f or name.startswith(f + ".") for name in _loads(module)):
                    bad.append(_chain(module, f))
    return sorted(set(bad))


def test_every_layer_loads_only_what_is_below_it() -> None:
    """No module reaches across the layer lines of docs/architecture.md, through any chain of imports."""
    assert _violations(FORBIDDEN) == []


def test_shared_pieces_need_no_web_framework() -> None:
    """Configuration, ids, limits and listener plumbing load no aiohttp (only the REST listener does)."""
    assert _violations({m: ("aiohttp",) for m in WEB_FREE}) == []


def test_the_checker_sees_imports() -> None:
    """The checker finds the imports it must judge (it would pass vacuously otherwise)."""
    assert "broker.core.calls" in MODULES
    assert any(n.startswith("amqtt") for n in _imports(MODULES["broker.mqtt.amqtt_compat"], "broker.mqtt.amqtt_compat"))


def test_the_checker_follows_chains() -> None:
    """A forbidden import two hops away is found: the engine loads the configuration, which loads pydantic."""
    assert "broker.config" in _loads("broker.mqtt.engine")
    assert any(n.startswith("pydantic") for n in _loads("broker.mqtt.engine"))
    assert _violations({"broker.mqtt.engine": ("pydantic",)}) != []


@pytest.mark.parametrize("package", ["broker", "plugins", "http_api"])
def test_modules_stay_readable_in_one_sitting(package: str) -> None:
    """Modules are split by concept, one job each; a module past 600 lines is a sign it holds two (see
    docs/architecture.md "Module size"), so it fails here until it is split along a concept."""
    long = [f"{p.relative_to(ROOT)}: {n}" for p in (ROOT / package).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 600]
    assert long == []
