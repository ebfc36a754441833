"""Raw MQTT 3.1.1 bytes and a raw socket client for the security tests; no mocks, 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Any

from tests.conftest import ADMIN, Harness

CONNACK, SUBACK, PINGRESP = 0x20, 0x90, 0xD0


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def connect(client_id: str | bytes = "raw", username: str | None = None, password: str | None = None,
            keepalive: int = 60, clean: bool = True, will: tuple[str | bytes, bytes, int, bool] | None = None,
            flags: int | None = None, extra: bytes = b"") -> bytes:
    f = (0x02 if clean else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    payload = s(client_id)
    if will is not None:
        topic, message, qos, retain = will
        f |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += s(topic) + s(message)
    if username is not None:
        payload += s(username)
    if password is not None:
        payload += s(password)
    body = s("MQTT") + bytes([4, f if flags is None else flags]) + struct.pack("!H", keepalive) + payload + extra
    return packet(0x10, body)


def publish(topic: str | bytes, payload: bytes = b"x", qos: int = 0, packet_id: int | None = 1,
            flags: int | None = None) -> bytes:
    body = s(topic) + (struct.pack("!H", packet_id) if qos and packet_id is not None else b"") + payload
    return packet(0x30 | (qos << 1) if flags is None else 0x30 | flags, body)


def subscribe(filters: list[tuple[str | bytes, int]], packet_id: int = 1, first: int = 0x82) -> bytes:
    return packet(first, struct.pack("!H", packet_id) + b"".join(s(f) + bytes([q]) for f, q in filters))


PINGREQ = b"\xc0\x00"


class Raw:
    """One raw TCP connection to the broker."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_packet(self, timeout: float = 3.0) -> tuple[int, bytes] | None:
        """The next packet as (first byte, body), or None once the broker closed the connection."""
        try:
            async with asyncio.timeout(timeout):
                first = await self.reader.readexactly(1)
                length, mult = 0, 1
                while True:
                    b = (await self.reader.readexactly(1))[0]
                    length += (b & 0x7F) * mult
                    mult *= 128
                    if not b & 0x80:
                        break
                return first[0], await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def closed(self, timeout: float = 3.0) -> bool:
        """True if the broker closes the connection within `timeout` (packets before that are skipped)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(4096):
                    pass
            return True
        except ConnectionError:
            return True
        except TimeoutError:
            return False

    async def connack(self, connect_bytes: bytes, timeout: float = 3.0) -> int | None:
        """Send CONNECT; the CONNACK return code, or None if the broker closed without one."""
        await self.send(connect_bytes)
        got = await self.read_packet(timeout)
        if got is None or got[0] != CONNACK:
            return None
        return got[1][1]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def token(h: Harness, kind: str, ident: str) -> str:
    status, resp = await h.post(f"/api/admin/{kind}/{ident}/token", None, ADMIN)
    assert status == 200, resp
    return str(resp["data"]["token"])


async def secure_harness(make_harness: Any, **sections: dict[str, Any]) -> tuple[Harness, dict[str, str]]:
    """An authenticated-mode server on 127.0.0.1 and tokens for residents 2, 3, 4 and devices 1, 5."""
    auth = {"allow_anonymous_on_loopback": False, **sections.pop("auth", {})}
    h = await make_harness(auth=auth, **sections)
    tokens = {f"resident-{i}": await token(h, "residents", i) for i in ("2", "3", "4")}
    tokens |= {f"device-{i}": await token(h, "devices", i) for i in ("1", "5")}
    return h, tokens


def login(tokens: dict[str, str], who: str, client_id: str | None = None) -> dict[str, Any]:
    """aiomqtt keyword arguments for principal `who` ('resident-2'), bound client id by default."""
    return {"client_id": client_id or who, "username": who.split("-", 1)[1], "password": tokens[who]}


def granted(result: Any) -> list[int]:
    """aiomqtt's SUBACK reason codes as ints (128 = refused)."""
    return [int(getattr(c, "value", c)) for c in result]
