"""Run the vendored Eclipse Paho MQTT 3.1.1 interoperability suite (client_test.py) against one server.

Ours, not upstream. Upstream's `client_test.py` reads its settings (host, port, topics, wildtopics,
nosubscribe_topics) from module globals that only its `if __name__ == "__main__"` block assigns, and then
calls `unittest.main()` on `sys.argv`. This wrapper imports the module unchanged, assigns the same globals
with the same values, and runs its `Test` case with unittest, so the suite runs exactly as upstream wrote it.

    python run_suite.py -h 127.0.0.1 -p 1883                 # all ten tests
    python run_suite.py -h 127.0.0.1 -p 1883 test_keepalive  # some of them

Exit status 0 only if every selected test ran and passed. A per-test summary is printed at the end,
one line each: `paho-interop: PASS testBasic` (or FAIL / ERROR / SKIP / NOT-RUN).

The upstream package `__init__` files import parts of the upstream tree that are not vendored here (the
test broker, the MQTT 5 client and format); the suite needs only the 3.1.1 client and format, so the three
parent packages (`mqtt`, `mqtt.clients`, `mqtt.formats`) are registered without executing their
`__init__`, and the 3.1.1 sub-packages are imported normally.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import types
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Upstream's values, from client_test.py's __main__ block (commit 9d7bb80bb8b9d9cfc0b52f8cb4c1916401281103).
TOPICS = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
WILDTOPICS = ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")
NOSUBSCRIBE_TOPICS = ("test/nosubscribe",)


def _register_package(name: str) -> None:
    """Put package `name` (a directory under HERE) in sys.modules without running its __init__.py."""
    directory = HERE.joinpath(*name.split("."))
    spec = importlib.util.spec_from_file_location(name, directory / "__init__.py",
                                                  submodule_search_locations=[str(directory)])
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


def load_suite_module(host: str, port: int) -> types.ModuleType:
    for name in ("mqtt", "mqtt.clients", "mqtt.formats"):
        _register_package(name)
    sys.path.insert(0, str(HERE))
    import client_test  # after the package set-up above

    client_test.host = host
    client_test.port = port
    client_test.topics = TOPICS
    client_test.wildtopics = WILDTOPICS
    client_test.nosubscribe_topics = NOSUBSCRIBE_TOPICS
    return client_test


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("-h", "--hostname", default="localhost")
    parser.add_argument("-p", "--port", type=int, default=1883)
    parser.add_argument("--help", action="help")
    parser.add_argument("tests", nargs="*", help="test method names (default: all)")
    args = parser.parse_args(argv)

    logging.getLogger().setLevel(logging.ERROR)  # as upstream's __main__ block
    module = load_suite_module(args.hostname, args.port)
    print("hostname", args.hostname, "port", args.port, flush=True)

    loader = unittest.TestLoader()
    if args.tests:
        suite = unittest.TestSuite(module.Test(name) for name in args.tests)
    else:
        suite = loader.loadTestsFromTestCase(module.Test)
    selected = [t.id().rsplit(".", 1)[-1] for t in suite]

    started: list[str] = []

    class Result(unittest.TextTestResult):
        def startTest(self, test: unittest.TestCase) -> None:
            started.append(test.id().rsplit(".", 1)[-1])
            super().startTest(test)

    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2, resultclass=Result).run(suite)

    # a test that never started (e.g. setUpClass failed) is NOT RUN, never PASS
    outcome = {name: "PASS" if name in started else "NOT-RUN" for name in selected}
    for test, _ in result.errors:
        outcome[test.id().rsplit(".", 1)[-1]] = "ERROR"
    for test, _ in [*result.failures, *((t, None) for t in result.unexpectedSuccesses)]:
        outcome[test.id().rsplit(".", 1)[-1]] = "FAIL"
    for test, _ in result.skipped:
        outcome[test.id().rsplit(".", 1)[-1]] = "SKIP"
    for name in selected:
        print(f"paho-interop: {outcome[name]} {name}")
    passed = sum(v == "PASS" for v in outcome.values())
    print(f"paho-interop: {passed}/{len(selected)} passed", flush=True)
    return 0 if result.wasSuccessful() and result.testsRun == len(selected) and passed == len(selected) else 1


if __name__ == "__main__":
    sys.exit(main())
