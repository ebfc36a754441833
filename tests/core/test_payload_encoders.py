"""The server's fast encoders give byte for byte what the payload models give."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.core import topics
from broker.core.topics import CALL_SERVICE_FILTERS
from broker.core.wire.calls import ControlMessage, IncomingCall, control_notice, incoming_call_encoder

ids = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/+#"), min_size=1, max_size=8)


@given(ids, ids, ids, st.floats(1, 3600), st.integers(0, 2**53), ids)
def test_incoming_call_bytes_are_the_models(call_id, device_id, household, ring, ts, user):
    """Every resident's incoming-call payload equals IncomingCall.model_dump_json()."""
    call_info = {"call_id": call_id, "action": "initiated", "timestamp": ts}
    rtc = {"sdk_app_id": 1400000001, "user_id": f"resident_{user}", "user_sig": "sig", "room_id": call_id,
           "room_id_type": "string"}
    encoded = incoming_call_encoder(call_id, device_id, household, call_info, ring, ts)(rtc)
    model = IncomingCall(call_id=call_id, device_id=device_id, household_number=household, call_info=call_info,
                         tencen_rtc=rtc, ring_timeout_s=ring, timestamp=ts)
    assert encoded == model.model_dump_json().encode()


@given(ids, st.sampled_from(["answered", "cancelled", "hangup"]), st.none() | ids, st.integers(0, 2**53),
       st.none() | ids)
def test_control_notice_bytes_are_the_models(call_id, action, reason, ts, resident):
    """A call notice equals ControlMessage.model_dump_json(exclude_none=True)."""
    model = ControlMessage(call_info={"call_id": call_id, "action": action, "reason": reason, "timestamp": ts},
                           resident_id=resident)
    assert control_notice(call_id, action, reason, ts, resident) == model.model_dump_json(exclude_none=True).encode()


def test_classify_knows_exactly_the_call_service_topics():
    """`topics.classify` recognises the topics the call service subscribes to and nothing else."""
    assert topics.classify(topics.request("1")) == ("request", "1")
    assert topics.classify(topics.device_control("门口")) == ("device_control", "门口")
    assert topics.classify(topics.resident_control("2")) == ("resident_control", "2")
    assert topics.classify(topics.device_status("1")) == ("device_status", "1")
    assert topics.classify(topics.resident_commands("2")) == ("resident_commands", "2")
    assert topics.classify(topics.device_commands_ack("1")) == ("device_commands_ack", "1")
    for other in (topics.incoming("2"), topics.system("notice"), "calls/request/1/x", topics.device_commands("1")):
        assert topics.classify(other) is None
    assert {topics.classify(f.replace("+", "x"))[0] for f in CALL_SERVICE_FILTERS} == {
        "request", "device_control", "resident_control", "device_status", "resident_commands", "device_commands_ack"}
