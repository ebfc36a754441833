"""Tencent TRTC credentials: UserSig from tls-sig-api-v2, and a verifier used by the tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from TLSSigAPIv2 import TLSSigAPIv2

from broker.core.errors import BadRequest
from broker.core.wire.call_views import RtcCredentials
from broker.core.wire.calls import TencentRtc

__all__ = ["SigInfo", "Trtc", "party_user_id", "trtc_room_id", "trtc_user_id", "trtc_user_ids",
           "verify_user_sig"]

# TRTC's rules: a userId is at most 32 bytes of [a-zA-Z0-9_-]; a string roomId at most 64 bytes of these.
USER_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
ROOM_ID = re.compile(r"[A-Za-z0-9 !#$%&()+\-:;<=.>?@\[\]^_{}|~,]{1,64}")
_MAPPED_PREFIXES = ("device", "resident")


def trtc_user_id(name: str) -> str:
    """The TRTC userId for `name`: `name` itself when TRTC takes it, else `{device|resident|user}-` + the
    lowercase base32 SHA-256 of `name`, cut to 32 bytes. Deterministic (every client and the server derive
    the same one); a mapped id never equals a kept party id (`device_…`/`resident_…` use `_`, mapped ones
    `-`), and two mapped ids collide only with a >= 115-bit hash collision."""
    if USER_ID.fullmatch(name):
        return name
    role, sep, _ = name.partition("_")
    prefix = role if sep and role in _MAPPED_PREFIXES else "user"
    digest = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode().rstrip("=").lower()
    return f"{prefix}-{digest[:31 - len(prefix)]}"


def party_user_id(role: str, party_id: str) -> str:
    """A party's TRTC userId: `device_1`, `resident_2`, or its mapped form (`trtc_user_id`)."""
    return trtc_user_id(f"{role}_{party_id}")


def trtc_user_ids(device_id: str, resident_ids: Sequence[str]) -> dict[str, Any]:
    """Each party's TRTC userId in a call (`device_1`, or the mapped form of an id TRTC would refuse), so an app
    can tell which TRTC user in the room is its peer."""
    return {"device": party_user_id("device", device_id),
            "residents": {rid: party_user_id("resident", rid) for rid in resident_ids}}


def trtc_room_id(room: str, field: str = "channel_id") -> str:
    """`room` if TRTC takes it as a string roomId, else BadRequest naming `field`."""
    if ROOM_ID.fullmatch(room) and len(room) <= 64:
        return room
    raise BadRequest(f"{field}: a TRTC room id is at most 64 letters, digits, spaces and "
                     f"!#$%&()+-:;<=.>?@[]^_{{}}|~, characters, got {room!r}")


SIG_CACHE_MAX = 20_000


class Trtc:
    """UserSigs for TRTC; call credentials reuse a cached sig per user while at least half its validity is left.

    A UserSig signs (sdk_app_id, user id, issue time, expire) only, not the room, and stays valid for
    `expire_s` from its issue time, so the same sig serves every call a party makes meanwhile. Making
    one (HMAC, JSON, zlib, base64) was ~25 % of a call setup's CPU with three per call.
    """

    def __init__(self, sdk_app_id: int, secret_key: str, expire_s: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.sdk_app_id = sdk_app_id
        self.expire_s = expire_s
        self.clock = clock
        self.generated = 0  # sigs made (cache misses and fresh requests)
        self._api = TLSSigAPIv2(sdk_app_id, secret_key)
        self._sigs: dict[str, tuple[str, float]] = {}  # user id -> (sig, reuse until)

    def user_sig(self, user_id: str) -> str:
        """A fresh sig with the full `expire_s` ahead (what `POST /api/trtc/usersig` promises); `user_id` is a
        TRTC userId already (`trtc_user_id`)."""
        self.generated += 1
        return str(self._api.gen_sig(user_id, self.expire_s))

    def cached_user_sig(self, user_id: str) -> str:
        """A sig with at least `expire_s / 2` of validity left: reused from the cache, or made now."""
        now = self.clock()
        hit = self._sigs.get(user_id)
        if hit is not None and now < hit[1]:
            return hit[0]
        # The library stamps int(time.time()); counting from the floor keeps the margin conservative.
        sig = self.user_sig(user_id)
        if hit is None and len(self._sigs) >= SIG_CACHE_MAX:
            del self._sigs[next(iter(self._sigs))]  # bounded: drop the oldest entry
        self._sigs[user_id] = (sig, int(now) + self.expire_s / 2)
        return sig

    def credentials(self, user_id: str, room_id: str) -> TencentRtc:
        """Credentials for any `user_id` (mapped by `trtc_user_id`) in room `room_id` (BadRequest if TRTC refuses)."""
        user = trtc_user_id(user_id)
        return TencentRtc(sdk_app_id=self.sdk_app_id, user_id=user, user_sig=self.user_sig(user),
                          room_id=trtc_room_id(room_id))

    def call_credentials(self, user_id: str, room_id: str) -> RtcCredentials:
        """`tencen_rtc` of a party in a call (built without validation: every field is ours), with a cached sig.
        `user_id` is `device_{id}` / `resident_{id}`, mapped by `trtc_user_id` when TRTC would refuse it; the
        room is the call id (`call-YYYYMMDD-<hex>`, a valid TRTC room id)."""
        user = trtc_user_id(user_id)
        return {"sdk_app_id": self.sdk_app_id, "user_id": user, "user_sig": self.cached_user_sig(user),
                "room_id": room_id, "room_id_type": "string"}


@dataclass(frozen=True)
class SigInfo:
    identifier: str
    sdk_app_id: int
    issued_at: int
    expire_s: int


def verify_user_sig(sig: str, secret_key: str) -> SigInfo:
    """Decode a UserSig and recompute its HMAC; raises ValueError when it does not verify."""
    try:
        raw = base64.b64decode(sig.replace("*", "+").replace("-", "/").replace("_", "="))
        doc: dict[str, Any] = json.loads(zlib.decompress(raw))
    except (ValueError, zlib.error) as exc:
        raise ValueError(f"not a UserSig: {exc}") from exc
    content = (
        f"TLS.identifier:{doc['TLS.identifier']}\n"
        f"TLS.sdkappid:{doc['TLS.sdkappid']}\n"
        f"TLS.time:{doc['TLS.time']}\n"
        f"TLS.expire:{doc['TLS.expire']}\n"
    )
    if "TLS.userbuf" in doc:
        content += f"TLS.userbuf:{doc['TLS.userbuf']}\n"
    expected = base64.b64encode(hmac.new(secret_key.encode(), content.encode(), hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(expected, doc["TLS.sig"]):
        raise ValueError("UserSig HMAC does not match this key")
    return SigInfo(doc["TLS.identifier"], int(doc["TLS.sdkappid"]), int(doc["TLS.time"]), int(doc["TLS.expire"]))
