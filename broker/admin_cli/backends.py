"""Where `intercom-broker admin` acts: the data dir of a stopped box (`Local`), or a running box's REST API
(`Remote`). Both offer the same few operations, so every command is written once."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol
from urllib.parse import quote

from broker.config import Settings
from broker.core.directory import Directory
from broker.core.errors import DomainError
from broker.core.store import Store
from broker.data_lock import DataDirInUse

__all__ = ["AdminError", "Backend", "Local", "Remote"]

_RETRIES = 30
_THROUGH = "--url http://HOST:PORT with the admin token"


class AdminError(Exception):
    """An operation was refused; the message is one line saying why."""


class Backend(Protocol):
    def list(self, kind: str) -> list[dict[str, Any]]: ...
    def create(self, kind: str, row: dict[str, Any]) -> None: ...
    def update(self, kind: str, ident: str, changes: dict[str, Any]) -> None: ...
    def issue_token(self, kind: str, ident: str, name: str | None) -> str: ...
    def revoke_token(self, kind: str, ident: str, name: str | None) -> None: ...
    def unban(self, client_id: str) -> bool: ...
    def close(self) -> None: ...


class Local:
    """The directory in `<data_dir>/intercom.db`, or in the PostgreSQL store of `store.url`, opened directly;
    refused while a box runs on it (it serves the directory from memory and would not see the changes)."""

    def __init__(self, settings: Settings) -> None:
        if settings.store.url is not None:
            self.store = _postgres(settings.store.url)
        else:
            try:
                self.store = Store(settings.server.data_dir / "intercom.db", settings.store.busy_timeout_ms)
            except DataDirInUse as exc:
                raise AdminError(f"{exc}; or act through it: {_THROUGH}") from exc
        self.directory = Directory(self.store, settings.auth.pbkdf2_iterations, None)

    def list(self, kind: str) -> list[dict[str, Any]]:
        return self.directory.list_all(kind)

    def create(self, kind: str, row: dict[str, Any]) -> None:
        with _domain():
            d = self.directory
            if kind == "households":
                d.add_household(row["household_number"], row.get("name"))
            elif kind == "residents":
                d.add_member(kind, row["resident_id"], row["household_number"], row.get("name"))
            else:
                # the kind as the file gives it (the site models' default when left out), never guessed here
                d.check_device_kind(row["kind"], row.get("households"))
                d.add_member(kind, row["device_id"], row["household_number"], row.get("name"),
                             {"emergency": int(bool(row.get("emergency")))})
                d.set_device_kind(row["device_id"], row["kind"], row.get("households"))

    def update(self, kind: str, ident: str, changes: dict[str, Any]) -> None:
        with _domain():
            rest = {k: v for k, v in changes.items() if k not in ("kind", "households")}
            if rest:
                self.directory.update(kind, ident, rest)
            if {"kind", "households"} & changes.keys():
                row = self.directory.device(ident)
                self.directory.set_device_kind(ident, changes.get("kind", row["kind"]),
                                               changes.get("households", row["households"]))

    def issue_token(self, kind: str, ident: str, name: str | None) -> str:
        with _domain():
            if name is not None:
                return str(self.directory.issue_named_token(ident, name)["token"])
            return str(self.directory.reissue_token(kind, ident)["token"])

    def revoke_token(self, kind: str, ident: str, name: str | None) -> None:
        with _domain():
            if name is not None:
                self.directory.revoke_named_token(ident, name)
            else:
                self.directory.reissue_token(kind, ident)  # the new token is never shown: the old one is dead

    def unban(self, client_id: str) -> bool:
        raise AdminError("no box is running on this data dir: flapping bans live in a running box's memory "
                         "(use --url to reach it)")

    def close(self) -> None:
        self.store.close()


def _postgres(url: str) -> Store:
    """The PostgreSQL store, refused while an instance holds the site's lease (bridge mode: it is serving)."""
    try:
        from broker.scale.pg_ops import live_lease
        from broker.scale.pg_store import PgStore
    except ImportError as exc:
        raise AdminError(f"store.url needs psycopg 3 ({exc}): pip install 'intercom-broker[scale]'") from exc
    held = live_lease(url)  # StorageError: the database cannot be reached
    if held is not None:
        site, holder, left = held
        raise AdminError(f"an instance serves site {site or '(default)'!r} from this database (lease held by {holder} "
                         f"for {left:.0f} s more); act through it: {_THROUGH}")
    return PgStore(url)


@contextmanager
def _domain() -> Iterator[None]:
    """A refusal by the directory (unknown household, duplicate id...) becomes the command's one-line error."""
    try:
        yield
    except DomainError as exc:
        raise AdminError(exc.detail) from exc


class Remote:
    """A running box's REST API, as its admin (one request at a time: the admin is not rate-limited)."""

    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        for _ in range(_RETRIES):
            try:
                return self._once(method, path, body)
            except urllib.error.HTTPError as exc:
                if exc.code != 429:  # 429: the box's per-address limit: wait as told, then again
                    raise self._refused(method, path, exc) from exc
                time.sleep(min(float(exc.headers.get("Retry-After") or 1), 10.0))
        raise AdminError(f"{method} {path}: still rate-limited after {_RETRIES} tries")

    def _once(self, method: str, path: str, body: Any) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())["data"]
        except urllib.error.HTTPError:
            raise  # an HTTPError is an OSError too: the caller reads its status
        except (urllib.error.URLError, OSError) as exc:
            raise AdminError(f"cannot reach {self.url}: {exc}") from exc

    @staticmethod
    def _refused(method: str, path: str, exc: urllib.error.HTTPError) -> AdminError:
        try:
            message = json.loads(exc.read())["message"]
        except (ValueError, KeyError):
            message = exc.reason
        return AdminError(f"{method} {path}: {exc.code} {message}")

    def list(self, kind: str) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/api/admin/{kind}"))

    def create(self, kind: str, row: dict[str, Any]) -> None:
        self._call("POST", f"/api/admin/{kind}", {k: v for k, v in row.items() if v is not None})

    def update(self, kind: str, ident: str, changes: dict[str, Any]) -> None:
        self._call("PATCH", f"/api/admin/{kind}/{quote(ident, safe='')}", changes)

    def issue_token(self, kind: str, ident: str, name: str | None) -> str:
        if name is not None:
            path = f"/api/admin/residents/{quote(ident, safe='')}/tokens"
            return str(self._call("POST", path, {"name": name})["token"])
        return str(self._call("POST", f"/api/admin/{kind}/{quote(ident, safe='')}/token")["token"])

    def revoke_token(self, kind: str, ident: str, name: str | None) -> None:
        if name is not None:
            self._call("DELETE", f"/api/admin/residents/{quote(ident, safe='')}/tokens/{quote(name, safe='')}")
        else:
            self._call("POST", f"/api/admin/{kind}/{quote(ident, safe='')}/token")

    def unban(self, client_id: str) -> bool:
        return bool(self._call("POST", f"/api/admin/clients/{quote(client_id, safe='')}/unban")["was_banned"])

    def close(self) -> None:
        return None
