"""The route table: every path of the seed API (current and older) in one place."""

from aiohttp import web

from http_api import (
    admin_views,
    audit_views,
    call_views,
    console_views,
    door_views,
    history_views,
    metrics_views,
    misc_views,
    openapi,
    ops_views,
    resident_views,
    site_views,
    snapshot_views,
)

__all__ = ["setup_routes"]


def setup_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/healthz", misc_views.healthz)
    # calls (seed 000, plus 001's older shapes and paths)
    r.add_post("/api/mqtt/call", call_views.call)
    r.add_post("/api/rtc/call", call_views.rtc_call)
    r.add_post("/api/trtc/call", call_views.rtc_call)
    r.add_post("/api/mqtt/controller/device", call_views.control_device)
    r.add_post("/api/mqtt/controller/resident", call_views.control_resident)
    r.add_get("/api/mqtt/session", call_views.session)
    r.add_post("/api/mqtt/end-session", call_views.end_session)
    r.add_get("/api/calls", history_views.history)
    r.add_get("/api/calls.csv", history_views.history_csv)
    r.add_get("/api/calls/active", call_views.active_calls)
    # status, system messages, TRTC
    r.add_post("/api/mqtt/device/status", misc_views.device_status)
    r.add_get("/api/devices/{device_id}/status", misc_views.get_device_status)
    r.add_post("/api/mqtt/system/message", misc_views.system_message)
    r.add_post("/api/trtc/usersig", misc_views.usersig)
    r.add_post("/api/rtc/token", misc_views.rtc_token)
    # operations: metrics, audit log, console sign-in (docs/operations.md); before /api/admin/{kind}
    r.add_get("/metrics", metrics_views.metrics)
    r.add_get("/api/admin/audit", audit_views.audit)
    r.add_post("/api/console/signin", audit_views.console_signin)
    # the site this instance serves, for the integrator view (docs/scale-out.md); before /api/admin/{kind}
    r.add_get("/api/admin/site", site_views.site_info)
    # directory administration
    r.add_post("/api/admin/{kind}", admin_views.create)
    r.add_get("/api/admin/{kind}", admin_views.list_all)
    r.add_get("/api/admin/{kind}/{ident}", admin_views.get)
    r.add_delete("/api/admin/{kind}/{ident}", admin_views.delete)
    r.add_post("/api/admin/{kind}/{ident}/token", admin_views.new_token)
    r.add_patch("/api/admin/{kind}/{ident}", admin_views.update)
    # site operations for the admin CLI (docs/operations.md "Provisioning a site")
    r.add_post("/api/admin/residents/{resident_id}/tokens", ops_views.issue_named_token)
    r.add_get("/api/admin/residents/{resident_id}/tokens", ops_views.list_named_tokens)
    r.add_delete("/api/admin/residents/{resident_id}/tokens/{name}", ops_views.revoke_named_token)
    r.add_post("/api/admin/clients/{client_id}/unban", ops_views.unban)
    r.add_get("/api/devices/{device_id}/status/history", ops_views.device_health)
    # the web console and the API description (docs in README "Web console")
    r.add_get("/", console_views.index)
    r.add_get("/console/{name:.+}", console_views.static_file)
    r.add_get("/api/console/config", console_views.config)
    r.add_get("/api/openapi.json", openapi.openapi_json)
    # door unlock, lobby panels, visitor snapshots
    r.add_post("/api/doors/unlock", door_views.unlock)
    r.add_get("/api/doors/events", door_views.events)
    r.add_post("/api/calls/{call_id}/snapshot", snapshot_views.upload)
    r.add_get("/api/calls/{call_id}/snapshot", snapshot_views.fetch)
    # per-resident history and missed calls, do-not-disturb, no-answer forwarding
    r.add_get("/api/residents/{resident_id}/calls", resident_views.resident_calls)
    r.add_post("/api/residents/{resident_id}/calls/seen", resident_views.calls_seen)
    r.add_get("/api/residents/{resident_id}/calls/active", resident_views.active_calls)
    r.add_get("/api/residents/{resident_id}/dnd", resident_views.get_resident_dnd)
    r.add_put("/api/residents/{resident_id}/dnd", resident_views.put_resident_dnd)
    r.add_get("/api/households/{household_number}/dnd", resident_views.get_household_dnd)
    r.add_put("/api/households/{household_number}/dnd", resident_views.put_household_dnd)
    r.add_get("/api/households/{household_number}/forwarding", resident_views.get_forwarding)
    r.add_put("/api/households/{household_number}/forwarding", resident_views.put_forwarding)
