"""NAT traversal through emulated home routers (see lab.py for the topology).

Each test builds its own lab and runs real nodes in it: the public relay and one node
behind each router. Traffic between the home nodes is shown with the transport's ping
(a stream on whichever connection the swarm holds), and which connection carries it is
read from `transport.peers` (relayed or not, and the remote address).
"""

from __future__ import annotations

from typing import Any

from tests.helpers import needs_root, wait_for

from .lab import INET, Lab, LabNode

pytestmark = needs_root


def reachability(node: LabNode) -> str | None:
    state = node.status()["reachability"]
    return None if state == "unknown" else state


def circuit_addr(node: LabNode) -> str | None:
    addrs = [a for a in node.status()["addrs"] if "/p2p-circuit/" in a]
    return addrs[0] if addrs else None


def connection(a: LabNode, b: LabNode) -> dict[str, Any] | None:
    return a.peer(b.peer_id)


def direct_connection(a: LabNode, b: LabNode) -> dict[str, Any] | None:
    entry = connection(a, b)
    return entry if entry and not entry["relayed"] else None


def relay_dial(a: LabNode, b: LabNode) -> None:
    """`a` dials `b` at its relayed address and pings it through the relay."""
    addr = wait_for(lambda: circuit_addr(b), 30, f"{b.name} to advertise a relay address")
    a.call("dial", {"addr": addr}, timeout=20)
    a.call("ping", {"peer_id": b.peer_id}, timeout=15)


def chat(a: LabNode, b: LabNode, text: str) -> None:
    """A direct chat message from `a` to `b` (contacts from each other's invite, as a
    user does), waited for in `b`'s history."""
    invites = {n.name: n.call("invite", {"name": n.name}, actor="gateway")["invite"]
               for n in (a, b)}
    for me, other in ((a, b), (b, a)):
        me.call("contact_add", {"name": other.name, "invite": invites[other.name]},
                actor="gateway")
    b.call("history", {"conversation": a.name}, actor="gateway")
    sent = a.call("send", {"contact": b.name, "text": text}, actor="gateway")["id"]

    def arrived() -> bool:
        history = b.call("history", {"conversation": a.name, "limit": 50}, actor="gateway")
        return any(m["id"] == sent and m["body"] == text for m in history)

    wait_for(arrived, 60, f"{b.name} to receive {a.name}'s message")


def test_easy_nats_hole_punch_to_a_direct_connection(make_lab: Any) -> None:
    lab: Lab = make_lab(nat1="easy", nat2="easy")
    relay, h1, h2 = lab.start_standard()
    assert wait_for(lambda: reachability(relay), 30, "relay's verdict") == "public"
    assert wait_for(lambda: reachability(h1), 30, "h1's verdict") == "private"
    assert wait_for(lambda: reachability(h2), 30, "h2's verdict") == "private"

    relay_dial(h1, h2)
    try:
        direct = wait_for(lambda: direct_connection(h1, h2), 30, "DCUtR's direct connection")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nh1: {lab.log_lines('h1', 'dcutr', 'relay.')}\n"
                             f"h2: {lab.log_lines('h2', 'dcutr', 'relay.')}") from None
    # h2's router maps h2's listening port to the same port on its WAN address.
    assert direct["remote_addr"] == f"/ip4/{INET}.12/tcp/4001"
    assert h2.status()["nat"]["dcutr"]["upgraded"] == 1
    # The relayed connection is closed once the direct one stands...
    wait_for(lambda: relay.status()["nat"]["relay_service"]["circuits"] == 0, 15,
             "the relay circuit to close")
    # ...and traffic goes over the direct one both ways.
    assert h1.call("ping", {"peer_id": h2.peer_id, "count": 3})["rtt_ms"] > 0
    assert h2.call("ping", {"peer_id": h1.peer_id, "count": 3})["rtt_ms"] > 0
    assert direct_connection(h1, h2) is not None
    assert direct_connection(h2, h1)["remote_addr"] == f"/ip4/{INET}.11/tcp/4001"
    # A direct chat message travels over the direct connection: the relay carries
    # nothing more, and the connection is still the direct one.
    relayed_before = relay.status()["nat"]["relay_service"]["bytes_relayed"]
    chat(h1, h2, "hello through the hole")
    assert relay.status()["nat"]["relay_service"]["bytes_relayed"] == relayed_before
    assert direct_connection(h1, h2)["remote_addr"] == f"/ip4/{INET}.12/tcp/4001"


