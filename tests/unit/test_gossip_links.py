"""Our meshsub link to a peer whose gossip restarted comes back, whatever order the
news arrives in. While the peer's gossip is down its identify lists no meshsub; when
it is up again identify says so and its own stream reaches us. Both can come while our
link task is still trying, and must not be lost (they were: the task gave up having
nothing to offer, nobody tried again, and the peer never heard from us again:
test_both_directions_recover_after_each_gossip_restart failed so under load).
Virtual time: the clock jumps while everything waits."""

from __future__ import annotations

import logging
import types
from typing import Any

import trio
from trio.testing import MockClock

from p2pm.common.streams import StreamError
from p2pm.services.gossip.links import LINK_RETRIES, MESH_PROTOCOLS, Links
from tests.helpers.identities import BOB, ME

IDENTIFY = "/ipfs/id/1.0.0"


class Router:
    def __init__(self) -> None:
        self.peers: dict[bytes, str] = {}

    def pending_peers(self) -> list[bytes]:
        return []

    def add_peer(self, pb: bytes, protocol: str, outbound: bool, now: float) -> None:
        self.peers[pb] = protocol

    def remove_peer(self, pb: bytes, now: float) -> list[Any]:
        self.peers.pop(pb, None)
        return []

    def flush(self, peers: list[bytes]) -> list[Any]:
        return []


class Stream:
    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.gone = trio.Event()

    async def receive(self) -> bytes:
        await self.gone.wait()
        raise trio.EndOfChannel

    async def send(self, data: bytes) -> None:
        pass

    async def reset(self) -> None:
        self.gone.set()


class Peer:
    """The transport's view of BOB: which meshsub versions its gossip serves now."""

    def __init__(self) -> None:
        self.serving: list[str] = []
        self.opened: list[Stream] = []

    async def open_stream(self, protocol: str, peer: str, timeout: float) -> Stream:
        await trio.sleep(0.05)
        if protocol not in self.serving:
            raise StreamError("unavailable", "protocol not supported")
        stream = Stream(protocol)
        self.opened.append(stream)
        return stream


def links_in(nursery: trio.Nursery, peer: Peer) -> Links:
    ctx = types.SimpleNamespace(me=ME, router=Router(), started=True, kick=lambda: None,
                                log=logging.getLogger("test"), now=trio.current_time,
                                spawn=nursery.start_soon)
    links = Links(ctx, types.SimpleNamespace(by_topic={}), lambda events, peer: None,
                  sync_with=None)  # type: ignore[arg-type]
    links.streams = peer
    return links


def up(links: Links) -> bool:
    link = links.links.get(BOB)
    return link is not None and link.outbound


async def wait_until(condition: Any, seconds: float) -> bool:
    with trio.move_on_after(seconds):
        while not condition():
            await trio.sleep(0.1)
        return True
    return False


def test_a_peer_whose_gossip_comes_back_while_we_retry_gets_our_stream() -> None:
    async def main() -> None:
        peer = Peer()
        async with trio.open_nursery() as nursery:
            links = links_in(nursery, peer)
            # its gossip is down: identify lists no meshsub
            links.identified(BOB, [IDENTIFY])
            links.peer_up(BOB, [IDENTIFY])
            await trio.sleep(3.0)  # our task waited for meshsub, then gave up offering
            # its gossip is back: identify says so (the actor then calls peer_up)
            peer.serving = list(MESH_PROTOCOLS)
            links.identified(BOB, [IDENTIFY, *MESH_PROTOCOLS])
            links.peer_up(BOB, links.protocols[BOB])
            assert await wait_until(lambda: up(links), 30), "no stream to the peer"
            assert [s.protocol for s in peer.opened] == [MESH_PROTOCOLS[0]]
            nursery.cancel_scope.cancel()

    trio.run(main, clock=MockClock(autojump_threshold=0))


def test_a_peer_whose_stream_reaches_us_while_we_retry_gets_ours() -> None:
    """Identify still says what it said before the restart (meshsub), our opens are
    refused until the peer's gossip registers, which takes longer than our retries;
    its own stream arriving meanwhile is the news that it is up."""
    async def main() -> None:
        peer = Peer()
        async with trio.open_nursery() as nursery:
            links = links_in(nursery, peer)
            links.identified(BOB, [IDENTIFY, *MESH_PROTOCOLS])
            links.peer_up(BOB, links.protocols[BOB])
            await trio.sleep(sum(LINK_RETRIES) - 1)  # still retrying
            peer.serving = list(MESH_PROTOCOLS)
            links.peer_up(BOB, links.protocols[BOB])  # as serve_inbound does
            assert await wait_until(lambda: up(links), 30), "no stream to the peer"
            nursery.cancel_scope.cancel()

    trio.run(main, clock=MockClock(autojump_threshold=0))


def test_a_peer_that_offers_no_meshsub_is_not_asked_for_it() -> None:
    """A DHT-only libp2p peer: nothing to open, and nothing tried again and again."""
    async def main() -> None:
        peer = Peer()
        attempts: list[str] = []
        opened = peer.open_stream

        async def counting(protocol: str, peer: str, timeout: float) -> Stream:
            attempts.append(protocol)
            return await opened(protocol, peer, timeout)

        peer.open_stream = counting  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            links = links_in(nursery, peer)
            links.identified(BOB, [IDENTIFY, "/ipfs/kad/1.0.0"])
            links.peer_up(BOB, links.protocols[BOB])
            await trio.sleep(60)
            assert attempts == [] and not up(links)
            assert not links.links.get(BOB) or not links.links[BOB].starting
            nursery.cancel_scope.cancel()

    trio.run(main, clock=MockClock(autojump_threshold=0))
