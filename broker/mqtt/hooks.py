"""Every extension point the MQTT engine offers plugins, in one file, and the session keys they share.

A plugin is an ordinary amqtt plugin (loaded from the broker config, receiving amqtt's public events);
the engine additionally looks for the Protocols below on each loaded plugin, once, after plugins load.
Each Protocol is `runtime_checkable`, so the engine finds them with `isinstance` and mypy checks the
signatures of the plugins that implement them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

from broker.mqtt.amqtt_compat import Action
from broker.mqtt.session import Session

__all__ = ["PRINCIPAL", "PROTOCOL", "REFUSAL", "REVOKED", "SESSION_EXPIRY", "SUB_OPTIONS", "AcknowledgesAfter",
           "AnswersRequests", "FiltersTopicsSync", "InterceptsPublish", "OwnsTopics", "ReplyTo", "TracksSessions"]

# Session attributes (`session.attributes[...]`) the engine and the plugins share.
PRINCIPAL = "intercom.principal"  # who the session authenticated as (broker.core.tokens.Principal), set by auth
REFUSAL = "intercom.refusal"  # the CONNACK return code to refuse a CONNECT with, set by auth before refusing
REVOKED = "intercom.revoked"  # set by the engine on a session whose principal lost its access (revoke)
# MQTT 5 sessions (handle_connect): set by the engine, read by the persistence plugin
PROTOCOL = "intercom.protocol"  # 5 on a session last connected with MQTT 5 (absent: 3.1.1)
SESSION_EXPIRY = "intercom.session_expiry"  # the session's Session Expiry Interval in seconds (MQTT 5)
SUB_OPTIONS = "intercom.sub_options"  # {filter: sub_options.SubOptions} of an MQTT 5 session


@runtime_checkable
class InterceptsPublish(Protocol):
    """Sees every accepted client PUBLISH synchronously, after the publish ACL and delivery.

    Combination: every implementing plugin is called, in load order; the message counts as consumed if any
    returns True.

    Runs inside the reader's call (no task per packet); it must not block. An exception is logged and
    does not affect delivery. Returns True when the plugin consumed the message (a service handled it): it
    then counts as a matching subscriber, so an MQTT 5 PUBACK says 0x00, not 0x10 No matching subscribers.
    """

    def intercept_publish(self, session: Session, topic: str, payload: bytes) -> bool | None: ...


@runtime_checkable
class OwnsTopics(Protocol):
    """An `InterceptsPublish` plugin that publishes some topics itself (a device's retained status): a client's
    PUBLISH or Will there is only shown to the interceptors, never delivered or retained as sent, so what
    subscribers see there always comes from the plugin. Called per publish: it must be cheap.

    Combination: a topic is owned if any implementing plugin says so."""

    def owns_topic(self, topic: str) -> bool: ...


class ReplyTo(NamedTuple):
    """An MQTT 5 request's Response Topic and Correlation Data (§4.10)."""

    topic: str
    correlation: bytes | None


@runtime_checkable
class AnswersRequests(Protocol):
    """An `InterceptsPublish` plugin that answers MQTT 5 requests: for a PUBLISH carrying a Response Topic
    this is called instead of `intercept_publish`, with where the requester wants the answer.

    Combination: as `InterceptsPublish` (each plugin gets the request through this or `intercept_publish`)."""

    def intercept_request(self, session: Session, topic: str, payload: bytes, reply: ReplyTo) -> bool | None: ...


@runtime_checkable
class AcknowledgesAfter(Protocol):
    """Holds back the PUBACK of a QoS 1 PUBLISH until the effect an interceptor staged is durable.

    `send` writes the PUBACK; the plugin calls it once its store committed (or at once).

    Combination: one plugin per broker may implement it (there is one durable store behind the engine); a
    second one is refused when the hooks are read, with an error naming both.
    """

    def acknowledge_after(self, send: Callable[[], None]) -> None: ...


@runtime_checkable
class FiltersTopicsSync(Protocol):
    """A topic plugin's ACL verdict without awaiting: False denies, True allows, None abstains.

    Combination: all must allow: any False denies, whatever the others say.

    A plugin whose RECEIVE verdict is always True (it decided at SUBSCRIBE) sets the class attribute
    `checks_receive = False`; deliveries then do not ask it, once per subscriber and message.

    When every topic plugin implements it, PUBLISH, SUBSCRIBE and RECEIVE checks stay synchronous;
    otherwise deliveries go through one ordered async lane that awaits amqtt's `topic_filtering`.
    """

    def topic_filtering_sync(self, session: Session | None, topic: str | None,
                             action: Action | None) -> bool | None: ...



@runtime_checkable
class TracksSessions(Protocol):
    """Told what happens to client sessions, synchronously, at the moment it happens: a session registered
    (CONNACK sent), ended (its connection is gone), subscribed or unsubscribed a filter, a retained message
    set or cleared (`message.data` empty). Every implementing plugin is called, in load order; nothing is
    asked back; an exception is logged and the others still run. Our plugins take these instead of amqtt's
    `on_broker_client_*` / `on_broker_retained_message` events, which cost a task per event and plugin; an
    integrator's amqtt plugin still gets those. A plugin subclasses this class and overrides what it needs.
    """

    def session_connected(self, session: Session) -> None: ...

    def session_disconnected(self, session: Session) -> None: ...

    def session_subscribed(self, session: Session, topic_filter: str, qos: int) -> None: ...

    def session_unsubscribed(self, session: Session, topic_filter: str) -> None: ...

    def retained_set(self, topic: str, message: Any) -> None: ...
