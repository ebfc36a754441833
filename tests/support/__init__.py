"""What every test shares: the harness, waits, MQTT inboxes, the raw packet builder, subprocess servers.

- `harness`: `Harness` (the in-process server plus `get/post/put/patch/delete/token/until`), `make_settings`, `ADMIN`.
- `waits`: `until(predicate)` for something to become true, `quiet(seconds)` for nothing more to arrive.
- `inbox`: `Inbox` (one MQTT client's messages, `wait_for`), `parties`, `is_ctl`.
- `raw_mqtt`: the one raw MQTT client (`Raw`, `SyncRaw`) and packet builder, MQTT 3.1.1 and 5.
- `security`: an authenticated-mode server with tokens, MQTT logins, SUBACK codes.
- `process`: `python -m broker` as a subprocess (`ServerProcess`, `ProcServer`).
- `doors`, `tls`: a door station on MQTT; a throwaway PKI.

Fixtures stay in `tests/conftest.py`; tests import helpers from here, never from another test module.
"""
