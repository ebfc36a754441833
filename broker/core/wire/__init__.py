"""The wire vocabulary by concept: one pydantic model per payload, shared by MQTT and REST.

`base` holds the two model bases every payload derives from; `calls` starting and acting on a call and what
the server publishes about it; `call_views` the typed responses the core returns about calls; `commands` the
resident and station commands of `users/{id}/commands` and `devices/{id}/commands/ack`; `doors` door
unlock; `directory` the site directory and per-party settings (DND, forwarding); `status` device status and
system messages; `queries` the REST query strings. Topics are spelled in `broker.core.topics`.
"""
