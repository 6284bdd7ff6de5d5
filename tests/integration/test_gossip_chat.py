"""Conversations in-process (keystore, transport, storage and gossip of each node in one
trio loop): the conversation list with unread counts, history paging, leaving, a gap
in gossip repaired by sync, and the message events a client sees."""

from __future__ import annotations

import shutil
import sqlite3
from typing import Any

import pytest
import trio
import zmq

from p2pm.common import wire
from p2pm.common.zmqtrio import AsyncSocket
from p2pm.services.gossip.router.core import Validation
from p2pm.services.gossip import delivery as gossip_delivery
from tests.helpers.gossip_node import GossipNode, open_gossip_node
from tests.helpers.transport_node import make_home


async def _room_of_two(alice: GossipNode, bob: GossipNode) -> dict[str, Any]:
    room = await alice.call("gossip", "room_create", {"name": "garden"})
    assert room["kind"] == "room" and room["invite"].startswith("p2pm-invite2:")
    joined = await bob.call("gossip", "room_join", {"invite": room["invite"]})
    assert joined == {"id": room["id"], "name": "garden", "kind": "room"}
    return room


async def _history(node: GossipNode, conv: str, count: int, **kw: Any) -> list[Any]:
    async def enough() -> list[Any]:
        h = await node.call("gossip", "history", {"conversation": conv, **kw})
        return h if len(h) >= count else []
    return await node.wait_for(enough, f"{count} messages")


async def _subscribed(sub: zmq.Socket, events: AsyncSocket) -> None:
    """Return once `sub` hears its actor: PUB/SUB joins asynchronously and drops what
    is published before. A heartbeat (every second) shows the subscriptions hold."""
    sub.setsockopt(zmq.SUBSCRIBE, b"gossip.sys.heartbeat")
    with trio.fail_after(10):
        while not (await events.recv_multipart())[0].startswith(b"gossip.sys.heartbeat"):
            pass
    sub.setsockopt(zmq.UNSUBSCRIBE, b"gossip.sys.heartbeat")


async def test_list_unread_mark_read_paging_and_events() -> None:
    async with open_gossip_node("alice") as alice, open_gossip_node("bob") as bob:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.connect(bob.endpoints.events("gossip"))
        sub.setsockopt(zmq.SUBSCRIBE, b"gossip.message.received")
        events = AsyncSocket(sub)
        try:
            room = await _room_of_two(alice, bob)
            await _subscribed(sub, events)
            ids = [(await alice.call("gossip", "post", {
                "conversation": room["id"], "text": f"note {i}"}))["id"] for i in range(5)]
            got = await _history(bob, room["id"], 5)
            assert [m["body"] for m in got] == [f"note {i}" for i in range(5)]
            assert [m["id"] for m in got] == ids and {m["state"] for m in got} == {"received"}
            # One event per message (stored concurrently, so in any order).
            seen = []
            with trio.fail_after(5):
                for _ in range(5):
                    _, payload = await events.recv_multipart()
                    seen.append(wire.loads(payload)["data"])
            assert sorted(seen, key=lambda e: e["body"]) == [
                {"id": m["id"], "conversation": room["id"], "author": alice.peer_id,
                 "body": m["body"], "ts": m["ts"]} for m in got]

            listed = await bob.call("gossip", "conversation_list")
            assert [(c["id"], c["kind"], c["unread"]) for c in listed] == [
                (room["id"], "room", 5)]
            assert set(listed[0]["members"]) == {alice.peer_id, bob.peer_id}
            await bob.call("gossip", "mark_read", {"conversation": room["id"]})
            assert (await bob.call("gossip", "conversation_list"))[0]["unread"] == 0
            # Alice wrote them: they are not unread for her.
            assert (await alice.call("gossip", "conversation_list"))[0]["unread"] == 0

            page = await bob.call("gossip", "history",
                                  {"conversation": room["id"], "limit": 2})
            assert [m["body"] for m in page] == ["note 3", "note 4"]
            older = await bob.call("gossip", "history", {
                "conversation": room["id"], "limit": 2, "before": page[0]["id"]})
            assert [m["body"] for m in older] == ["note 1", "note 2"]

            # Every member acknowledged: alice's messages end delivered, per member.
            async def delivered() -> bool:
                s = await alice.call("gossip", "message_state", {"id": ids[-1]})
                return s["state"] == "delivered" and s["members"] == {
                    bob.peer_id: "delivered"}
            await alice.wait_for(delivered, "receipts from bob")

            await bob.call("gossip", "conversation_leave", {"conversation": room["id"]})
            assert await bob.call("gossip", "conversation_list") == []
            await alice.call("gossip", "post", {"conversation": room["id"], "text": "gone?"})
            await trio.sleep(0.5)
            stored = await bob.call("storage", "history",
                                    {"conversation": room["id"], "limit": 50})
            assert len(stored["messages"]) == 5  # left: nothing new arrives
        finally:
            events.close(linger_ms=0)


