"""Device status (retained on `devices/{id}/status`) and system messages (`system/{type}`)."""

from __future__ import annotations

import json
import time
from typing import Any

from broker.calls import Publisher, iso, now_ms
from broker.directory import Directory
from broker.errors import NotFound
from broker.payloads import DeviceStatus, SystemMessage, topics
from broker.store import Store

__all__ = ["StatusService"]


class StatusService:
    def __init__(self, store: Store, directory: Directory, publisher: Publisher) -> None:
        self.store = store
        self.directory = directory
        self.publisher = publisher

    def update(self, status: DeviceStatus, publish: bool = True) -> dict[str, Any]:
        """Store a device's status and publish it retained (unless the device itself just did)."""
        self.directory.device(status.device_id)
        row = {"device_id": status.device_id, "online": status.online, "battery": status.battery,
               "properties": status.properties, "updated_at": time.time()}
        self.store.put_status(row)
        view = _view(row)
        if publish:
            body = {"origin": "server", **view}
            self.publisher.publish(topics.device_status(status.device_id), json.dumps(body).encode(), qos=1,
                                   retain=True)
        return view

    def set_online(self, device_id: str, online: bool) -> None:
        """Connection opened or dropped: flip `online`, keep battery and properties."""
        if self.store.get("devices", device_id) is None:
            return
        current = self.store.get_status(device_id) or {"battery": None, "properties": {}}
        self.update(DeviceStatus(device_id=device_id, online=online, battery=current["battery"],
                                 properties=current["properties"]))

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
