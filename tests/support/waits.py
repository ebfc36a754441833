"""Waiting on events, not on the clock: `until` something is true; `quiet` to show nothing more arrives."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

POLL_S = 0.02


async def until(pred: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, what: str = "") -> None:
    """Poll `pred` (sync or async) until it is true; AssertionError naming `what` after `timeout` seconds.

    For server state that has no event to wait on (a disconnect reaped, a row written, a timer fired)."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                got = pred()
                if inspect.isawaitable(got):
                    got = await got
                if got:
                    return
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        raise AssertionError(f"not true within {timeout} s: {what or getattr(pred, '__name__', pred)}") from None


async def quiet(seconds: float) -> None:
    """Let `seconds` pass so that a message that should NOT arrive would have: the caller asserts its absence."""
    await asyncio.sleep(seconds)
