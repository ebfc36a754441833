"""systemd's notify protocol (`Type=notify`): READY/STOPPING/STATUS and the watchdog, with no dependency.

The service manager passes `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace) and, with
`WatchdogSec=`, `WATCHDOG_USEC`; each message is one datagram of `KEY=VALUE` lines (sd_notify(3)).
Without `NOTIFY_SOCKET` (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

__all__ = ["Notifier"]

log = logging.getLogger("intercom")


class Notifier:
    """Sends sd_notify datagrams; `start_watchdog` pings at half the watchdog interval from the event loop,
    so a stuck loop stops the pings and systemd restarts the service."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *fields: str) -> None:
        """Send `fields` ("READY=1", "STATUS=...") as one datagram; a failure is logged, never raised."""
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self._address.replace("\0", "@"), exc)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        self.notify("RELOADING=1")

    def reloaded(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=shutting down")

    def start_watchdog(self) -> None:
        if self.enabled and self.watchdog_s is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._ping(self.watchdog_s / 2))

    def stop_watchdog(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _ping(self, every_s: float) -> None:
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(every_s)
