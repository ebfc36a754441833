"""broker.mqtt.amqtt_compat: the amqtt pin, and its table of overridden names against what the engine defines."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from importlib.metadata import version

import pytest
from amqtt.broker import Broker
from amqtt.session import Session

from broker.mqtt import amqtt_compat
from broker.mqtt.amqtt_compat import AMQTT_VERSION, OVERRIDDEN, REPLACED_INIT, SESSION_API, AmqttMismatch
from broker.mqtt.engine import IntercomBroker
from broker.mqtt.fast_path import FastPathMixin
from broker.mqtt.hardening import HardeningMixin
from broker.mqtt.routing import RoutingMixin
from broker.mqtt.session import Session as EngineSession
from broker.mqtt.session import SessionStateError
from tests.support.harness import Harness
from tests.support.process import ROOT
from tests.support.raw_mqtt import Raw, connect

UPSTREAM_INIT_STATES = vars(Session)["_init_states"]  # as imported, before any engine code could touch it

# The engine's classes and the amqtt class each one's methods replace.
ENGINE: list[tuple[type, type]] = [
    (HardeningMixin, Broker), (FastPathMixin, Broker), (RoutingMixin, Broker), (IntercomBroker, Broker),
]


def defined(cls: type) -> set[str]:
    """The names `cls` itself defines (not inherited), dunders left out (every class has its `__init__`)."""
    return {n for n in vars(cls) if not (n.startswith("__") and n.endswith("__"))}


def test_check_passes_on_the_installed_amqtt():
    """check() accepts the installed amqtt, which is the pinned release."""
    assert version("amqtt") == AMQTT_VERSION
    amqtt_compat.check()


def test_another_amqtt_version_is_refused_naming_both_versions():
    """check("0.12.2") raises AmqttMismatch naming the installed and the required version."""
    with pytest.raises(AmqttMismatch) as exc:
        amqtt_compat.check("0.12.2")
    assert "0.12.2" in str(exc.value)
    assert AMQTT_VERSION in str(exc.value)


@pytest.mark.parametrize(("amqtt_cls", "name"),
                         [(cls, name) for cls, names in OVERRIDDEN.items() for name in names],
                         ids=lambda v: v.__name__ if isinstance(v, type) else v)
def test_every_listed_override_is_defined_by_the_engine_and_exists_in_amqtt(amqtt_cls, name):
    """Each OVERRIDDEN name exists on its amqtt class and one of the engine's classes defines it."""
    assert hasattr(amqtt_cls, name), f"amqtt's {amqtt_cls.__name__} has no {name}"
    owners = [eng.__name__ for eng, base in ENGINE if issubclass(base, amqtt_cls) and name in defined(eng)]
    assert owners, f"OVERRIDDEN lists {amqtt_cls.__name__}.{name}, but no engine class defines it"


@pytest.mark.parametrize(("engine_cls", "amqtt_cls"),
                         [pytest.param(eng, base, id=eng.__name__) for eng, base in ENGINE])
def test_every_engine_method_shadowing_amqtt_is_listed(engine_cls, amqtt_cls):
    """Every method an engine class defines over an amqtt attribute is in OVERRIDDEN: none is added silently."""
    shadowing = {name for name in defined(engine_cls) if hasattr(amqtt_cls, name)}
    listed = {name for cls, names in OVERRIDDEN.items() if issubclass(amqtt_cls, cls) for name in names}
    assert shadowing - listed == set(), f"{engine_cls.__name__} overrides amqtt without saying so"


# In a fresh interpreter, so nothing another test did counts.
FRESH = """
import asyncio, json
from amqtt.session import Session
from broker.mqtt import amqtt_compat
from broker.mqtt.engine import IntercomBroker

CONFIG = {"listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}}}
out = {}

async def build():
    try:
        IntercomBroker(CONFIG)
        out["before"] = "built"
    except RuntimeError as exc:
        out["before"] = str(exc)
    before = dict(vars(Session))
    amqtt_compat.install()
    out["patched"] = sorted(n for n, v in vars(Session).items() if before.get(n) is not v)
    IntercomBroker(CONFIG)
    out["after"] = "built"

asyncio.run(build())
print(json.dumps(out))
"""


