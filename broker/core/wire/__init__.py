"""The wire vocabulary by concept: one pydantic model per payload, shared by MQTT and REST.

`base` holds the two model bases every payload derives from; `commands` the resident and station
commands of `users/{id}/commands` and `devices/{id}/commands/ack`. The rest of the vocabulary is still in
`broker.core.payloads`.
"""
