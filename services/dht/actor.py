"""The dht actor shell. The Kademlia protocol lands here; for now it serves the bus
contract every actor has (ping, status, heartbeat) and tracks the transport it needs."""

from __future__ import annotations

from typing import Any

from p2pm.common.actor import Actor, on_event


class Dht(Actor):
    name = "dht"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.transport_epoch: str | None = None

    @on_event("transport.sys.heartbeat")
    async def _transport_alive(self, topic: str, data: dict[str, Any]) -> None:
        self.transport_epoch = self.runtime._source_epoch.get("transport") if self.runtime else None

    def status(self) -> dict[str, Any]:
        return {"mode": self.config.get("dht", {}).get("mode", "auto"),
                "transport_seen": self.transport_epoch is not None}
