"""Run the vendored Eclipse Paho MQTT 5 interoperability suite (client_test5.py) against one server.

Ours, not upstream, like `run_suite.py` (whose helpers it uses). Upstream's `client_test5.py` reads host,
port, topic_prefix, topics, wildtopics and nosubscribe_topics from module globals that only its
`if __name__ == "__main__"` block assigns; this wrapper imports the module unchanged, assigns the same
globals with the same values, and runs its `Test` case with unittest.

    python run_suite5.py -h 127.0.0.1 -p 1883                  # all 27 tests
    python run_suite5.py -h 127.0.0.1 -p 1883 test_will_delay  # some of them

Exit status 0 only if every selected test ran and passed; one `paho-interop5: PASS <test>` line (or FAIL /
ERROR / SKIP / NOT-RUN) per test is printed at the end.
"""

from __future__ import annotations

import argparse
import logging
import sys
import types
import unittest

from run_suite import HERE, NOSUBSCRIBE_TOPICS, _register_package

# Upstream's values, from client_test5.py's __main__ block (commit 9d7bb80bb8b9d9cfc0b52f8cb4c1916401281103).
TOPIC_PREFIX = "client_test5/"
TOPICS = tuple(TOPIC_PREFIX + t for t in ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA"))
WILDTOPICS = tuple(TOPIC_PREFIX + t for t in ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#"))


def load_suite_module(host: str, port: int) -> types.ModuleType:
    for name in ("mqtt", "mqtt.clients", "mqtt.formats"):
        _register_package(name)
    sys.path.insert(0, str(HERE))
    import client_test5  # after the package set-up above

    client_test5.host = host
    client_test5.port = port
    client_test5.topic_prefix = TOPIC_PREFIX
    client_test5.topics = TOPICS
    client_test5.wildtopics = WILDTOPICS
    client_test5.nosubscribe_topics = NOSUBSCRIBE_TOPICS
    return client_test5


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

    if args.tests:
        suite = unittest.TestSuite(module.Test(name) for name in args.tests)
    else:
        suite = unittest.TestLoader().loadTestsFromTestCase(module.Test)
    selected = [t.id().rsplit(".", 1)[-1] for t in suite]
    started: list[str] = []

    class Result(unittest.TextTestResult):
        def startTest(self, test: unittest.TestCase) -> None:
            started.append(test.id().rsplit(".", 1)[-1])
            super().startTest(test)

    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2, resultclass=Result).run(suite)
    outcome = {name: "PASS" if name in started else "NOT-RUN" for name in selected}
    for test, _ in result.errors:
        outcome[test.id().rsplit(".", 1)[-1]] = "ERROR"
    for test, _ in [*result.failures, *((t, None) for t in result.unexpectedSuccesses)]:
        outcome[test.id().rsplit(".", 1)[-1]] = "FAIL"
    for test, _ in result.skipped:
        outcome[test.id().rsplit(".", 1)[-1]] = "SKIP"
    for name in selected:
        print(f"paho-interop5: {outcome[name]} {name}")
    passed = sum(v == "PASS" for v in outcome.values())
    print(f"paho-interop5: {passed}/{len(selected)} passed", flush=True)
    return 0 if result.wasSuccessful() and result.testsRun == len(selected) and passed == len(selected) else 1


if __name__ == "__main__":
    sys.exit(main())