def test_building_the_broker_before_install_is_refused():
    """IntercomBroker refuses to be built before install(); after it, it builds, and amqtt's Session is unchanged."""
    proc = subprocess.run([sys.executable, "-c", FRESH], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "install() must run before" in out["before"]
    assert out["patched"] == []
    assert out["after"] == "built"


def test_instance_attributes_the_engine_reads_are_checked(monkeypatch):
    """check() passes for the attributes amqtt assigns in __init__ and names one it does not assign."""
    amqtt_compat.check()
    from amqtt.mqtt.protocol.handler import ProtocolHandler

    monkeypatch.setitem(amqtt_compat.ATTRIBUTES, ProtocolHandler, ("_pubcomp_waiters", "_no_such_waiters"))
    with pytest.raises(AmqttMismatch, match="_no_such_waiters"):
        amqtt_compat.check()


async def test_running_the_engine_leaves_amqtts_modules_as_upstream(harness: Harness) -> None:
    """After the broker served a 3.1.1 and an MQTT 5 client, amqtt's modules are untouched: `Queue` in its session
    and broker-handler modules is asyncio's, `Session._init_states` is amqtt's, and a `Session()` amqtt builds gets
    a `transitions.Machine` and real `asyncio.Queue`s, whose connect/disconnect behave as upstream."""
    import asyncio

    from amqtt import session as amqtt_session
    from amqtt.mqtt.protocol import broker_handler
    from transitions import Machine, MachineError

    for level in (4, 5):
        raw = await Raw.open(harness.server.mqtt_port)
        assert await raw.connack(connect(f"upstream-{level}", version=level), 5) == 0
        await raw.close(disconnect=True)
    assert amqtt_session.Queue is asyncio.Queue
    assert broker_handler.Queue is asyncio.Queue
    assert Session._init_states is UPSTREAM_INIT_STATES
    session = Session()
    assert isinstance(session.transitions, Machine)
    assert type(session.retained_messages) is asyncio.Queue
    assert type(session.delivered_message_queue) is asyncio.Queue
    session.transitions.connect()
    assert session.transitions.state == "connected"
    with pytest.raises(MachineError):
        session.transitions.connect()
    session.transitions.disconnect()
    assert session.transitions.is_disconnected()


def test_no_amqtt_constructor_is_replaced_and_the_session_is_not_amqtts() -> None:
    """REPLACED_INIT is empty: the engine's Session is its own class, not a subclass of amqtt's."""
    assert REPLACED_INIT == {}
    assert not issubclass(EngineSession, Session)
    assert Session not in EngineSession.__mro__


def test_the_engine_session_answers_what_amqtt_uses_of_a_session() -> None:
    """Every SESSION_API name is one amqtt's Session has, and the engine's Session has it too, with amqtt's
    defaults for a fresh session (new, no client id, nothing in flight or queued)."""
    upstream, ours = Session(), EngineSession()
    for name in SESSION_API:
        assert hasattr(upstream, name), f"amqtt's Session has no {name}: SESSION_API is stale"
        assert hasattr(ours, name), f"the engine's Session lacks {name}, which amqtt uses"
    assert ours.transitions is ours
    assert ours.transitions.state == upstream.transitions.state == "new"
    for name in ("client_id", "clean_session", "username", "password", "keep_alive", "will_flag", "parent",
                 "is_anonymous", "attributes", "inflight_in_count", "inflight_out_count", "retained_messages_count"):
        assert getattr(ours, name) == getattr(upstream, name), name
    assert ours.retained_messages.qsize() == 0
    assert not hasattr(ours, "delivered_message_queue")  # amqtt's handler queue: nothing here reads it
    upstream, ours = Session(), EngineSession()  # hasattr took a packet id from each
    assert [ours.next_packet_id for _ in range(3)] == [upstream.next_packet_id for _ in range(3)] == [1, 2, 3]
    ours.clear_queues()


def test_engine_session_states_behave_like_amqtts_transitions_machine() -> None:
    """Every sequence of connect/disconnect gives the engine's Session the same states, refusals and timestamps as
    the transitions.Machine amqtt's own Session gets (its refusal is a ValueError, which callers suppress)."""
    from transitions import MachineError

    def run(session: object, ops: tuple[str, ...]) -> list[tuple[str, bool, bool, bool, bool]]:
        out = []
        t = session.transitions  # type: ignore[attr-defined]
        for op in ops:
            try:
                getattr(t, op)()
                failed = False
            except (MachineError, SessionStateError):
                failed = True
            out.append((t.state, failed, t.is_new(), t.is_connected(), t.is_disconnected()))
        return out

    assert issubclass(SessionStateError, ValueError)
    for ops in itertools.product(("connect", "disconnect"), repeat=4):
        ours, theirs = EngineSession(), Session()
        assert run(ours, ops) == run(theirs, ops), ops
        assert (ours.last_connect_time is None) == (theirs.last_connect_time is None)
        assert (ours.last_disconnect_time is None) == (theirs.last_disconnect_time is None)
        assert repr(ours).endswith(repr(theirs).removeprefix("Session"))


def test_every_plugin_manager_private_the_engine_reads_is_listed() -> None:
    """The engine reads a few of amqtt's PluginManager attributes (the loaded auth and topic plugins, the event
    callbacks); each is listed in `amqtt_compat.ATTRIBUTES`, so `check()` catches an amqtt that renamed one."""
    import re
    from pathlib import Path

    from amqtt.plugins.manager import PluginManager

    from broker.mqtt import amqtt_compat

    engine = Path(amqtt_compat.__file__).parent
    read = {m for path in engine.glob("*.py")
            for m in re.findall(r"\b(?:pm|plugins_manager)\.(_[a-z]\w*)", path.read_text())}
    assert read  # the scan sees the engine's reads
    assert read <= set(amqtt_compat.ATTRIBUTES.get(PluginManager, ()))
