"""broker.accept_loop survives EMFILE: a listener in a child process under `ulimit -n 64` is flooded past
its descriptors, then frees them; a new connection is served again within a second, on both loops."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from tests.support.process import ROOT

CHILD = """
import asyncio, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
from broker.accept_loop import serve

held = []

class Hold(asyncio.Protocol):
    def connection_made(self, transport):
        held.append(transport)
        transport.write(b"hi")

async def main():
    server = await serve("test listener", Hold, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # "release"
    for t in held:
        t.abort()
    held.clear()
    await loop.run_in_executor(None, sys.stdin.readline)  # "stop"
    server.close()

if sys.argv[1] == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


def _greeted(sock: socket.socket, timeout: float) -> bool | None:
    """True: got the greeting; False: closed without one; None: nothing yet."""
    sock.settimeout(timeout)
    try:
        return sock.recv(2) == b"hi"
    except TimeoutError:
        return None
    except OSError:
        return False


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_connections_waiting_while_out_of_descriptors_are_served_once_some_are_freed(loop: str) -> None:
    """100 connections against 64 descriptors: the ones that found no descriptor wait (none is dropped, the
    log gets a line, not a traceback per retry) and are served within 0.5 s once descriptors are freed."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, loop], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdin is not None
    assert child.stdout is not None
    assert child.stderr is not None
    flood: list[socket.socket] = []
    try:
        port = int(child.stdout.readline())
        for _ in range(100):
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        time.sleep(0.5)  # the child runs out of descriptors and pauses its accepts
        first = [_greeted(s, 0.02) for s in flood]
        assert 30 < first.count(True) < 64, first
        assert False not in first, first
        child.stdin.write("release\n")  # the child drops every connection it holds
        child.stdin.flush()
        released = time.monotonic()
        waiting = [s for s, got in zip(flood, first, strict=True) if got is None]
        late = [_greeted(s, max(0.01, released + 0.5 - time.monotonic())) for s in waiting]
        assert late == [True] * len(waiting), f"{late.count(False)} dropped, {late.count(None)} not served in 0.5 s"
        child.stdin.write("stop\n")
        child.stdin.flush()
        assert child.wait(5) == 0
        log = child.stderr.read().splitlines()
        assert len(log) <= 3, log
        assert "Traceback" not in "\n".join(log), log
    finally:
        for s in flood:
            s.close()
        if child.poll() is None:
            child.kill()
            child.wait()
