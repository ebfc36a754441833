"""An integrator's amqtt topic plugin whose verdict awaits (loaded through `mqtt.plugins`): it allows everything,
one loop iteration later, so every PUBLISH and SUBSCRIBE takes the connection's awaiting path."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from amqtt.plugins.base import BaseTopicPlugin


class SlowAllow(BaseTopicPlugin):
    async def topic_filtering(self, *, session: Any = None, topic: str | None = None, action: Any = None) -> bool:
        await asyncio.sleep(0)
        return True

    @dataclass
    class Config:
        label: str = "slow"
