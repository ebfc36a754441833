"""The one place that states what this engine assumes of amqtt's internals, checked at start-up.

The engine (`broker.mqtt`) overrides private methods of amqtt 0.12.1's `Broker` in its subclass and calls a few
private methods. amqtt's protocol handler serves no connection: every MQTT 3.1.1 and 5 connection is the engine's
(`handle_connect`). Sessions and messages are the engine's own classes (`session.Session`, `message.*`), which
carry the names amqtt's host code and plugins read (`SESSION_API`). It patches nothing in amqtt's modules or
classes: amqtt's own `Session` and handler stay as shipped (`tests/mqtt/test_amqtt_compat.py` checks that after
the broker ran). All of that is written against exactly one amqtt release. `install()` is called by the
assembly before a broker is built: it refuses any other amqtt version with one clear error and checks that
every overridden or read name still exists. To upgrade amqtt: bump `AMQTT_VERSION`, run `tests/mqtt/` (the
differential tests compare each override with amqtt's own code path), and adjust the tables below.
"""

from __future__ import annotations

import inspect
from importlib.metadata import PackageNotFoundError, version

from amqtt.adapters import StreamWriterAdapter, WriterAdapter
from amqtt.broker import Broker, BrokerContext
from amqtt.contexts import Action, ListenerConfig, ListenerType
from amqtt.events import BrokerEvents
from amqtt.plugins.manager import PluginManager

# The amqtt API the engine uses as its host, re-exported: the engine's modules import it from here, so amqtt is
# named by this module, `engine.py` (the `Broker` subclass) and `plugin_config.py` (loads amqtt plugins) only.
__all__ = [
    "AMQTT_VERSION",
    "ATTRIBUTES",
    "EVENTS",
    "OVERRIDDEN",
    "PUBLISH_ACTION",
    "RECEIVE_ACTION",
    "REPLACED_INIT",
    "SESSION_API",
    "SUBSCRIBE_ACTION",
    "USED",
    "Action",
    "AmqttMismatch",
    "Broker",
    "BrokerContext",
    "BrokerEvents",
    "ListenerConfig",
    "ListenerType",
    "StreamWriterAdapter",
    "WriterAdapter",
    "check",
    "install",
    "require_installed",
]

AMQTT_VERSION = "0.12.1"

# `Action`'s members, read once: on Python 3.11 an enum member looked up on its class costs ~0.07 µs (compiled code
# too), and the ACL hooks are asked per PUBLISH (`router.Router.may_publish_now`, `plugins.acl`)
PUBLISH_ACTION, SUBSCRIBE_ACTION, RECEIVE_ACTION = Action.PUBLISH, Action.SUBSCRIBE, Action.RECEIVE

# amqtt methods the engine's subclasses replace (class -> names). A name missing here or in amqtt fails `check`.
OVERRIDDEN: dict[type, tuple[str, ...]] = {
    Broker: (
        # hardening.HardeningMixin: listeners (every socket is a protocol.MqttProtocol), admission (authentication),
        # session expiry
        "_create_server_instance", "_authenticate", "_session_monitor",
        # routing.RoutingMixin (subscription index, delivery, retained tree)
        "add_subscription", "_del_subscription", "subscriptions",
        "_del_all_subscriptions", "_publish_retained_messages_for_subscription", "_broadcast_message",
        "_run_broadcast", "_publish_session_retained_messages",
        # routing.RoutingMixin: a session restored through `BrokerContext.add_subscription` is the engine's
        "create_offline_session",
    ),
}
# amqtt constructors that an engine subclass replaces instead of calling (amqtt class -> (engine class, why)):
# none. The engine's `Session` and messages are its own classes, not amqtt subclasses.
REPLACED_INIT: dict[type, tuple[str, str]] = {}
# What amqtt's host code and plugins use of a session, which the engine's `session.Session` answers (the test
# checks each on both classes): `Broker._delete_session` / `_cleanup_session` (`clear_queues`), plugin events
# (`client_session=`), the auth and topic plugins, `BrokerSysPlugin` (the `*_count` properties), `Broker`'s
# session monitor and `create_offline_session` (`transitions`). amqtt's client-side fields (`broker_uri`,
# `cafile`, `capath`, `cadata`, `publish_retry_delay`) are not kept.
SESSION_API: tuple[str, ...] = (
    "client_id", "clean_session", "username", "password", "remote_address", "remote_port", "keep_alive",
    "will_flag", "will_topic", "will_message", "will_qos", "will_retain", "ssl_object", "parent", "is_anonymous",
    "last_connect_time", "last_disconnect_time", "attributes", "inflight_out", "inflight_in", "retained_messages",
    "transitions", "next_packet_id", "inflight_in_count", "inflight_out_count",
    "retained_messages_count", "clear_queues",
)
# amqtt methods the engine calls or reads without replacing them.
USED: dict[type, tuple[str, ...]] = {
    Broker: ("_topic_filtering", "_delete_session", "_cleanup_session"),
}

