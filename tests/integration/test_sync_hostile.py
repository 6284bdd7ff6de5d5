"""Attacks on catch-up sync from a hostile peer (tests/helpers/hostile.py: a
py-libp2p host plus the project's codecs) against real nodes, one test each:

* harvesting a room: a non-member, connected and subscribed to every topic the
  nodes announce and to the conversations' real topics too, with a peer id above
  both members (so they start syncs with it) and another below (so it starts them),
  is told of no conversation topic and gets no conversation message or gossip, and
  no sync frame but the two random-looking handshake frames, no member and no
  address, through 30 s of posting in a room and a direct chat;
* member poisoning: 40 forged peer ids and one malformed one, held ready by a
  stranger (whom no member ever asks for a HELLO) and listed by a lying member who
  proved itself, never reach storage on either member, and posting keeps working
  on both (also after a gossip restart);
* CPU exhaustion: eight streams of maximum-size HELLOs from a non-member for 10 s
  are refused before parsing and rate-limited; the gossip actor's CPU over the
  flood is measured from /proc and printed, honest DMs keep flowing.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import orjson

from p2pm.services.gossip import conversations as cv
from tests.helpers import Node, wait_for
from tests.helpers.hostile import HostilePeer, forged_peer_ids

from .chatnet import (
    LOOPBACK, DeliveryProbe, addrs, bodies, call_patiently, open_direct, percentile,
    wait_connected,
)

POSTING_S = 30.0
FLOOD_S = 10.0
FLOOD_STREAMS = 8


def loopback_addr(node: Node) -> str:
    addr = next(a for a in addrs(node) if "/127.0.0.1/" in a)
    return addr if "/p2p/" in addr else f"{addr}/p2p/{node.peer_id}"


def counters(node: Node) -> dict[str, int]:
    return dict(node.call("gossip", "sys.status", timeout=5.0)["counters"])


def open_room_with_invite(a: Node, b: Node) -> tuple[str, str]:
    made = call_patiently(a, "gossip", "room_create", {"name": "ops"})
    call_patiently(b, "gossip", "room_join", {"invite": made["invite"]})
    return str(made["id"]), str(made["invite"])


def test_a_non_member_gets_no_sync_frame_member_or_address(node_factory: Any) -> None:
    alice, bob = node_factory.many(2, listen=LOOPBACK)
    room, _ = open_room_with_invite(alice, bob)
    direct = open_direct(alice, bob)
    wait_connected([alice, bob], room)
    wait_connected([alice, bob], direct)
    members = [alice.peer_id, bob.peer_id]
    secrets = [room, direct, *members] + [a.split("/p2p/")[0] for n in (alice, bob)
                                           for a in addrs(n)]
    # The conversations' topics, as the members know them: a stranger is never told,
    # so it is handed them (the worst case, as if it had learnt them somehow).
    topics = set(alice.call("gossip", "sys.status", timeout=5.0)["router"]["topics"])
    assert len(topics) == 2
    with HostilePeer(above=members) as high, HostilePeer(below=members) as low:
        for peer in (high, low):
            for node in (alice, bob):
                peer.call(peer.connect, loopback_addr(node))
                announced = peer.call(peer.subscribe_all, node.peer_id, sorted(topics), 3.0)
                assert not announced & topics, "a conversation's topic told to a stranger"
        deadline = time.monotonic() + POSTING_S
        i = 0
        while time.monotonic() < deadline:
            for node in (alice, bob):
                for conv in (room, direct):
                    call_patiently(node, "gossip", "post", {"conversation": conv,
                                                             "text": f"secret {i}"})
            for node in (alice, bob):
                low.call(low.probe_sync, node.peer_id)
            i += 1
            time.sleep(0.5)
        assert f"secret {i - 1}" in bodies(bob, room)  # the members did talk
        for peer, name in ((high, "high"), (low, "low")):
            assert peer.error is None, peer.error
            frames = peer.sync_frames()
            kinds = [orjson.loads(f).get("t") for f in frames]
            print(f"\n{name} ({peer.peer_id[-6:]}): {peer.inbound_syncs} syncs opened to it,"
                  f" {len(frames)} sync frames received: {sorted(set(kinds))}, "
                  f"{peer.probes_refused} of its own syncs refused at once")
            for frame in frames:
                doc = orjson.loads(frame)
                assert set(doc) in ({"t", "nonce"}, {"t", "proof"}), doc
            # Nor any of the conversations' GossipSub traffic: no message, no
            # subscription, no gossip about them, although it subscribed to them.
            rpcs = peer.mesh_rpcs()
            told = {s.topicid for r in rpcs for s in r.subscriptions} & topics
            published = [m for r in rpcs for m in r.publish if m.topic in topics]
            gossip_ids = [i for r in rpcs if r.control for i in r.control.ihave
                          if i.topic_id in topics]
            print(f"{name}: {len(rpcs)} meshsub rpcs, {len(published)} conversation "
                  f"messages, {len(gossip_ids)} IHAVEs about them")
            assert not told and not published and not gossip_ids
            for blob in frames:
                for secret in secrets:
                    assert secret.encode() not in blob, (secret, blob[:200])
        # The attack was made: `low` opened syncs of its own and was answered only
        # with a nonce. (The members never see a stranger's subscription to a
        # conversation's private topic, so they start no sync with `high` at all:
        # its count is printed above.)
        assert len(low.sync_frames()) > 0
    refused = {n.peer_id[-6:]: (counters(n).get("sync_peer_not_member", 0),
                                counters(n).get("sync_refused", 0)) for n in (alice, bob)}
    print(f"(not-member as responder, refused as responder) per node: {refused}")
    assert all(a + b > 0 for a, b in refused.values())


def stored_members(node: Node, conv: str) -> set[str]:
    return set(call_patiently(node, "storage", "conversation_get", {"id": conv})["members"])


def post_and_deliver(writer: Node, reader: Node, conv: str, tag: str) -> None:
    """A post from `writer` reaches `reader` and turns delivered for it."""
    text = f"{tag} {time.monotonic_ns()}"
    got = writer.call("gossip", "post", {"conversation": conv, "text": text}, timeout=10.0)
    wait_for(lambda: text in bodies(reader, conv), 60, f"{text!r} reaching the reader",
             interval=0.2)

    def delivered() -> bool:
        state = writer.call("gossip", "message_state", {"id": got["id"]}, timeout=5.0)
        return state["members"].get(reader.peer_id) == "delivered"
    wait_for(delivered, 60, f"{text!r} delivered", interval=0.2)


def restart_gossip(node: Node) -> None:
    old = node.pids()["gossip"]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: node.pids().get("gossip") not in (0, old), 60,
             "supervisord restarting gossip", interval=0.1)
    node.wait_healthy(60)


def test_forged_members_never_reach_storage_and_posting_keeps_working(
        node_factory: Any) -> None:
    alice, bob = node_factory.many(2, listen=LOOPBACK)
    room, invite = open_room_with_invite(alice, bob)
    wait_connected([alice, bob], room)
    forged = forged_peer_ids(40)
    malformed = "12D3KooW not a peer id"
    poison = {p: ["/ip4/127.0.0.1/tcp/9"] for p in forged + [malformed]}
    secret = cv.decode_invite(invite).secret
    with HostilePeer(above=[alice.peer_id, bob.peer_id]) as stranger, HostilePeer() as liar:
        stranger.poison = liar.poison = poison
        # A stranger subscribed to the room's real topic (as if it had learnt it) and
        # starting syncs of its own, with the poison ready for any HELLO it is asked
        # for; a member lies after proving.
        topics = alice.call("gossip", "sys.status", timeout=5.0)["router"]["topics"]
        stranger.call(stranger.connect, loopback_addr(alice))
        stranger.call(stranger.subscribe_all, alice.peer_id, topics, 1.0)
        for _ in range(3):
            stranger.call(stranger.probe_sync, alice.peer_id)
        liar.call(liar.connect, loopback_addr(alice))
        for _ in range(3):
            assert liar.call(liar.sync_as_member, alice.peer_id, secret) > 0
        for rnd in ("before restart", "after restart"):
            for writer, reader in ((alice, bob), (bob, alice)):
                post_and_deliver(writer, reader, room, rnd)
            # Wait for an alice-bob sync after the attack, the path it spread by.
            before = counters(bob).get("syncs", 0) + counters(bob).get("syncs_served", 0)
            wait_for(lambda before=before: counters(bob).get("syncs", 0)
                     + counters(bob).get("syncs_served", 0) > before, 90,
                     "a sync between alice and bob", interval=0.5)
            for node in (alice, bob):
                got = stored_members(node, room)
                assert not got & set(poison), (rnd, node.peer_id, got & set(poison))
                assert got <= {alice.peer_id, bob.peer_id, liar.peer_id}, got
            if rnd == "before restart":
                restart_gossip(alice)
                # Healthy means loaded: the first sync after the restart is answered as
                # a member's, not refused as a stranger's.
                assert liar.call(liar.sync_as_member, alice.peer_id, secret) > 0
    c = counters(alice)
    assert c.get("sync_invalid_peer_id", 0) > 0  # the malformed id, dropped and counted
    print(f"\nalice: {c.get('sync_invalid_peer_id', 0)} invalid peer ids dropped from syncs, "
          f"{c.get('invalid_member_dropped', 0)} invalid members dropped; stored members: "
          f"{len(stored_members(alice, room))} (alice, bob, the proven liar)")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_hello_flood_is_refused_cheaply_and_rate_limited(node_factory: Any) -> None:
    alice, bob = node_factory.many(2, listen=LOOPBACK)
    conv = open_direct(alice, bob)
    wait_connected([alice, bob], conv)
    with DeliveryProbe(bob, alice, conv) as probe, HostilePeer() as mallory:
        probe.warm_up()
        quiet = [probe.deliver(f"quiet {i}") * 1000 for i in range(5)]
        mallory.call(mallory.connect, loopback_addr(alice))
        pid = alice.pids()["gossip"]
        before = counters(alice)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        mallory.call(mallory.start_flood, alice.peer_id, FLOOD_STREAMS, FLOOD_S)
        flooded = []
        while not mallory.flood_done.is_set():
            flooded.append(probe.deliver(f"flooded {len(flooded)}") * 1000)
        cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        after = counters(alice)
        assert mallory.error is None, mallory.error
    delta = {k: after.get(k, 0) - before.get(k, 0)
             for k in ("sync_rate_limited", "sync_refused", "sync_refused_too_large")}
    print(f"\nflood: {mallory.flood} (streams opened, 1 MiB HELLOs written, refusals); "
          f"alice's gossip: {delta}; gossip CPU during the flood {cpu:.0%}")
    print(f"honest DM latency p50: quiet {percentile(quiet, 0.5):.1f} ms, during the flood "
          f"{percentile(flooded, 0.5):.1f} ms ({len(flooded)} messages)")
    assert delta["sync_rate_limited"] > 0 and delta["sync_refused_too_large"] > 0
    assert cpu < 0.7, f"gossip at {cpu:.0%} CPU under a HELLO flood"
    assert flooded and alice.healthy()
