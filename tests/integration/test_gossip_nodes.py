"""Conversations between real nodes (every actor a process under supervisord): a room
of five joined in a chain of invites, offline catch-up from a member other than the
author, and a direct chat's receipts, including a message written while the recipient
was down and the sender's gossip actor was killed, and after its transport was."""

from __future__ import annotations

import os
import signal
from collections import Counter
from typing import Any

import pytest

from p2pm.common import errors
from tests.helpers import Node, wait_for

pytestmark = pytest.mark.slow

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
DEADLINE = 45.0


def gossip(node: Node, method: str, params: dict[str, Any] | None = None) -> Any:
    return node.call("gossip", method, params, timeout=5.0)


def history(node: Node, conv: str) -> list[dict[str, Any]]:
    try:
        return gossip(node, "history", {"conversation": conv, "limit": 500})
    except errors.BusError:
        return []


def wait_history(node: Node, conv: str, count: int) -> list[dict[str, Any]]:
    return wait_for(lambda: (h := history(node, conv)) and len(h) >= count and h,
                    DEADLINE, f"{count} messages at {node.peer_id}")



def test_room_of_five_every_message_everywhere_once_in_author_order(node_factory) -> None:
    nodes = node_factory.many(5, listen=LOOPBACK)
    room = gossip(nodes[0], "room_create", {"name": "five"})
    # A chain of invites: each joins through the one before, so nobody starts out
    # connected to everybody.
    invite = room["invite"]
    for node in nodes[1:]:
        assert gossip(node, "room_join", {"invite": invite})["id"] == room["id"]
        invite = gossip(node, "room_invite", {"conversation": room["id"]})["invite"]

    topic_meshes = lambda n: gossip(n, "sys.status")["router"]["mesh"]  # noqa: E731
    for node in nodes:
        wait_for(lambda n=node: any(v >= 1 for v in topic_meshes(n).values()), DEADLINE,
                 "a mesh for the room")
    per_author = 4
    for i in range(per_author):
        for node in nodes:
            gossip(node, "post", {"conversation": room["id"], "text": f"{node.peer_id} {i}"})
    total = per_author * len(nodes)
    for node in nodes:
        got = wait_history(node, room["id"], total)
        assert len(got) == total and len({m["id"] for m in got}) == total
        assert Counter(m["author"] for m in got) == {n.peer_id: per_author for n in nodes}
        for author in (n.peer_id for n in nodes):
            mine = [m for m in got if m["author"] == author]
            # History is by time; each author's messages come in seq order.
            assert [m["seq"] for m in mine] == list(range(1, per_author + 1))
            assert [m["body"] for m in mine] == [f"{author} {i}" for i in range(per_author)]
        # Exactly once: one received event per message of the others, however many
        # copies gossip and sync brought.
        status = gossip(node, "sys.status")
        assert status["counters"]["received"] == total - per_author, status["counters"]


def test_offline_member_catches_up_from_another_member(node_factory) -> None:
    alice, bob, carol = node_factory.many(3, listen=LOOPBACK)
    room = gossip(alice, "room_create", {"name": "catch-up"})
    gossip(bob, "room_join", {"invite": room["invite"]})
    gossip(carol, "room_join", {"invite": room["invite"]})
    gossip(alice, "post", {"conversation": room["id"], "text": "before"})
    for node in (bob, carol):
        wait_history(node, room["id"], 1)
    # Bob has met carol (through alice's addresses in sync) before he goes down.
    wait_for(lambda: any(p["peer_id"] == carol.peer_id
                         for p in bob.call("transport", "peers")), DEADLINE,
             "bob connected to carol")

    bob.p2pm("down", "--timeout", "10", check=True)
    for i in range(3):
        gossip(alice, "post", {"conversation": room["id"], "text": f"alice {i}"})
        gossip(carol, "post", {"conversation": room["id"], "text": f"carol {i}"})
    wait_history(alice, room["id"], 7)
    wait_history(carol, room["id"], 7)
    alice.p2pm("down", "--timeout", "10", check=True)

    bob.p2pm("up", "--timeout", "60", check=True, timeout=90)
    got = wait_history(bob, room["id"], 7)
    assert sorted(m["body"] for m in got) == sorted(
        ["before"] + [f"{who} {i}" for who in ("alice", "carol") for i in range(3)])
    assert {m["author"] for m in got} == {alice.peer_id, carol.peer_id}


