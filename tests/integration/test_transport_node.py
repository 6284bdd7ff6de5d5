"""The transport inside whole nodes under supervisord: killing dht or gossip does not
touch the node's connections; killing the transport brings them back by redial."""

from __future__ import annotations

import os
import signal

import pytest

from p2pm.common import errors
from tests.helpers import Node, wait_for

pytestmark = pytest.mark.slow

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def peers(node: Node) -> dict[str, dict]:
    try:
        return {p["peer_id"]: p for p in node.call("transport", "peers")}
    except errors.BusError:
        return {}


def restarted(node: Node, actor: str, old_pid: int) -> bool:
    pid = node.pids().get(actor, 0)
    return pid not in (0, old_pid) and node.healthy((actor,))


def test_kill9_of_dht_and_gossip_keeps_connections_kill9_of_transport_redials(
        node_factory) -> None:  # type: ignore[no-untyped-def]
    a, b = node_factory.many(2, listen=LOOPBACK)
    b_addr = b.call("transport", "addrs")["addrs"][0]
    a.call("transport", "dial", {"addr": b_addr}, timeout=15)
    since = wait_for(lambda: peers(a).get(b.peer_id), 10, "a connected to b")["connected_since"]
    for actor in ("dht", "gossip"):
        pid = a.pids()[actor]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: restarted(a, actor, pid), 30, f"{actor} restarted")
        # The same connection, never dropped: its start time has not moved.
        assert peers(a)[b.peer_id]["connected_since"] == since
        assert a.peer_id in peers(b)
    pid = a.pids()["transport"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: restarted(a, "transport", pid), 30, "transport restarted")
    wait_for(lambda: b.peer_id in peers(a), 20, "a redialled b")
    wait_for(lambda: a.peer_id in peers(b), 20, "b sees a again")
