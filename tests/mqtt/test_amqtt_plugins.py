"""amqtt plugins an integrator lists in `mqtt.plugins` load beside ours and see 3.1.1 and MQTT 5 clients alike."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from broker.config import ConfigError
from broker.core.tokens import hash_token
from broker.mqtt.plugin_config import check_plugins
from tests.mqtt.amqtt_event_probe import EventProbe
from tests.support.harness import make_settings
from tests.support.security import secure_harness

PROBE = "tests.mqtt.amqtt_event_probe.EventProbe"
SYS_PLUGIN = "amqtt.plugins.sys.broker.BrokerSysPlugin"


def _v5(harness, client_id: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", harness.server.mqtt_port, identifier=client_id,
                          protocol=aiomqtt.ProtocolVersion.V5)


def _probe(harness) -> EventProbe:
    found = [p for p in harness.server.broker.plugins_manager.plugins if isinstance(p, EventProbe)]
    assert len(found) == 1
    return found[0]


async def _until(check, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not check():  # noqa: ASYNC110 (the plugin offers no event to wait on)
            await asyncio.sleep(0.02)


async def test_event_plugin_sees_v311_and_v5_connects_and_publishes(make_harness):
    """A plugin from `mqtt.plugins` gets on_broker_client_connected and on_broker_message_received for both versions."""
    harness = await make_harness(mqtt={"plugins": {PROBE: {"label": "x"}}})
    probe = _probe(harness)
    async with harness.mqtt("probe-v3") as v3, _v5(harness, "probe-v5") as v5:
        await v3.publish("probe/v3", b"a", qos=1)
        await v5.publish("probe/v5", b"b", qos=1)
        await v5.publish("probe/v5q0", b"c", qos=0)
        await v5.publish("probe/v5q2", b"d", qos=2)
        await _until(lambda: {("received", "probe-v3", "probe/v3"), ("received", "probe-v5", "probe/v5"),
                              ("received", "probe-v5", "probe/v5q0"), ("received", "probe-v5", "probe/v5q2")}
                     <= set(probe.seen))
    assert ("connected", "probe-v3", None) in probe.seen
    assert ("connected", "probe-v5", None) in probe.seen


@pytest.mark.filterwarnings("ignore:.*psutil.*:DeprecationWarning")  # amqtt's own notice about its dependency
async def test_sys_plugin_publishes_clients_connected(make_harness):
    """amqtt's $SYS plugin, enabled through `mqtt.plugins` (ours off), publishes $SYS/broker/clients/connected,
    counting MQTT 5 clients too, to an integrator (the ACL's `$SYS/broker/#`)."""
    integrator = {"monitor": {"token_hash": hash_token("integrator-secret-0123456789", 1000)}}
    h, tokens = await secure_harness(make_harness, mqtt={"plugins": {SYS_PLUGIN: {"sys_interval": 1}}},
                                     metrics={"sys_interval_s": 0}, acl={"integrators": integrator})
    v5 = aiomqtt.Client("127.0.0.1", h.server.mqtt_port, identifier="resident-2", username="2",
                        password=tokens["resident-2"], protocol=aiomqtt.ProtocolVersion.V5)
    async with h.mqtt("integrator-monitor", username="monitor", password="integrator-secret-0123456789") as mon, \
            v5:
        await mon.subscribe("$SYS/broker/clients/connected")
        async with asyncio.timeout(5):
            async for message in mon.messages:
                if message.payload == b"2":  # both clients counted
                    break
    assert str(message.topic) == "$SYS/broker/clients/connected"


@pytest.mark.parametrize(("plugins", "extra", "words"), [
    ({"no.such.module.Plugin": {}}, {}, "cannot import"),
    ({"json.JSONDecoder": {}}, {}, "not an amqtt plugin"),
    ({"not a path": {}}, {}, "class path"),
    ({"plugins.acl.TopicAclPlugin": {}}, {}, "loaded already"),
    ({SYS_PLUGIN: {}}, {}, "metrics.sys_interval_s"),
    ({PROBE: {"no_such_option": 1}}, {}, "no_such_option"),
])
def test_bad_plugin_config_is_refused(tmp_path, plugins, extra, words):
    """A path that does not load, is not a plugin, repeats ours or fights our $SYS publisher is a config error."""
    with pytest.raises(ConfigError, match=words):
        check_plugins(make_settings(tmp_path, mqtt={"plugins": plugins}, **extra))
