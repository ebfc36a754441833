"""The server as a subprocess in authenticated mode (admin token `ADMIN`) over a one-household site:
start, SIGTERM, restart on the same data, kill -9, RSS, REST as the admin (`tests/server_process.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.server_process import ServerProcess

ADMIN = "proc-admin-token-0123456789abcdef"
SITE = {"households": [{"household_number": "101", "residents": [{"resident_id": "2"}, {"resident_id": "3"}],
                        "devices": [{"device_id": "1"}]}]}


class ProcServer(ServerProcess):
    """One server process over `data_dir`; `start()` again after `stop()` restarts it on the same data."""

    def __init__(self, tmp_path: Path, **sections: dict[str, Any]) -> None:
        super().__init__(tmp_path, {"site": SITE, **sections},
                         env={"INTERCOM_TRTC_SECRET_KEY": "proc-test-secret", "INTERCOM_ADMIN_TOKEN": ADMIN})

    def http(self, method: str, path: str, body: Any = None, timeout: float = 5.0,
             token: str | None = ADMIN) -> tuple[int, Any]:
        return super().http(method, path, body, timeout, token)

    def token(self, kind: str, ident: str) -> str:
        status, resp = self.http("POST", f"/api/admin/{kind}/{ident}/token")
        assert status == 200, resp
        return str(resp["data"]["token"])
