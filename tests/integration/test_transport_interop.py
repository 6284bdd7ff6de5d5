"""A p2pm transport against py-libp2p's reference host (`new_host()`, in the test's
trio loop): Noise + Yamux both ways, identify and ping; plaintext is refused."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.host.ping import PingService
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

from p2pm.common import errors
from tests.helpers.transport_node import open_test_node

LOOPBACK = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]


@asynccontextmanager
async def reference_host(**kw: object) -> AsyncIterator[IHost]:
    host = new_host(**kw)  # type: ignore[arg-type]
    async with host.run(listen_addrs=LOOPBACK):
        yield host


async def test_reference_host_dials_identifies_and_pings_a_p2pm_node() -> None:
    async with open_test_node("p2pm") as node, reference_host() as ref:
        await ref.connect(info_from_p2p_addr(multiaddr.Multiaddr(node.addrs[0])))
        p2pm_id = ID.from_base58(node.peer_id)
        conn = ref.get_network().get_connections(p2pm_id)[0]
        assert type(conn.muxed_conn).__name__ == "Yamux"
        # The session's framing is Noise's (py-libp2p records no protocol name on it).
        assert "noise" in type(conn.muxed_conn.secured_conn.conn).__module__
        # identify gave the reference host our protocols and a record signed by the
        # keystore (it validates the envelope's signature against our peer id).
        with trio.fail_after(5):
            while "/ipfs/ping/1.0.0" not in ref.get_peerstore().get_protocols(p2pm_id):
                await trio.sleep(0.02)
        assert ref.get_peerstore().get_peer_record(p2pm_id) is not None
        rtts = await PingService(ref).ping(p2pm_id, 3)
        assert len(rtts) == 3
        # ...and the node saw it connect and can ping back over the same connection.
        pong = await node.call("ping", {"peer_id": str(ref.get_id())})
        assert pong["rtt_ms"] > 0


async def test_p2pm_node_dials_and_pings_a_reference_host() -> None:
    async with open_test_node("p2pm") as node, reference_host() as ref:
        addr = str(ref.get_addrs()[0])
        dialled = await node.call("dial", {"addr": addr})
        assert dialled["peer_id"] == str(ref.get_id())
        pong = await node.call("ping", {"peer_id": str(ref.get_id()), "count": 2})
        assert len(pong["rtts_ms"]) == 2
        with trio.fail_after(5):
            while True:
                info = await node.call("peer_info", {"peer_id": str(ref.get_id())})
                if "/ipfs/ping/1.0.0" in info["protocols"]:
                    break
                await trio.sleep(0.02)


async def test_a_write_cancelled_as_it_begins_still_leaves_the_connection_usable() -> None:
    """Noise spends a frame's nonce when it encrypts it: a write cancelled after that (a
    timeout firing, a relayed circuit torn down while data flows) must still go out
    whole, or every later frame fails to decrypt at the peer, which drops the connection
    with every stream and relayed circuit on it."""
    async with open_test_node("p2pm") as node, reference_host() as ref:
        await node.call("dial", {"addr": str(ref.get_addrs()[0])})
        conn = node.transport.node.host.get_network().get_connections(ref.get_id())[0]
        # A Yamux ping (version 0, type 2, flag SYN, session stream 0, opaque value 7).
        frame = struct.pack(">BBHII", 0, 2, 1, 0, 7)
        with trio.CancelScope() as scope:
            scope.cancel()
            await conn.muxed_conn.secured_conn.write(frame)
        # The connection still carries streams both ways.
        pong = await node.call("ping", {"peer_id": str(ref.get_id()), "count": 2})
        assert len(pong["rtts_ms"]) == 2
        assert len(await PingService(ref).ping(ID.from_base58(node.peer_id), 2)) == 2


async def test_plaintext_only_host_cannot_connect_either_way() -> None:
    key_pair = create_new_key_pair()
    plaintext = {PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)}
    async with open_test_node("p2pm") as node, \
            reference_host(key_pair=key_pair, sec_opt=plaintext) as ref:
        with pytest.raises(Exception):
            with trio.fail_after(15):
                await ref.connect(info_from_p2p_addr(multiaddr.Multiaddr(node.addrs[0])))
        assert not node.transport.node.host.get_connected_peers()
        with pytest.raises(errors.BusError) as info:
            await node.call("dial", {"addr": str(ref.get_addrs()[0])}, retries=0, timeout=15)
        assert info.value.code == errors.UNAVAILABLE
        assert not ref.get_network().get_connections()


async def test_mplex_is_accepted_only_as_a_fallback() -> None:
    from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex

    async with open_test_node("p2pm") as node, \
            reference_host(muxer_opt={MPLEX_PROTOCOL_ID: Mplex}) as ref:
        await ref.connect(info_from_p2p_addr(multiaddr.Multiaddr(node.addrs[0])))
        conn = ref.get_network().get_connections(ID.from_base58(node.peer_id))[0]
        assert type(conn.muxed_conn).__name__ == "Mplex"
        assert (await node.call("ping", {"peer_id": str(ref.get_id())}))["rtt_ms"] > 0