# amqtt instance attributes the engine reads (class -> names assigned in its `__init__`): the plugin manager's
# loaded auth and topic plugins (asked directly, without a task per plugin and CONNECT) and its event callbacks
# (an event no plugin listens to is not fired: `RoutingMixin._plugin_hooks`).
ATTRIBUTES: dict[type, tuple[str, ...]] = {
    PluginManager: ("_auth_plugins", "_topic_plugins", "_event_plugin_callbacks"),
}
# amqtt's broker events (`on_broker_*` of a plugin in `mqtt.plugins`) and where the engine fires them, for MQTT 3.1.1
# and 5 alike; each only when a loaded plugin listens (`RoutingMixin._plugin_hooks`), so the hot path pays nothing
# otherwise. PACKET_RECEIVED / PACKET_SENT (amqtt's per-packet events) do not fire: amqtt decodes no packet.
EVENTS: dict[str, str] = {
    "client_connected": "handle_connect (both versions)",
    "client_disconnected": "handle_connect (both versions)",
    "client_subscribed": "handle_subscribe.subscribe",
    "client_unsubscribed": "handle_subscribe.unsubscribe",
    "message_received": "fast_path.message_received_event (QoS 0/1 at PUBLISH, QoS 2 at PUBREL; both versions)",
    "message_broadcast": "fast_path.message_broadcast_event (after the publish ACL allowed it; both versions)",
    "retained_message": "routing.retain_now",
}


class AmqttMismatch(RuntimeError):
    """The installed amqtt is not the release the engine's overrides were written against."""


def check(installed: str | None = None) -> None:
    """Raise `AmqttMismatch` naming what differs; `installed` defaults to the installed distribution."""
    if installed is None:
        try:
            installed = version("amqtt")
        except PackageNotFoundError:
            installed = "not installed"
    if installed != AMQTT_VERSION:
        raise AmqttMismatch(
            f"amqtt {installed} is installed, but broker.mqtt overrides amqtt {AMQTT_VERSION}'s internals "
            f"(see broker/mqtt/amqtt_compat.py): install amqtt=={AMQTT_VERSION}")
    missing = [f"{cls.__name__}.{name}" for table in (OVERRIDDEN, USED)
               for cls, names in table.items() for name in names if not hasattr(cls, name)]
    missing += [f"{cls.__name__}().{name}" for cls, names in ATTRIBUTES.items()
                for name in names if f"self.{name}" not in _init_source(cls)]
    if missing:
        raise AmqttMismatch(f"amqtt {installed} lacks what broker.mqtt overrides or uses: {', '.join(missing)}")


def _init_source(cls: type) -> str:
    try:
        return inspect.getsource(cls.__init__)  # type: ignore[misc]
    except (OSError, TypeError):
        return ""


_installed = False


def install() -> None:
    """Check amqtt (idempotent); nothing in amqtt is patched."""
    global _installed
    check()
    _installed = True


def require_installed() -> None:
    """Refuse to build the engine before `install()` checked the amqtt it overrides."""
    if not _installed:
        raise RuntimeError("broker.mqtt.amqtt_compat.install() must run before an IntercomBroker is built")
