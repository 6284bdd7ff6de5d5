"""The gossip actor shell. The GossipSub router and conversations land here; for now it
serves the bus contract every actor has (ping, status, heartbeat)."""

from __future__ import annotations

from typing import Any

from p2pm.common.actor import Actor


class Gossip(Actor):
    name = "gossip"

    def status(self) -> dict[str, Any]:
        return {"heartbeat_s": self.config.get("gossip", {}).get("heartbeat_s", 1.0)}
