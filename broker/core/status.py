"""Device status (retained on `devices/{id}/status`) and system messages (`system/{type}`).

A status report is a patch: a field left out keeps its stored value, an explicit null clears it, and
`properties` merges by key (a null value removes that key). After every write, REST or MQTT, the
stored status is published retained, so the retained message always equals `GET /api/devices/{id}/status`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from broker.core import topics
from broker.core.calls import Publisher, iso, now_ms
from broker.core.directory import Directory
from broker.core.errors import BadRequest, NotFound
from broker.core.store import Store
from broker.core.wire.status import MAX_PROPERTIES_BYTES, DeviceStatus, SystemMessage

__all__ = ["StatusService"]


class StatusService:
    def __init__(self, store: Store, directory: Directory, publisher: Publisher) -> None:
        self.store = store
        self.directory = directory
        self.publisher = publisher

    def update(self, status: DeviceStatus) -> dict[str, Any]:
        """Apply a status report to the stored status, store it, and publish it retained."""
        self.directory.device(status.device_id)
        given = status.model_fields_set
        current = self.store.get_status(status.device_id) or {"online": True, "battery": None, "properties": {}}
        properties = dict(current["properties"])
        if "properties" in given:
            if status.properties is None:
                properties = {}
            else:
                for key, value in status.properties.items():
                    if value is None:
                        properties.pop(key, None)
                    else:
                        properties[key] = value
            if len(json.dumps(properties, ensure_ascii=False).encode()) > MAX_PROPERTIES_BYTES:
                raise BadRequest(f"properties: more than {MAX_PROPERTIES_BYTES} bytes once merged")
        row = {"device_id": status.device_id,
               "online": status.online if status.online is not None else current["online"],
               "battery": status.battery if "battery" in given else current["battery"],
               "properties": properties, "updated_at": time.time()}
        self.store.put_status(row)
        view = _view(row)
        self._publish(view)
        return view

    def set_online(self, device_id: str, online: bool) -> None:
        """Connection opened or dropped: flip `online`, keep battery and properties."""
        if self.store.get("devices", device_id) is None:
            return
        self.update(DeviceStatus(device_id=device_id, online=online))

    def restore_retained(self, device_id: str) -> None:
        """Make the retained message the stored status again (or clear it if there is none)."""
        row = self.store.get_status(device_id)
        if row is None:
            self.publisher.publish(topics.device_status(device_id), b"", qos=1, retain=True)
        else:
            self._publish(_view(row))

    def _publish(self, view: dict[str, Any]) -> None:
        body = {"origin": "server", **view}
        self.publisher.publish(topics.device_status(view["device_id"]),
                               json.dumps(body, ensure_ascii=False, allow_nan=False).encode(), qos=1, retain=True)

    def get(self, device_id: str) -> dict[str, Any]:
        self.directory.device(device_id)
        row = self.store.get_status(device_id)
        if row is None:
            raise NotFound(f"no status reported yet for device '{device_id}'")
        return _view(row)

    def system_message(self, msg: SystemMessage) -> dict[str, Any]:
        body = {"type": msg.type, "level": msg.level, "message": msg.message, "data": msg.data,
                "timestamp": msg.timestamp if msg.timestamp is not None else now_ms()}
        self.store.add_system_message(body)
        wire = {"origin": "server", **body}
        self.publisher.publish(topics.system(msg.type), json.dumps(wire, ensure_ascii=False).encode(), qos=1)
        return body


def _view(row: dict[str, Any]) -> dict[str, Any]:
    return {"device_id": row["device_id"], "online": bool(row["online"]), "battery": row["battery"],
            "properties": row["properties"], "updated_at": iso(row["updated_at"])}
