"""The pairwise key channel between real nodes (keystore, transport, storage and gossip
of each in one trio loop): a payload only the peer reads reaches it over
`/p2pm/keys/1.0.0`, both sides sending at once, across a restart of either side, and
what a peer that refuses or never answers costs the sender."""

from __future__ import annotations

import shutil
import sqlite3
from typing import Any

import pytest
import trio

from p2pm.common.streams import StreamError
from p2pm.services.gossip import pairing as pairing_mod
from p2pm.services.gossip.pairing import PayloadRefused
from tests.helpers.gossip_node import GossipNode, open_gossip_node
from tests.helpers.transport_node import make_home


def inbox(node: GossipNode, kind: str = "sender_key") -> list[tuple[str, dict[str, Any]]]:
    got: list[tuple[str, dict[str, Any]]] = []

    async def handler(peer: str, body: dict[str, Any]) -> None:
        got.append((peer, body))
    node.gossip.pairing.on(kind, handler)
    return got


async def connect(a: GossipNode, b: GossipNode) -> None:
    await a.call("transport", "dial", {"addr": b.addrs[0]})

    async def both() -> bool:
        return (a.gossip.reach.is_connected(b.peer_id)
                and b.gossip.reach.is_connected(a.peer_id))
    await a.wait_for(both, "both sides connected", timeout=60)


async def settled(sender: GossipNode, peer: GossipNode) -> None:
    """Until the sender has every ACK (the peer hands a payload over before it acks)."""
    async def nothing_owed() -> bool:
        return sender.gossip.pairing.pending(peer.peer_id) == 0
    await sender.wait_for(nothing_owed, "every payload acknowledged", timeout=60)


async def wait_received(node: GossipNode, got: list[Any], count: int) -> None:
    async def enough() -> bool:
        return len(got) >= count
    await node.wait_for(enough, f"{count} payloads", timeout=60)


async def test_a_payload_reaches_only_its_peer_and_later_ones_reuse_the_session() -> None:
    async with open_gossip_node("kalice") as alice, open_gossip_node("kbob") as bob:
        got = inbox(bob)
        await connect(alice, bob)
        await alice.gossip.pairing.send(bob.peer_id, "sender_key", {"key": "première 🔑"})
        await wait_received(bob, got, 1)
        assert got == [(alice.peer_id, {"key": "première 🔑"})]
        for i in range(5):
            await alice.gossip.pairing.send(bob.peer_id, "sender_key", {"n": i})
        await wait_received(bob, got, 6)
        assert [b for _, b in got[1:]] == [{"n": i} for i in range(5)]
        await settled(alice, bob)
        # one session carries them all (an exchange that timed out on a loaded machine
        # is retried on it, and what bob had already taken is not handed over twice)
        assert len(alice.gossip.pairing.book.session_ids(bob.peer_id)) == 1
        status = await alice.call("gossip", "sys.status")
        assert status["keys"]["queued"] == 0 and status["keys"]["peers_with_sessions"] == 1


async def test_both_sides_sending_at_once_each_receive_everything() -> None:
    async with open_gossip_node("kboth1") as alice, open_gossip_node("kboth2") as bob:
        to_alice, to_bob = inbox(alice), inbox(bob)
        await connect(alice, bob)
        for round_ in range(4):
            async with trio.open_nursery() as n:
                n.start_soon(alice.gossip.pairing.send, bob.peer_id, "sender_key",
                             {"from": "alice", "round": round_})
                n.start_soon(bob.gossip.pairing.send, alice.peer_id, "sender_key",
                             {"from": "bob", "round": round_})
        await wait_received(bob, to_bob, 4)
        await wait_received(alice, to_alice, 4)
        assert sorted(b["round"] for _, b in to_bob) == [0, 1, 2, 3]
        assert sorted(b["round"] for _, b in to_alice) == [0, 1, 2, 3]


async def test_sessions_and_owed_payloads_survive_restarts_and_rest_sealed() -> None:
    homes = [make_home("p2pm-ka-"), make_home("p2pm-kb-")]
    try:
        async with open_gossip_node("kra", home=homes[0]) as alice, \
                open_gossip_node("krb", home=homes[1]) as bob:
            got = inbox(bob)
            await connect(alice, bob)
            await alice.gossip.pairing.send(bob.peer_id, "sender_key", {"secret": "tulip-42"})
            await wait_received(bob, got, 1)
        # bob is down: what alice owes him is kept, across alice's restart too
        async with open_gossip_node("kra2", home=homes[0]) as alice:
            await alice.gossip.pairing.send(bob.peer_id, "sender_key",
                                            {"secret": "while-away-77"})
        async with open_gossip_node("kra3", home=homes[0]) as alice, \
                open_gossip_node("krb3", home=homes[1]) as bob:
            got = inbox(bob)
            assert alice.gossip.pairing.pending(bob.peer_id) == 1
            await connect(alice, bob)
            await wait_received(bob, got, 1)
            assert got == [(alice.peer_id, {"secret": "while-away-77"})]
            # the Olm session was restored on both sides: no new one was started
            assert len(bob.gossip.pairing.book.session_ids(alice.peer_id)) == 1
        for home in homes:  # nothing of the payloads or sessions lies in clear
            for path in home.root.rglob("*"):
                if path.is_file():
                    data = path.read_bytes()
                    assert b"tulip-42" not in data and b"while-away-77" not in data, path
            db = next(home.root.rglob("node.db"))
            with sqlite3.connect(db) as conn:
                keys = [r[0] for r in conn.execute("SELECT key FROM kv")]
            assert any(k.startswith(pairing_mod.PEER_KEY) for k in keys)
    finally:
        for home in homes:
            shutil.rmtree(home.root, ignore_errors=True)


