"""The services both adapters (MQTT plugins, REST views) call; built once per server."""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.config import Settings
from broker.core.audit import Audit
from broker.core.calls import CallService
from broker.core.directory import Directory
from broker.core.doors import DoorService
from broker.core.snapshots import SnapshotService
from broker.core.status import StatusService
from broker.core.store import Store
from broker.core.trtc import Trtc
from broker.limiter import KeyedLimiter

__all__ = ["Services"]


@dataclass
class Services:
    settings: Settings
    store: Store
    directory: Directory
    trtc: Trtc
    calls: CallService
    status: StatusService
    # MQTT commands per party (plugins/command_router.py): limits.mqtt_commands_per_principal
    command_rate: KeyedLimiter = field(init=False)
    # Built from the ones above, so every assembly (server, bridge, benches) gets them unchanged.
    doors: DoorService = field(init=False)
    snapshots: SnapshotService = field(init=False)
    audit: Audit = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.command_rate = KeyedLimiter(s.limits.mqtt_commands_per_principal.per_s,
                                         s.limits.mqtt_commands_per_principal.burst)
        self.doors = DoorService(self.store, self.directory, self.calls, s.doors, self.calls.publisher)
        self.snapshots = SnapshotService(self.store, self.calls, s.snapshots, s.server.data_dir / "snapshots",
                                         self.calls.publisher)
        self.snapshots.prune()
        self.audit = Audit(self.store)
        self.doors.unlock_listeners.append(lambda opener, device, relay, outcome, _s: self.audit.record(
            opener.key, "door.unlock", f"devices/{device}", outcome, detail={"relay": relay}))
