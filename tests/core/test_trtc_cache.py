"""UserSig reuse for call credentials: same sig while more than half its validity is left, then a new one."""

from __future__ import annotations

import broker.core.trtc as trtc_mod
from broker.core.trtc import Trtc, verify_user_sig

KEY = "test-trtc-secret"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_call_credentials_reuse_a_sig_until_half_its_validity_is_gone():
    clock = Clock(1_000_000.0)
    t = Trtc(1400000001, KEY, expire_s=3600, clock=clock)
    first = t.call_credentials("resident_2", "room-a")
    assert first["room_id"] == "room-a"
    assert first["user_id"] == "resident_2"
    assert first["room_id_type"] == "string"
    info = verify_user_sig(first["user_sig"], KEY)
    assert info.identifier == "resident_2"
    assert info.expire_s == 3600
    # Another call (another room), 29 minutes later: the same sig, nothing generated.
    clock.now += 1799
    again = t.call_credentials("resident_2", "room-b")
    assert again["user_sig"] == first["user_sig"]
    assert again["room_id"] == "room-b"
    assert t.generated == 1
    # Past half of its validity: a new one is made (and cached in turn).
    clock.now += 2
    t.call_credentials("resident_2", "room-c")
    assert t.generated == 2
    t.call_credentials("resident_2", "room-d")
    assert t.generated == 2


def test_sigs_are_per_user_and_the_explicit_usersig_is_always_fresh():
    t = Trtc(1400000001, KEY, expire_s=3600, clock=Clock(5.0))
    a = t.call_credentials("resident_2", "r")["user_sig"]
    b = t.call_credentials("device_1", "r")["user_sig"]
    assert verify_user_sig(a, KEY).identifier == "resident_2"
    assert verify_user_sig(b, KEY).identifier == "device_1"
    assert t.generated == 2
    # POST /api/trtc/usersig promises the full expire_s: never from the cache.
    t.user_sig("resident_2")
    t.user_sig("resident_2")
    assert t.generated == 4
    t.call_credentials("resident_2", "r")
    assert t.generated == 4


def test_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(trtc_mod, "SIG_CACHE_MAX", 3)
    t = Trtc(1400000001, KEY, expire_s=3600, clock=Clock(5.0))
    for i in range(5):
        t.cached_user_sig(f"u{i}")
    assert len(t._sigs) == 3
    assert "u4" in t._sigs
    assert "u0" not in t._sigs