def test_direct_message_delivered_and_delivered_later_to_a_node_that_was_down(
        node_factory) -> None:
    alice, bob = node_factory.many(2, listen=LOOPBACK)
    bob_addrs = bob.call("transport", "addrs")["addrs"]
    conv = gossip(alice, "direct_open", {"peer_id": bob.peer_id, "addrs": bob_addrs})
    assert gossip(bob, "direct_open", {"peer_id": alice.peer_id})["id"] == conv["id"]

    def state(mid: str) -> dict[str, Any]:
        return gossip(alice, "message_state", {"id": mid})

    first = gossip(alice, "post", {"conversation": conv["id"], "text": "are you there?"})
    wait_for(lambda: state(first["id"])["state"] == "delivered", DEADLINE, "delivered")
    assert state(first["id"])["members"] == {bob.peer_id: "delivered"}
    assert [m["body"] for m in history(bob, conv["id"])] == ["are you there?"]

    bob.p2pm("down", "--timeout", "10", check=True)
    later = gossip(alice, "post", {"conversation": conv["id"], "text": "while you slept"})
    assert later["state"] in ("pending", "sent")
    assert state(later["id"])["state"] != "delivered"
    # Alice's gossip actor crashes meanwhile: the outbox lives in storage.
    os.kill(alice.pids()["gossip"], signal.SIGKILL)
    wait_for(lambda: alice.healthy(("gossip",)), DEADLINE, "alice's gossip restarted")
    bob.p2pm("up", "--timeout", "60", check=True, timeout=90)
    wait_for(lambda: state(later["id"])["state"] == "delivered", DEADLINE,
             "delivered after bob came back")
    assert [m["body"] for m in history(bob, conv["id"])] == [
        "are you there?", "while you slept"]

    # Alice's transport crashes: connections and streams come back by themselves.
    os.kill(alice.pids()["transport"], signal.SIGKILL)
    wait_for(lambda: alice.healthy(("transport",)), DEADLINE, "alice's transport restarted")
    after = gossip(alice, "post", {"conversation": conv["id"], "text": "still here"})
    wait_for(lambda: state(after["id"])["state"] == "delivered", DEADLINE,
             "delivered after the transport restarted")


def test_both_directions_recover_after_each_gossip_restart(node_factory) -> None:
    """Alice's gossip dies three times. Each time the meshsub streams both ways come
    back (bob's to her died with her actor and is opened again, whichever of its reset
    and her new stream reaches bob first) and bob's next message is delivered."""
    alice, bob = node_factory.many(2, listen=LOOPBACK)
    bob_addrs = bob.call("transport", "addrs")["addrs"]
    conv = gossip(alice, "direct_open", {"peer_id": bob.peer_id, "addrs": bob_addrs})["id"]
    gossip(bob, "direct_open", {"peer_id": alice.peer_id})

    def streams_out(node: Node) -> int:
        return int(node.call("gossip", "sys.status")["streams_out"])

    for round_ in range(3):
        old = alice.pids()["gossip"]
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: alice.pids()["gossip"] not in (0, old) and alice.healthy(("gossip",)),
                 DEADLINE, "alice's gossip restarted")
        wait_for(lambda: streams_out(bob) == 1 and streams_out(alice) == 1, DEADLINE,
                 "a meshsub stream each way again")
        sent = gossip(bob, "post", {"conversation": conv, "text": f"round {round_}"})
        wait_for(lambda: gossip(bob, "message_state", {"id": sent["id"]})["state"]
                 == "delivered", DEADLINE, f"round {round_} delivered")
    assert [m["body"] for m in history(alice, conv)] == ["round 0", "round 1", "round 2"]
