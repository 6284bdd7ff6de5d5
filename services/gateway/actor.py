"""The gateway actor shell. The user API lands here; for now it serves the bus contract
every actor has (ping, status, heartbeat)."""

from __future__ import annotations

from p2pm.common.actor import Actor


class Gateway(Actor):
    name = "gateway"
