"""Security-test helpers: an authenticated-mode server, tokens, logins; raw MQTT bytes are in `raw_mqtt`."""

from __future__ import annotations

from typing import Any

from tests.support.harness import Harness


async def secure_harness(make_harness: Any, **sections: dict[str, Any]) -> tuple[Harness, dict[str, str]]:
    """An authenticated-mode server on 127.0.0.1 and tokens for residents 2, 3, 4 and devices 1, 5."""
    auth = {"allow_anonymous_on_loopback": False, **sections.pop("auth", {})}
    h = await make_harness(auth=auth, **sections)
    tokens = {f"resident-{i}": await h.token("residents", i) for i in ("2", "3", "4")}
    tokens |= {f"device-{i}": await h.token("devices", i) for i in ("1", "5")}
    return h, tokens


def login(tokens: dict[str, str], who: str, client_id: str | None = None) -> dict[str, Any]:
    """aiomqtt keyword arguments for principal `who` ('resident-2'), bound client id by default."""
    return {"client_id": client_id or who, "username": who.split("-", 1)[1], "password": tokens[who]}


def granted(result: Any) -> list[int]:
    """aiomqtt's SUBACK reason codes as ints (128 = refused)."""
    return [int(getattr(c, "value", c)) for c in result]
