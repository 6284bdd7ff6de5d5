"""Abuse from the network: a peer that floods a node with Kademlia requests (a raw
py-libp2p host, many streams at once, as fast as it can) is rate-limited by the
node's DHT, the node stays healthy, and an honest peer's direct messages keep
arriving, each exactly once. The honest latency before and during the flood is
printed (speed is the benchmarks' business, not asserted here).

The GossipSub side of abuse (junk and invalid messages scoring a peer down until it
is graylisted) is covered in-process by test_gossip_hostile.py.
"""

from __future__ import annotations

import os
from typing import Any

import multiaddr
import trio
import varint
from libp2p import new_host
from libp2p.peer.peerinfo import info_from_p2p_addr

from p2pm.services.dht.messages import Message, MessageType, encode_message
from tests.helpers import Node, wait_for

from .chatnet import (
    LOOPBACK, Background, DeliveryProbe, addrs, check_history, open_direct, percentile, wait_connected,
)

KAD = "/ipfs/kad/1.0.0"
FLOOD_STREAMS = 8
MESSAGES = 15


class KadFlood(Background):
    """A py-libp2p host in a thread of its own hammering `target` with FIND_NODE."""

    join_s = 15.0

    def __init__(self, target: Node) -> None:
        addr = next(a for a in addrs(target) if "/127.0.0.1/" in a)
        if "/p2p/" not in addr:
            addr += f"/p2p/{target.peer_id}"
        self.info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        self.sent = 0
        self.answered = 0
        self.refused = 0  # streams the node reset or closed on us
        self.error: BaseException | None = None
        super().__init__(self._run)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by the test
            self.error = exc

    async def _main(self) -> None:
        host = new_host()
        async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            await host.connect(self.info)
            async with trio.open_nursery() as nursery:
                for _ in range(FLOOD_STREAMS):
                    nursery.start_soon(self._hammer, host)
                while not self._stop.is_set():
                    await trio.sleep(0.05)
                nursery.cancel_scope.cancel()

    async def _hammer(self, host: Any) -> None:
        while True:
            try:
                stream = await host.new_stream(self.info.peer_id, [KAD])
                while True:
                    body = encode_message(Message(type=MessageType.FIND_NODE,
                                                  key=os.urandom(34)))
                    await stream.write(varint.encode(len(body)) + body)
                    self.sent += 1
                    with trio.fail_after(5):
                        if not await stream.read(65536):
                            raise EOFError
                    self.answered += 1
            except trio.Cancelled:
                raise
            except Exception:
                self.refused += 1
                await trio.sleep(0)


def rate_limited(node: Node) -> int:
    return int(node.call("dht", "sys.status", timeout=5.0)["rate_limited"])


def test_a_flooding_peer_is_rate_limited_and_honest_messages_keep_flowing(
        node_factory: Any) -> None:
    alice, bob = node_factory.many(2, listen=LOOPBACK)
    conv = open_direct(alice, bob)
    wait_connected([alice, bob], conv)
    with DeliveryProbe(alice, bob, conv) as probe:
        probe.warm_up()
        quiet = [probe.deliver(f"quiet {i}") * 1000 for i in range(MESSAGES)]
        limited_before = rate_limited(bob)
        with KadFlood(bob) as flood:
            wait_for(lambda: rate_limited(bob) > limited_before + 100, 60,
                     "bob rate-limiting the flood", interval=0.5)
            flooded = [probe.deliver(f"flooded {i}") * 1000 for i in range(MESSAGES)]
            assert flood.error is None, flood.error
            assert bob.healthy()
        limited = rate_limited(bob) - limited_before
    print(f"\nflood: {flood.sent} FIND_NODE sent, {flood.answered} answered, "
          f"{limited} rate-limited by the node, {flood.refused} streams refused")
    print(f"honest DM latency p50/max: quiet {percentile(quiet, 0.5):.1f}/{max(quiet):.1f} ms, "
          f"during the flood {percentile(flooded, 0.5):.1f}/{max(flooded):.1f} ms")
    assert limited > 0 and flood.answered < flood.sent
    texts = [f"quiet {i}" for i in range(MESSAGES)] + [f"flooded {i}" for i in range(MESSAGES)]
    assert not check_history(bob, conv, texts)
    assert bob.healthy() and alice.healthy()