async def test_a_gap_in_gossip_is_filled_by_sync() -> None:
    async with open_gossip_node("alice") as alice, open_gossip_node("bob") as bob:
        room = await _room_of_two(alice, bob)
        await alice.call("gossip", "post", {"conversation": room["id"], "text": "one"})
        await _history(bob, room["id"], 1)
        # Bob's router drops alice's next message, as a lost copy would be.
        validate = bob.gossip.router._validate  # type: ignore[union-attr]
        dropped: list[Any] = []

        def lossy(msg: Any) -> Validation:
            verdict = validate(msg)
            if not dropped and b"one" not in (msg.data or b""):
                dropped.append(msg)
                return Validation.IGNORE
            return verdict
        bob.gossip.router._validate = lossy  # type: ignore[union-attr]
        await alice.call("gossip", "post", {"conversation": room["id"], "text": "two"})
        async def lost() -> bool:
            return bool(dropped)
        await bob.wait_for(lost, "the second message dropped")
        await alice.call("gossip", "post", {"conversation": room["id"], "text": "three"})
        got = await _history(bob, room["id"], 3)
        assert [(m["body"], m["seq"]) for m in got] == [("one", 1), ("two", 2),
                                                        ("three", 3)]
        # The lost copy was replaced by sync (the gap, or anti-entropy), not gossip.
        status = await bob.call("gossip", "sys.status")
        assert status["router"]["counters"]["msg_ignored"] == 1
        assert status["counters"]["sync_envelopes_received"] >= 1


async def test_a_message_written_before_anyone_joined_ends_delivered() -> None:
    """The room's creator writes while alone in it: the message waits for members
    ("sent" would stay forever), and ends delivered once bob joined and holds it."""
    async with open_gossip_node("alice") as alice, open_gossip_node("bob") as bob:
        room = await alice.call("gossip", "room_create", {"name": "porch"})
        first = await alice.call("gossip", "post", {"conversation": room["id"],
                                                    "text": "anyone here?"})
        state = await alice.call("gossip", "message_state", {"id": first["id"]})
        assert state["state"] == "pending" and state["members"] == {}
        await bob.call("gossip", "room_join", {"invite": room["invite"]})
        got = await _history(bob, room["id"], 1)
        assert [m["body"] for m in got] == ["anyone here?"]

        async def delivered() -> bool:
            s = await alice.call("gossip", "message_state", {"id": first["id"]})
            return s["state"] == "delivered" and s["members"] == {bob.peer_id: "delivered"}
        await alice.wait_for(delivered, "bob's receipt for the early message")


async def test_every_owed_delivery_survives_a_restart(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """alice writes while bob's node is down, more messages than gossip reads of its
    outbox per storage call at start (OUTBOX_PAGE, made small here); alice's node
    restarts, then bob's comes back: every one of them ends delivered at alice (it
    used to read one page only, so the rest stayed "sent" for good)."""
    monkeypatch.setattr(gossip_delivery, "OUTBOX_PAGE", 4)
    count = 9
    homes = [make_home("p2pm-oa-"), make_home("p2pm-ob-")]
    try:
        async with open_gossip_node("oalice", home=homes[0]) as alice:
            async with open_gossip_node("obob", home=homes[1]) as bob:
                room = await _room_of_two(alice, bob)
                hello = await alice.call("gossip", "post", {"conversation": room["id"],
                                                            "text": "hello"})

                async def delivered_hello() -> bool:
                    s = await alice.call("gossip", "message_state", {"id": hello["id"]})
                    return s["state"] == "delivered"
                await alice.wait_for(delivered_hello, "bob's receipt for hello")
            ids = [(await alice.call("gossip", "post", {
                "conversation": room["id"], "text": f"while you were away {i}"}))["id"]
                for i in range(count)]
        async with open_gossip_node("oalice2", home=homes[0]) as alice, \
                open_gossip_node("obob2", home=homes[1]) as bob:
            await bob.call("transport", "dial", {"addr": alice.addrs[0]})

            async def all_delivered() -> bool:
                for mid in ids:
                    s = await alice.call("gossip", "message_state", {"id": mid})
                    if s["state"] != "delivered":
                        return False
                return True
            await alice.wait_for(all_delivered, f"all {count} messages delivered",
                                 timeout=60)
    finally:
        for home in homes:
            shutil.rmtree(home.root, ignore_errors=True)


async def test_a_message_left_without_a_delivery_queue_is_owed_after_a_restart() -> None:
    """A crash between storing a message and queueing its deliveries (here: the outbox
    rows removed while alice's node is down) left it "sent" for good; at start,
    gossip queues every such message for the members it knows, and it ends delivered
    once bob is back."""
    homes = [make_home("p2pm-ua-"), make_home("p2pm-ub-")]
    try:
        async with open_gossip_node("ualice", home=homes[0]) as alice:
            async with open_gossip_node("ubob", home=homes[1]) as bob:
                room = await _room_of_two(alice, bob)
                await alice.wait_for(lambda: _knows_member(alice, room["id"], bob.peer_id),
                                     "alice to know bob as a member")
            lost = (await alice.call("gossip", "post", {
                "conversation": room["id"], "text": "written as the node crashed"}))["id"]
        with sqlite3.connect(homes[0].data / "node.db") as db:
            assert db.execute("DELETE FROM outbox WHERE message_id = ?", (lost,)).rowcount
        async with open_gossip_node("ualice2", home=homes[0]) as alice, \
                open_gossip_node("ubob2", home=homes[1]) as bob:
            await bob.call("transport", "dial", {"addr": alice.addrs[0]})

            async def delivered() -> bool:
                s = await alice.call("gossip", "message_state", {"id": lost})
                return s["state"] == "delivered"
            await alice.wait_for(delivered, "the unqueued message delivered", timeout=60)
    finally:
        for home in homes:
            shutil.rmtree(home.root, ignore_errors=True)


async def _knows_member(node: GossipNode, conv: str, peer: str) -> bool:
    return peer in node.gossip.convs[conv].members
