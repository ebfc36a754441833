"""The topic grammar: every builder's topic parses back to its kind and id; inputs and filters are told apart."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.core import topics
from broker.core.topics import Kind

ids = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/+#"), min_size=1, max_size=12)
BUILDERS = {kind: getattr(topics, kind.value) for kind in Kind}


@given(st.sampled_from(list(Kind)), ids)
def test_every_builder_parses_back_to_its_kind_and_id(kind: Kind, ident: str) -> None:
    """`parse(builder(x))` is `(kind, x)` for every kind of topic the grammar has."""
    assert topics.parse(BUILDERS[kind](ident)) == (kind, ident)


@pytest.mark.parametrize(("kind", "role"), [
    (Kind.REQUEST, "device"), (Kind.DEVICE_CONTROL, "device"), (Kind.DEVICE_STATUS, "device"),
    (Kind.DEVICE_COMMANDS, "device"), (Kind.DEVICE_COMMANDS_ACK, "device"), (Kind.INCOMING, "resident"),
    (Kind.RESIDENT_CONTROL, "resident"), (Kind.MISSED, "resident"), (Kind.RESIDENT_COMMANDS, "resident"),
    (Kind.SYSTEM, None),
])
def test_a_topic_names_whose_it_is(kind: Kind, role: str | None) -> None:
    """A device's topics are a device's, a resident's a resident's, a system topic nobody's."""
    parsed = topics.parse(BUILDERS[kind]("7"))
    assert parsed is not None
    assert parsed.role == role


def test_classify_keeps_only_the_call_services_inputs() -> None:
    """What the server publishes (incoming, missed, commands, system) is not the call service's input."""
    inputs = {kind for kind in Kind if topics.classify(BUILDERS[kind]("7")) is not None}
    assert inputs == topics.INPUTS
    assert Kind.INCOMING not in inputs


@pytest.mark.parametrize("topic", [
    topics.device_all("7"), topics.resident_all("7"), "calls/request", "calls/request/7/x", "users/7",
    "devices/7/calls/control/x", "system/a/b", "", "users//commands/x",
])
def test_filters_and_foreign_topics_parse_to_nothing(topic: str) -> None:
    """Filters, deeper or shorter topics and foreign topics are not topics of the grammar."""
    assert topics.parse(topic) is None


def test_the_bridge_subscribes_to_every_input() -> None:
    """Bridge mode's filters are every input kind's topic with `+` for the party."""
    assert {topics.parse(f) for f in topics.CALL_SERVICE_FILTERS} == {(kind, "+") for kind in topics.INPUTS}
