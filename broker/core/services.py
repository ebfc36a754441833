"""The services both adapters (MQTT plugins, REST views) call; built once per server."""

from __future__ import annotations

from dataclasses import dataclass

from broker.config import Settings
from broker.core.calls import CallService
from broker.core.directory import Directory
from broker.core.status import StatusService
from broker.core.store import Store
from broker.core.trtc import Trtc

__all__ = ["Services"]


@dataclass
class Services:
    settings: Settings
    store: Store
    directory: Directory
    trtc: Trtc
    calls: CallService
    status: StatusService
