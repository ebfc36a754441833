"""Tencent TRTC credentials: UserSig from tls-sig-api-v2, and a verifier used by the tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import zlib
from dataclasses import dataclass
from typing import Any

from TLSSigAPIv2 import TLSSigAPIv2

from broker.payloads import TencentRtc

__all__ = ["SigInfo", "Trtc", "verify_user_sig"]


class Trtc:
    def __init__(self, sdk_app_id: int, secret_key: str, expire_s: int) -> None:
        self.sdk_app_id = sdk_app_id
        self.expire_s = expire_s
        self._api = TLSSigAPIv2(sdk_app_id, secret_key)

    def user_sig(self, user_id: str) -> str:
        return str(self._api.gen_sig(user_id, self.expire_s))

    def credentials(self, user_id: str, room_id: str) -> TencentRtc:
        return TencentRtc(sdk_app_id=self.sdk_app_id, user_id=user_id, user_sig=self.user_sig(user_id), room_id=room_id)


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