async def test_a_refused_payload_is_reported_to_the_sender_and_not_retried() -> None:
    async with open_gossip_node("kref1") as alice, open_gossip_node("kref2") as bob:
        async def refuse(peer: str, body: dict[str, Any]) -> None:
            raise PayloadRefused("not a member of that room")
        bob.gossip.pairing.on("admit", refuse)
        await connect(alice, bob)
        await alice.gossip.pairing.send(bob.peer_id, "admit", {"room": "x"})

        async def settled() -> bool:
            return alice.gossip.counters["keys_refused"] == 1
        await alice.wait_for(settled, "the refusal reported", timeout=60)
        assert alice.gossip.pairing.pending(bob.peer_id) == 0
        assert bob.gossip.counters["keys_payload_refused"] == 1
        # the same payload again (as after a lost ACK) is refused again, not taken for
        # delivered because bob has seen its id
        await alice.gossip.pairing.send(bob.peer_id, "admit", {"room": "x"})

        async def refused_twice() -> bool:
            return alice.gossip.counters["keys_refused"] == 2
        await alice.wait_for(refused_twice, "the second refusal", timeout=60)
        assert alice.gossip.counters["keys_delivered"] == 0


async def test_a_peer_that_never_answers_costs_a_timeout_and_the_payload_waits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pairing_mod, "EXCHANGE_TIMEOUT_S", 2.0)
    async with open_gossip_node("ksil1") as alice, open_gossip_node("ksil2") as bob:
        got = inbox(bob)
        silent = trio.Event()

        async def never_answer(stream: Any) -> None:
            silent.set()
            await trio.sleep_forever()
        real_serve = bob.gossip.pairing.serve
        monkeypatch.setattr(bob.gossip.pairing, "serve", never_answer)
        await connect(alice, bob)
        await alice.gossip.pairing.send(bob.peer_id, "sender_key", {"n": 1})

        async def failed() -> bool:
            return alice.gossip.counters["keys_exchange_failed"] >= 1
        await alice.wait_for(failed, "the silent exchange given up", timeout=60)
        assert silent.is_set() and got == []
        assert alice.gossip.pairing.pending(bob.peer_id) == 1  # kept, not dropped
        monkeypatch.setattr(bob.gossip.pairing, "serve", real_serve)
        await wait_received(bob, got, 1)  # after the backoff it goes through
        await settled(alice, bob)


async def test_a_peer_flooding_the_key_protocol_is_cut_off_and_honest_payloads_still_arrive(
        ) -> None:
    from p2pm.services.gossip import channel as ch
    async with open_gossip_node("kflood1") as mallory, open_gossip_node("kflood2") as bob:
        got = inbox(bob)
        await connect(mallory, bob)
        answered = refused = 0
        ask = ch.encode_push(ch.Push((), want_bundle=True))
        started = trio.current_time()
        for _ in range(60):  # far more first-contact asks than any honest peer makes
            try:
                with trio.fail_after(10):
                    stream = await mallory.gossip.streams.open_stream(
                        ch.PROTOCOL, peer=bob.peer_id, timeout=10)
                    async with stream:
                        await stream.send(ask)
                        assert ch.decode_ack(await stream.receive()).bundle
                        answered += 1
            except (StreamError, trio.TooSlowError, trio.EndOfChannel):  # reset by bob
                refused += 1
        # no more than the bucket allows: its burst, and its rate over the time taken
        from p2pm.services.transport import limits
        rate = next(r for _p, kind, r in limits.PROTOCOL_RATES if kind == "keys")
        allowed = rate.burst + rate.rate * (trio.current_time() - started) + 1
        assert refused >= 1 and answered <= allowed, (answered, refused, allowed)
        # the same peer's real payload still gets through once its bucket refills
        await mallory.gossip.pairing.send(bob.peer_id, "sender_key", {"n": 1})
        await wait_received(bob, got, 1)
        status = await bob.call("transport", "sys.status")
        assert status["limits"]["rates"]["keys"]["refused"] >= refused
