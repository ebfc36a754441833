"""The services both adapters (MQTT plugins, REST views) call; built once per server."""

from __future__ import annotations

from dataclasses import dataclass

from broker.calls import CallService
from broker.config import Settings
from broker.directory import Directory
from broker.status import StatusService
from broker.store import Store
from broker.trtc import Trtc

__all__ = ["Services"]


@dataclass
class Services:
    settings: Settings
    store: Store
    directory: Directory
    trtc: Trtc
    calls: CallService
    status: StatusService
