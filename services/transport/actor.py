"""The transport actor shell (the libp2p host lands here)."""

from __future__ import annotations

from p2pm.common.actor import Actor


class Transport(Actor):
    name = "transport"