def test_symmetric_nat_fails_the_punch_and_keeps_the_relay(make_lab: Any) -> None:
    lab: Lab = make_lab(nat1="symmetric", nat2="easy")
    relay, h1, h2 = lab.start_standard()
    assert wait_for(lambda: reachability(h1), 30, "h1's verdict") == "private"

    relay_dial(h1, h2)
    wait_for(lambda: h2.status()["nat"]["dcutr"]["failed"] >= 1, 60,
             "the hole punch to give up")
    assert h2.status()["nat"]["dcutr"]["attempts"] == 3  # the spec's three tries
    entry = connection(h1, h2)
    assert entry is not None and entry["relayed"]
    # Messages still travel, through the relay, in both directions.
    assert h1.call("ping", {"peer_id": h2.peer_id, "count": 3})["rtt_ms"] > 0
    assert h2.call("ping", {"peer_id": h1.peer_id, "count": 3})["rtt_ms"] > 0
    assert relay.status()["nat"]["relay_service"]["circuits"] == 1
    relayed_before = relay.status()["nat"]["relay_service"]["bytes_relayed"]
    chat(h1, h2, "hello through the relay")
    assert relay.status()["nat"]["relay_service"]["bytes_relayed"] > relayed_before


def test_port_forward_makes_autonat_say_public(make_lab: Any) -> None:
    lab: Lab = make_lab(nat1="easy", nat2="easy", forward1=True)
    relay, h1, h2 = lab.start_standard()
    assert wait_for(lambda: reachability(h1), 30, "h1's verdict") == "public"
    assert wait_for(lambda: reachability(h2), 30, "h2's verdict") == "private"
    assert "reachability public" in lab.p2pm("h1", h1.node.home, "status").stdout
    status = h1.status()
    assert status["nat"]["autonat"]["confirmed_addrs"] == [f"/ip4/{INET}.11/tcp/4001"]
    # A public node needs no relay, and advertises the address the dial-back reached.
    assert not status["nat"]["relay_client"]["reservations"]
    wait_for(lambda: any(a.startswith(f"/ip4/{INET}.11/tcp/4001/") for a in h1.status()["addrs"]),
             15, "h1 to advertise its forwarded address")
    # h2 reaches h1 directly at the forwarded port, while h1's own actors (dht, gossip)
    # dial h2 back at the same time; a chat then crosses that direct connection.
    h2.call("dial", {"addr": f"/ip4/{INET}.11/tcp/4001/p2p/{h1.peer_id}"}, timeout=20)
    assert direct_connection(h2, h1) is not None
    chat(h2, h1, "hello through the port forward")
    assert direct_connection(h1, h2) is not None


def test_relay_restart_brings_reservations_back(make_lab: Any) -> None:
    lab: Lab = make_lab(nat1="easy", nat2="easy")
    # No hole punching here, so that the messages must cross the relay.
    relay, h1, h2 = lab.start_standard(holepunch=False)
    relay_dial(h1, h2)
    assert connection(h1, h2)["relayed"]

    lab.stop_node("relay")
    wait_for(lambda: not h2.status()["nat"]["relay_client"]["reservations"], 30,
             "h2 to notice its reservation is gone")
    wait_for(lambda: connection(h1, h2) is None, 30, "the relayed connection to drop")
    lab.start_node("relay")
    wait_for(lambda: h2.status()["nat"]["relay_client"]["reservations"], 60,
             "h2 to reserve again on the restarted relay")
    assert h2.status()["nat"]["relay_client"]["reserve_ok"] >= 2
    relay_dial(h1, h2)
    assert connection(h1, h2)["relayed"]
    assert h2.call("ping", {"peer_id": h1.peer_id})["rtt_ms"] > 0
