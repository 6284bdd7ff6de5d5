"""A p2pm node (real processes under supervisord) against py-libp2p's own Kademlia
(`libp2p.kad_dht.KadDHT` on reference hosts in the test's trio loop): find-peer,
closest-peers and put/get of a /pk/ record both ways; and hostile input written on a
raw `/ipfs/kad/1.0.0` stream, refused with no crash and no state change.

One node serves the whole module: its start costs more than all the assertions."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import pytest
import trio
import varint
import zmq
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamReset
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.tools.anyio_service import background_trio_service

from p2pm.common import errors
from p2pm.common import protobuf as pb
from p2pm.common.client import open_client
from p2pm.services.dht.messages import Message, MessageType, Record, encode_message
from p2pm.services.dht.records import SignedValue
from tests.helpers import Node, await_for, running_node

pytestmark = pytest.mark.slow

KAD = "/ipfs/kad/1.0.0"
LOOPBACK = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
DEADLINE = 20.0


@pytest.fixture(scope="module")
def p2pm_node() -> Iterator[Node]:
    with running_node(listen=["/ip4/127.0.0.1/tcp/0"]) as node:
        yield node


@asynccontextmanager
async def reference_dht() -> AsyncIterator[tuple[IHost, KadDHT]]:
    host = new_host()
    async with host.run(listen_addrs=LOOPBACK):
        dht = KadDHT(host, DHTMode.SERVER)
        async with background_trio_service(dht):
            yield host, dht


async def call(node: Node, method: str, params: dict[str, Any] | None = None,
               timeout: float = 15.0, actor: str = "dht") -> Any:
    # The error is raised outside the client's nursery, so it is not wrapped in a group.
    async with open_client(zmq.Context.instance(), node.home.endpoints().rpc(actor),
                           actor) as client:
        try:
            return await client.call(method, params, timeout=timeout, retries=0)
        except errors.BusError as exc:
            failure = exc
    raise failure


def log_tail(node: Node, actor: str, lines: int = 40) -> str:
    try:
        text = (node.home.logs / f"{actor}.log").read_text(errors="replace")
    except OSError as exc:
        return f"({actor}.log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


async def why_not_in_table(node: Node, peer_id: str) -> str:
    """What the node's transport and dht know of the peer, and their logs' tails."""
    out = []
    for actor, method, params in (("transport", "peer_info", {"peer_id": peer_id}),
                                  ("dht", "sys.status", None),
                                  ("dht", "routing_table", None)):
        try:
            out.append(f"{actor}.{method}: {await call(node, method, params, actor=actor)}")
        except errors.BusError as exc:
            out.append(f"{actor}.{method}: {exc}")
    out += [f"--- {a}.log\n{log_tail(node, a)}" for a in ("transport", "dht")]
    return "\n".join(out)


async def connect(ref: IHost, node: Node) -> None:
    addrs = (await node.acall("transport", "addrs"))["addrs"]
    await ref.connect(info_from_p2p_addr(multiaddr.Multiaddr(addrs[0])))


async def in_table(node: Node, peer_id: str) -> bool:
    table = await call(node, "routing_table")
    return any(p["peer_id"] == peer_id for b in table["buckets"] for p in b["peers"])


def pk_key(peer: ID) -> str:
    return "/pk/" + peer.to_bytes().hex()  # py-libp2p's form of the /pk/ key


async def test_put_and_get_a_pk_record_both_ways(p2pm_node: Node) -> None:
    async with reference_dht() as (ref, ref_dht):
        await connect(ref, p2pm_node)
        await ref_dht.add_peer(ID.from_base58(p2pm_node.peer_id))
        await await_for(lambda: in_table(p2pm_node, str(ref.get_id())), "ref in table",
                        DEADLINE, lambda: why_not_in_table(p2pm_node, str(ref.get_id())))

        # p2pm -> py-libp2p: the node publishes its own key; py-libp2p validates and keeps it.
        p2pm_id = ID.from_base58(p2pm_node.peer_id)
        key_proto = _unb64((await p2pm_node.acall("keystore", "identity"))["public_key_proto"])
        put = await call(p2pm_node, "put", {"key": pk_key(p2pm_id),
                                            "value": _b64(key_proto)})
        assert str(ref.get_id()) in put["stored_at"]
        with trio.fail_after(DEADLINE):
            assert await ref_dht.get_value(pk_key(p2pm_id)) == key_proto

        # py-libp2p -> p2pm: the reference host publishes its key; the node serves it.
        ref_proto = ref.get_public_key().serialize()
        with trio.fail_after(DEADLINE):
            await ref_dht.put_value(pk_key(ref.get_id()), ref_proto)
        got = await call(p2pm_node, "get", {"key": pk_key(ref.get_id())})
        assert _unb64(got["value"]) == ref_proto

        # A /pk/ record that is not the key of its peer ID is refused by both.
        with pytest.raises(errors.BusError) as refused:
            await call(p2pm_node, "put", {"key": pk_key(ref.get_id()),
                                          "value": _b64(key_proto)})
        assert refused.value.code == errors.FORBIDDEN


async def test_find_and_closest_peers_both_ways(p2pm_node: Node) -> None:
    """near <-> p2pm node; far is connected only to near. Each side finds the peer
    it is not connected to through the other implementation."""
    async with reference_dht() as (near, near_dht), reference_dht() as (far, far_dht):
        await connect(near, p2pm_node)
        await far.connect(info_from_p2p_addr(near.get_addrs()[0]))
        await near_dht.add_peer(far.get_id())
        await far_dht.add_peer(near.get_id())
        # The node puts a reference peer in its table once identify shows it speaks kad.
        await await_for(lambda: in_table(p2pm_node, str(near.get_id())), "near in table",
                        DEADLINE)

        # far finds the p2pm node through near, which learnt it from its kad streams.
        p2pm_id = ID.from_base58(p2pm_node.peer_id)
        assert not far.get_network().get_connections(p2pm_id)
        with trio.fail_after(DEADLINE):
            info = await far_dht.find_peer(p2pm_id)
        assert info is not None and info.addrs

        # p2pm finds far through near (py-libp2p names far with its addresses)...
        found = await call(p2pm_node, "find_peer", {"peer_id": str(far.get_id())})
        assert found["peer_id"] == str(far.get_id())
        far_port = far.get_addrs()[0].value_for_protocol("tcp")
        assert f"/ip4/127.0.0.1/tcp/{far_port}/p2p/{far.get_id()}" in found["addrs"]
        # ...and told its transport, which can now dial far by peer ID alone.
        pong = await p2pm_node.acall("transport", "ping", {"peer_id": str(far.get_id())},
                                     timeout=15.0, retries=0)
        assert pong["rtt_ms"] > 0

        # closest peers: each implementation's lookup returns the other's peers.
        closest = await call(p2pm_node, "closest_peers", {"key": str(far.get_id())})
        ids = [p["peer_id"] for p in closest["peers"]]
        assert ids[0] == str(far.get_id()) and str(near.get_id()) in ids
        with trio.fail_after(DEADLINE):
            theirs = await far_dht.peer_routing.find_closest_peers_network(p2pm_id.to_bytes())
        assert p2pm_id in theirs


# -- hostile input on a raw stream ------------------------------------------------------

async def exchange(host: IHost, peer: ID, payload: bytes) -> tuple[list[bytes], bool]:
    """Write raw bytes on a fresh kad stream and close our side; the reply messages
    read back, and whether the node reset the stream (rather than closing it)."""
    stream: INetStream = await host.new_stream(peer, [KAD])  # type: ignore[list-item]
    data, reset = b"", False
    try:
        await stream.write(payload)
        await stream.close_write()  # what we sent is all there is
        with trio.fail_after(10):
            while chunk := await stream.read(65536):
                data += chunk
    except StreamEOF:
        # py-libp2p's Yamux forgets a stream on RST and reports EOF; its flag tells.
        reset = bool(getattr(stream.muxed_stream, "reset_received", False))
    except (StreamReset, StreamClosed):
        reset = True
    finally:
        with trio.move_on_after(1):
            try:
                await stream.close()
            except Exception:
                pass
    messages = []
    while data:
        size = varint.decode_bytes(data)
        start = len(varint.encode(size))
        if len(data) < start + size:
            break
        messages.append(data[start:start + size])
        data = data[start + size:]
    return messages, reset


def delimited(msg: Message | bytes) -> bytes:
    body = msg if isinstance(msg, bytes) else encode_message(msg)
    return varint.encode(len(body)) + body


async def test_hostile_input_is_refused_without_crash_or_state_change(p2pm_node: Node) -> None:
    before = await p2pm_node.acall("dht", "sys.status")
    host = new_host()
    async with host.run(listen_addrs=LOOPBACK):
        await connect(host, p2pm_node)
        node_id = ID.from_base58(p2pm_node.peer_id)
        ping = delimited(Message(type=MessageType.PING))
        assert await exchange(host, node_id, ping) == ([encode_message(
            Message(type=MessageType.PING))], False)  # a good request is answered

        owner = ID.from_base58(p2pm_node.peer_id).to_bytes()
        p2pm_key = b"/p2pm/profile/" + owner
        forged = pb.encode(SignedValue(owner, 1, 4_000_000_000, b"hi", b"\x00" * 64))
        hostile = {
            "not protobuf": delimited(b"\xff\xff\xff\xff"),
            "wrong wire type": delimited(b"\x0a\x02\x08\x01"),  # field 1 as bytes
            "unknown type": delimited(b"\x08\x63"),
            "oversized": delimited(b"\x12" + varint.encode(200_000) + b"k" * 200_000),
            "unknown namespace": delimited(Message(
                type=MessageType.PUT_VALUE, key=b"/evil/x",
                record=Record(key=b"/evil/x", value=b"v"))),
            "plain key": delimited(Message(
                type=MessageType.PUT_VALUE, key=b"plain",
                record=Record(key=b"plain", value=b"v"))),
            "bad signature": delimited(Message(
                type=MessageType.PUT_VALUE, key=p2pm_key,
                record=Record(key=p2pm_key, value=forged))),
            "record too big": delimited(Message(
                type=MessageType.PUT_VALUE, key=p2pm_key,
                record=Record(key=p2pm_key, value=b"x" * 20_000))),
            "truncated": varint.encode(50) + b"\x08\x01",
        }
        for what, payload in hostile.items():
            assert await exchange(host, node_id, payload) == ([], True), what

        # A flood from one peer (pipelined on one stream, so the clock cannot refill
        # its budget meanwhile): served up to its burst, then cut off with a reset.
        served = (await p2pm_node.acall("dht", "sys.status"))["inbound_requests"]
        _, reset = await exchange(host, node_id, ping * 200)
        assert reset
        flood = await p2pm_node.acall("dht", "sys.status")
        assert 0 < flood["inbound_requests"] - served < 200

    after = await p2pm_node.acall("dht", "sys.status")
    assert after["pid"] == before["pid"], "the dht actor restarted"
    assert after["records"] == before["records"]
    assert after["inbound_rejected"] >= before["inbound_rejected"] + len(hostile) - 2
    assert after["rate_limited"] > before["rate_limited"]
    with pytest.raises(errors.BusError) as missing:
        await call(p2pm_node, "get", {"key": "/p2pm/profile/" + p2pm_node.peer_id})
    assert missing.value.code == errors.NOT_FOUND
    # and the node still serves another peer at once
    other = new_host()
    async with other.run(listen_addrs=LOOPBACK):
        await connect(other, p2pm_node)
        answers, _ = await exchange(other, ID.from_base58(p2pm_node.peer_id), ping)
        assert len(answers) == 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)
