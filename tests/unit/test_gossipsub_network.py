"""Many routers on the simulated network (router/sim.py): what a user of a room would
notice — every message arrives, exactly once, also at a member who joined late, and
a peer forging signatures cannot disturb it."""

from __future__ import annotations

import random

from p2pm.services.gossip.router import PROTOCOL_V10, PROTOCOL_V11, PROTOCOL_V12, GossipParams
from p2pm.services.gossip.router import messages as m
from p2pm.services.gossip.router.sim import Simulation, ring_with_chords

T = "room"


def test_every_message_reaches_every_subscriber_exactly_once() -> None:
    n = 12
    edges = ring_with_chords(n, 1, random.Random(5))
    assert len(edges) < n * (n - 1) // 2  # connected, but far from a full mesh
    sim = Simulation(n, edges, seed=5)
    for i in range(n):
        sim.subscribe(i, T)
    sim.run_until(3.0)
    for k in range(60):
        sim.publish(k % n, T, b"msg %d" % k, at=3.0 + k * 0.02)
    sim.run_until(8.0)
    report = sim.delivery_report(list(range(n)))
    assert len(sim.published) == 60
    assert report["delivered"] == report["expected"] == 60 * (n - 1)
    for node in sim.nodes:
        # Exactly once: one MessageReceived per message, duplicates only on the wire.
        assert node.deliveries == len(node.received) == 60 - sum(
            1 for author, _ in sim.published.values() if author == node.index)


def test_mixed_v10_v11_v12_network_delivers_everything_once() -> None:
    n = 9
    versions = [PROTOCOL_V10, PROTOCOL_V11, PROTOCOL_V12]
    sim = Simulation(n, ring_with_chords(n, 1, random.Random(4)), seed=4,
                     params=GossipParams(idontwant_min_size=300),
                     protocols={i: versions[i % 3] for i in range(n)})
    for i in range(n):
        sim.subscribe(i, T)
    sim.run_until(3.0)
    for k in range(30):
        sim.publish(k % n, T, bytes([k]) * (50 if k % 2 else 500), at=3.0 + k * 0.05)
    sim.run_until(8.0)
    report = sim.delivery_report(list(range(n)))
    assert report["delivered"] == report["expected"] == 30 * (n - 1)
    assert all(node.deliveries == len(node.received) for node in sim.nodes)


def test_late_joiner_gets_missed_messages_through_ihave_iwant() -> None:
    # Node 0 publishes through hub 1, whose mesh is full (d_hi=2) with 2 and 3.
    params = GossipParams(d=2, d_lo=1, d_hi=2, d_score=1, d_out=0, d_lazy=2)
    sim = Simulation(5, [(0, 1), (1, 2), (1, 3)], seed=2, params=params)
    for i in range(5):
        sim.subscribe(i, T)
    sim.run_until(3.0)
    sim.publish(0, T, b"before you came", at=3.0)
    sim.run_until(3.3)
    late = sim.nodes[4]
    assert not late.received
    sim.connect(4, 1, 0.02)  # node 4 dials the hub after the eager push is over
    sim.run_until(6.0)
    hub = sim.nodes[1].router
    assert late.peer_id not in hub.mesh(T)  # the hub refused its GRAFT: mesh full
    assert hub.statistics()["counters"]["graft_mesh_full"] >= 1
    assert list(late.received) == list(sim.published)
    assert late.router.statistics()["counters"]["iwant_sent_ids"] == 1


def test_forging_peer_is_scored_down_and_pruned_while_honest_delivery_goes_on() -> None:
    n = 8
    sim = Simulation(n, ring_with_chords(n, 2, random.Random(9)), seed=9)
    for i in range(n):
        sim.subscribe(i, T)
    sim.run_until(3.0)
    evil = sim.nodes[0]
    neighbours = [node for node in sim.nodes if evil.peer_id in node.router.peers()]
    assert any(evil.peer_id in node.router.mesh(T) for node in neighbours)
    for k in range(5):
        honest = sim.nodes[1 + k % (n - 1)]
        sim.publish(honest.index, T, b"honest %d" % k, at=3.0 + k * 0.1)
        # A copy of an honest author's message with other content: a bad signature.
        msg = honest.router.new_message(T, b"forged %d" % k, 3.0 + k * 0.1)
        forged = m.encode(m.RPC(publish=(m.Message(
            from_=msg.from_, data=msg.data, seqno=msg.seqno, topic=T, signature=bytes(64)),)))
        for node in neighbours:
            sim._at(3.0 + k * 0.1, "deliver", node.index, evil.index, forged)
    sim.run_until(6.0)
    for node in neighbours:
        stats = node.router.statistics()["counters"]
        assert stats["msg_invalid_signature"] >= 1
        assert node.router.score(evil.peer_id) < 0
        assert evil.peer_id not in node.router.mesh(T)
    assert len(sim.published) == 5
    for node in sim.nodes[1:]:
        own = {mid for mid, (author, _) in sim.published.items() if author == node.index}
        assert set(node.received) == set(sim.published) - own  # all honest, no forged


def test_burst_own_messages_all_arrive_and_forward_drops_are_counted() -> None:
    # A burst of 300 messages on a ring of 6 with small queues; node 1's link to node 2
    # is 50 times slower than the rest, so node 1 cannot relay everything to node 2.
    params = GossipParams(max_own_queue=20, max_forward_queue=20)
    n = 6
    sim = Simulation(n, ring_with_chords(n, 0, random.Random(1)), seed=1, params=params,
                     bandwidth=100_000.0)
    sim.link_bandwidth[(1, 2)] = 2_000.0
    for i in range(n):
        sim.subscribe(i, T)
    sim.run_until(3.0)
    for k in range(300):
        sim.publish(0, T, b"burst %03d" % k, at=3.0)
    sim.run_until(30.0)
    author = sim.nodes[0]
    assert not author.outbox and len(sim.published) == 300  # back-pressure, never loss
    assert author.router.statistics()["counters"]["publish_backpressure"] > 0
    relay = sim.nodes[1].router.statistics()["counters"]
    assert relay["dropped_forward_queue_full"] > 0  # the slow link overflowed, and it shows
    # Node 2 still got everything, through the other side of the ring.
    report = sim.delivery_report(list(range(n)))
    assert report["delivered"] == report["expected"] == 300 * (n - 1)
