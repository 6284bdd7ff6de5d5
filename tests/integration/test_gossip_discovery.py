"""Members of a room find each other through the DHT (real nodes, every actor a
process): each member is bootstrapped only to a node outside the room, and the
invite carol joins with names addresses that no longer work, because alice restarted
on a new port since she wrote it. Carol can reach alice only through the DHT (find_peer
by her peer id, or the room's provider records), and bob only through the provider
records or what alice tells her; she still connects to both and reads them."""

from __future__ import annotations

import time
import tomllib
from typing import Any

import pytest

from p2pm.common import config as configmod
from p2pm.common import errors
from tests.helpers.dht_node import free_ports
from tests.helpers import Node, wait_for

pytestmark = pytest.mark.slow

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
DEADLINE = 60.0


def gossip(node: Node, method: str, params: dict[str, Any] | None = None) -> Any:
    return node.call("gossip", method, params, timeout=5.0)


def addrs(node: Node) -> list[str]:
    return list(node.call("transport", "addrs")["addrs"])


def move_to_a_new_port(node: Node) -> None:
    cfg = tomllib.loads(node.home.config_file.read_text())
    cfg.setdefault("transport", {})["listen"] = [f"/ip4/127.0.0.1/tcp/{free_ports(1)[0]}"]
    node.home.config_file.write_text(configmod.dump(cfg))


def connected(node: Node) -> set[str]:
    try:
        return {p["peer_id"] for p in node.call("transport", "peers")}
    except errors.BusError:
        return set()


def cut_off(node: Node, peers: set[str], quiet_s: float = 3.0) -> bool:
    """Hang up on `peers`; true once none of them was connected for `quiet_s`."""
    since = time.monotonic()
    while time.monotonic() - since < quiet_s:
        back = peers & connected(node)
        for peer in back:
            try:
                node.call("transport", "hangup", {"peer_id": peer})
            except errors.BusError as exc:
                if exc.code != errors.NOT_FOUND:
                    raise
        if back:
            return False
        time.sleep(0.1)
    return True


def bodies(node: Node, conv: str) -> set[str]:
    try:
        return {m["body"] for m in gossip(node, "history", {"conversation": conv})}
    except errors.BusError:
        return set()


def test_member_with_a_stale_invite_finds_the_room_through_the_dht(node_factory) -> None:
    boot = node_factory(listen=LOOPBACK)
    via = [a for a in addrs(boot) if "/127.0.0.1/" in a][:1]
    assert via, addrs(boot)
    alice, bob, carol = node_factory.many(3, listen=LOOPBACK, bootstrap=via)

    room = gossip(alice, "room_create", {"name": "found"})
    stale_invite = room["invite"]
    old_addrs = set(addrs(alice))
    gossip(bob, "room_join", {"invite": stale_invite})
    wait_for(lambda: alice.peer_id in connected(bob), DEADLINE, "bob connected to alice")

    # Alice goes away and comes back on another port: the invite's addresses are dead.
    alice.p2pm("down", "--timeout", "10", check=True)
    move_to_a_new_port(alice)
    alice.p2pm("up", "--timeout", "60", check=True, timeout=90)
    assert not old_addrs & set(addrs(alice)), "alice came back on the same port"
    # In a network this small the DHT's own lookups (alice's, as she comes back)
    # connect everybody to everybody; in a real one carol would hold no connection to
    # the room's members. Cut hers until they stay cut.
    members = {alice.peer_id, bob.peer_id}
    wait_for(lambda: cut_off(carol, members), DEADLINE, "carol cut off the members")

    assert gossip(carol, "room_join", {"invite": stale_invite})["id"] == room["id"]
    wait_for(lambda: members <= connected(carol), DEADLINE,
             "carol connected to alice and bob")

    gossip(alice, "post", {"conversation": room["id"], "text": "from alice"})
    gossip(bob, "post", {"conversation": room["id"], "text": "from bob"})
    wait_for(lambda: {"from alice", "from bob"} <= bodies(carol, room["id"]), DEADLINE,
             "carol reads alice and bob")
    gossip(carol, "post", {"conversation": room["id"], "text": "from carol"})
    for node in (alice, bob):
        wait_for(lambda n=node: "from carol" in bodies(n, room["id"]), DEADLINE,
                 "carol's message at the others")
    listed = {c["id"]: set(c["members"]) for c in gossip(carol, "conversation_list")}
    assert members | {carol.peer_id} <= listed[room["id"]]
