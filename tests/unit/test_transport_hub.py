"""The transport's stream hub without a network: what it answers an owner it does not
know (one that has not registered with this transport process yet)."""

from __future__ import annotations

from typing import Any

import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from p2pm.common import errors
from p2pm.common.streams import frames as fr
from p2pm.services.transport.hub import StreamHub
from tests.helpers.stopping import nursery_cut_by_the_stop


class FakeSocket:
    """Stands in for the hub's ROUTER socket: records what it sends, to whom."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, fr.Frame]] = []

    async def send_multipart(self, parts: list[bytes]) -> None:
        self.sent.append((parts[0], fr.parse(parts[1:])))


async def no_connect(peer: Any, addrs: Any) -> None:
    raise AssertionError("an unregistered owner must not make the hub dial")


def make_hub() -> tuple[FakeSocket, StreamHub]:
    sock = FakeSocket()
    hub = StreamHub(None, sock, "epoch-2", max_streams_per_peer=8,  # type: ignore[arg-type]
                    connect=no_connect)
    return sock, hub


async def test_frames_of_an_unregistered_owner_on_a_stream_are_answered_with_reset() -> None:
    """After a transport restart, frames for streams of the previous process get a
    RESET at once instead of vanishing."""
    sock, hub = make_hub()
    ident = b"gossip/abc"
    await hub._on_frame(ident, fr.parse(fr.frame(fr.DATA, 7, b"hello")))
    await hub._on_frame(ident, fr.parse(fr.frame(fr.CREDIT, 9, fr.encode_uvarint(100))))
    await hub._on_frame(ident, fr.parse(fr.frame(fr.EOF, 11)))
    assert [(who, f.kind, f.sid) for who, f in sock.sent] == [
        (ident, fr.RESET, 7), (ident, fr.RESET, 9), (ident, fr.RESET, 11)]
    assert all(f.json()["code"] == errors.UNAVAILABLE for _, f in sock.sent)


async def test_an_unregistered_owner_gets_no_answer_to_its_own_reset() -> None:
    sock, hub = make_hub()
    await hub._on_frame(b"gossip/abc", fr.parse(fr.frame(fr.RESET, 7)))
    assert sock.sent == []  # answering a RESET with a RESET could ping-pong forever


async def test_an_unregistered_owner_cannot_open_a_stream() -> None:
    sock, hub = make_hub()
    await hub._on_frame(b"dht/abc", fr.parse(fr.frame(fr.OPEN, 1, {
        "peer": None, "addrs": [], "protocol": "/t/1", "spec": {}})))
    ((who, f),) = sock.sent
    assert who == b"dht/abc" and f.kind == fr.RESET and f.sid == 1


async def test_a_stream_whose_dial_is_cut_by_the_stop_leaves_the_stop_clean() -> None:
    """An owner asks for a stream as the transport stops: the dial's race (a nursery
    per address) is cancelled while one attempt fails, and ends in a group of that
    failure and Cancelled. The hub's stop must neither raise the failure nor hang."""
    in_flight = trio.Event()

    async def dial_cut_by_the_stop(peer: Any, addrs: Any) -> None:
        await nursery_cut_by_the_stop(OSError("socket closed while connecting"), in_flight)

    sock = FakeSocket()
    hub = StreamHub(None, sock, "epoch-2", max_streams_per_peer=8,  # type: ignore[arg-type]
                    connect=dial_cut_by_the_stop)
    ident = b"gossip/abc"
    peer = ID.from_pubkey(create_new_key_pair().public_key)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            hub._nursery = nursery
            await hub._on_frame(ident, fr.parse(fr.frame(fr.REGISTER, 0, {
                "owner": "gossip", "instance": "abc", "window": fr.DEFAULT_WINDOW,
                "protocols": {}})))
            await hub._on_frame(ident, fr.parse(fr.frame(fr.OPEN, 1, {
                "peer": str(peer), "addrs": [], "protocol": "/t/1", "spec": {}})))
            await in_flight.wait()
            nursery.cancel_scope.cancel()
    assert [f.kind for _, f in sock.sent] == [fr.WELCOME]  # the stream never opened
