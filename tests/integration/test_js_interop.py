"""p2pm against js-libp2p, a second libp2p implementation (tests/interop/js/peer.mjs
in Node.js: TCP, Noise, Yamux, identify, ping, Kademlia, GossipSub with StrictSign,
Circuit Relay v2).

Connections both ways with Noise and Yamux and each side identifying the other's
protocols; GossipSub messages both ways with each side verifying the other's
signatures, and js-libp2p relaying between two p2pm nodes; Kademlia: each side
finds, through the other, a peer only the other knows, and /pk/ records and provider
records written by one are read by the other; Circuit Relay v2: p2pm reserves on a js
relay and js on a p2pm relay, each reached through the other's relay. Skipped with the
reason when Node.js or the js packages are missing (`make setup-js` installs them; CI
runs it).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any

import base58
import pytest
import trio

from p2pm.common import identity, wire
from tests.helpers.gossip_node import open_gossip_node
from tests.helpers.transport_node import open_test_node
from tests.helpers.jspeer import JsPeer, js_peer_missing, open_js_peer
from tests.helpers.node import Node, await_for, running_node

pytestmark = pytest.mark.skipif(bool(js_peer_missing()),
                                reason=f"js-libp2p peer unavailable: {js_peer_missing()}")

TOPIC = "p2pm-js-interop"
MESH_PROTOCOLS = {"/meshsub/1.2.0", "/meshsub/1.1.0", "/meshsub/1.0.0"}


async def test_connections_both_ways_identify_each_other() -> None:
    async with open_gossip_node("jsconn") as node, open_js_peer() as js_in, \
            open_js_peer() as js_out:
        # js dials p2pm (p2pm answers the Noise handshake and the muxer negotiation).
        got = await js_in.call("dial", addr=node.addrs[0])
        assert got["peer"] == node.peer_id
        # p2pm dials js.
        dialled = await node.call("transport", "dial", {"addr": js_out.addrs[0]})
        assert dialled["peer_id"] == js_out.peer_id

        async def identified() -> list[dict]:
            peers = {p["peer_id"]: p for p in await node.call("transport", "peers")}
            both = [peers.get(js_in.peer_id), peers.get(js_out.peer_id)]
            return both if all(p and "/ipfs/kad/1.0.0" in p["protocols"]
                               for p in both) else []
        for entry in await node.wait_for(identified, "p2pm to identify both js peers"):
            assert MESH_PROTOCOLS & set(entry["protocols"])
            assert "/ipfs/ping/1.0.0" in entry["protocols"]

        async def seen_by(js: JsPeer) -> dict | None:
            for p in await js.call("peers"):
                if p["peer"] == node.peer_id and "/meshsub/1.1.0" in p["protocols"]:
                    return p
            return None
        for js in (js_in, js_out):
            entry = await node.wait_for(lambda js=js: seen_by(js),
                                        "js to identify p2pm's protocols")
            assert entry["encryption"] == "/noise"
            assert entry["multiplexer"] == "/yamux/1.0.0"
        assert (await js_in.call("ping", peer=node.peer_id))["ms"] >= 0


async def test_gossipsub_messages_both_ways_with_js_libp2p() -> None:
    async with open_gossip_node("jsgossip") as node, open_js_peer() as js:
        await node.call("gossip", "pubsub_subscribe", {"topic": TOPIC})
        await js.call("subscribe", topic=TOPIC)
        await js.call("dial", addr=node.addrs[0])

        async def meshed() -> bool:
            status = await node.call("gossip", "sys.status")
            return status["router"]["mesh"].get(TOPIC, 0) >= 1 and \
                node.peer_id in await js.call("meshPeers", topic=TOPIC)
        await node.wait_for(meshed, "a mesh on both sides")

        sent = await node.call("gossip", "pubsub_publish",
                               {"topic": TOPIC, "data": b"from p2pm"})
        assert sent["peers"] == 1
        got = await js.next_message(TOPIC)
        assert got["data"] == b"from p2pm"
        assert got["signed"] and got["from"] == node.peer_id

        assert await js.publish(TOPIC, b"from js-libp2p") == [node.peer_id]

        async def received() -> list[dict]:
            return await node.call("gossip", "pubsub_messages", {"topic": TOPIC})
        msgs = await node.wait_for(received, "js-libp2p's message at p2pm")
        assert [wire.b64d(m["data"]) for m in msgs] == [b"from js-libp2p"]
        assert msgs[0]["from"] == js.peer_id
        counters = (await node.call("gossip", "sys.status"))["router"]["counters"]
        assert counters.get("msg_invalid_signature", 0) == 0
        assert counters.get("msg_delivered") == 1
        assert node.gossip.router is not None
        peer = next(p for p in node.gossip.router._peers.values())
        assert peer.protocol == "/meshsub/1.2.0"  # both speak 1.2 (IDONTWANT)


async def test_js_libp2p_relays_p2pm_messages_between_p2pm_nodes() -> None:
    """alice - js - bob, alice and bob not connected: what each publishes reaches the
    other only if js-libp2p verified its signature and forwarded it, and p2pm takes a
    message from a peer that is not its author."""
    async with open_gossip_node("jsalice") as alice, open_gossip_node("jsbob") as bob, \
            open_js_peer() as js:
        await js.call("subscribe", topic=TOPIC)
        for node in (alice, bob):
            await node.call("gossip", "pubsub_subscribe", {"topic": TOPIC})
            await js.call("dial", addr=node.addrs[0])

        async def meshed() -> bool:
            mesh = set(await js.call("meshPeers", topic=TOPIC))
            for node in (alice, bob):
                status = await node.call("gossip", "sys.status")
                if status["router"]["mesh"].get(TOPIC, 0) < 1:
                    return False
            return {alice.peer_id, bob.peer_id} <= mesh
        await alice.wait_for(meshed, "js meshed with both p2pm nodes")
        assert not [p for p in await alice.call("transport", "peers")
                    if p["peer_id"] == bob.peer_id]

        for sender, receiver, text in ((alice, bob, b"alice via js"),
                                       (bob, alice, b"bob via js")):
            await sender.call("gossip", "pubsub_publish", {"topic": TOPIC, "data": text})

            async def arrived(receiver: Any = receiver, text: bytes = text) -> list[dict]:
                msgs = await receiver.call("gossip", "pubsub_messages", {"topic": TOPIC})
                return [m for m in msgs if wire.b64d(m["data"]) == text]
            got = await receiver.wait_for(arrived, f"{text!r} at the other p2pm node")
            assert got[0]["from"] == sender.peer_id


# -- Kademlia ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def p2pm_node() -> Iterator[Node]:
    with running_node(listen=["/ip4/127.0.0.1/tcp/0"]) as node:
        yield node


async def dht(node: Node, method: str, params: dict[str, Any] | None = None) -> Any:
    return await node.acall("dht", method, params, timeout=20.0, retries=0)


async def in_table(node: Node, peer_id: str) -> bool:
    table = await dht(node, "routing_table")
    return any(p["peer_id"] == peer_id for b in table["buckets"] for p in b["peers"])


def bare(addr: str) -> str:
    """An address without its /p2p/<peer id> tail (js-libp2p answers without it)."""
    return addr.split("/p2p/")[0]


async def test_kademlia_finds_peers_through_js_libp2p_and_back(p2pm_node: Node) -> None:
    """near <-> p2pm node <- behind; far -> near. Each side finds a peer it is not
    connected to through the other implementation."""
    async with open_js_peer() as near, open_js_peer() as far, open_js_peer() as behind:
        node_addr = (await p2pm_node.acall("transport", "addrs"))["addrs"][0]
        await near.call("dial", addr=node_addr)
        await behind.call("dial", addr=node_addr)
        await far.call("dial", addr=near.addrs[0])
        await await_for(lambda: in_table(p2pm_node, near.peer_id), "near in p2pm's table")
        await await_for(lambda: in_table(p2pm_node, behind.peer_id), "behind in p2pm's table")
        # js adds a peer to its table once identify shows it serves kad.
        await await_for(lambda: near.call("inTable", peer=far.peer_id), "far in near's table")
        await await_for(lambda: near.call("inTable", peer=p2pm_node.peer_id),
                    "the p2pm node in near's table")

        # js asks p2pm: near finds behind, which only the p2pm node knows.
        found = await near.call("findPeer", peer=behind.peer_id)
        assert bare(behind.addrs[0]) in map(bare, found["addrs"])

        # p2pm asks js: the node finds far, which only near knows...
        got = await dht(p2pm_node, "find_peer", {"peer_id": far.peer_id})
        assert bare(far.addrs[0]) in map(bare, got["addrs"])
        # ...and its transport can dial far by peer ID alone now.
        pong = await p2pm_node.acall("transport", "ping", {"peer_id": far.peer_id},
                                     timeout=15.0, retries=0)
        assert pong["rtt_ms"] > 0

        # far finds the p2pm node through near (js learnt it over kad from p2pm's
        # identify), and p2pm's closest-peers lookup walks through js peers.
        found = await far.call("findPeer", peer=p2pm_node.peer_id)
        assert bare(node_addr) in map(bare, found["addrs"])
        closest = await dht(p2pm_node, "closest_peers", {"key": far.peer_id})
        ids = [p["peer_id"] for p in closest["peers"]]
        assert ids[0] == far.peer_id and near.peer_id in ids



def cid_v0(data: bytes) -> str:
    """A CIDv0 ("Qm..."): the sha2-256 multihash of `data` in base58, which is also
    the provider key's base58 form p2pm takes."""
    return base58.b58encode(b"\x12\x20" + hashlib.sha256(data).digest()).decode()


async def test_records_and_providers_both_ways_with_js_libp2p(p2pm_node: Node) -> None:
    """PUT_VALUE/GET_VALUE of /pk/ records and ADD_PROVIDER/GET_PROVIDERS, each
    written by one implementation and read back by the other."""
    async with open_js_peer() as js:
        node_addr = (await p2pm_node.acall("transport", "addrs"))["addrs"][0]
        await js.call("dial", addr=node_addr)
        await await_for(lambda: in_table(p2pm_node, js.peer_id), "js in p2pm's table")
        await await_for(lambda: js.call("inTable", peer=p2pm_node.peer_id),
                    "the p2pm node in js's table")

        # js -> p2pm: js puts its key; the node validated and kept it, and serves it.
        await js.call("putOwnPk")
        got = await dht(p2pm_node, "get", {"key": f"/pk/{js.peer_id}"})
        assert base64.b64decode(got["value"]) == identity.public_key_proto(
            identity.public_key_from_peer_id(js.peer_id))

        # p2pm -> js: the node puts its key; js validated and kept it.
        key_proto = base64.b64decode(
            (await p2pm_node.acall("keystore", "identity"))["public_key_proto"])
        put = await dht(p2pm_node, "put", {"key": f"/pk/{p2pm_node.peer_id}",
                                           "value": base64.b64encode(key_proto).decode()})
        assert js.peer_id in put["stored_at"]
        assert base64.b64decode(await js.call("getPk", peer=p2pm_node.peer_id)) == key_proto

        # Providers, both ways.
        ours, theirs = cid_v0(b"provided by p2pm"), cid_v0(b"provided by js-libp2p")
        provided = await dht(p2pm_node, "provide", {"key": ours})
        assert js.peer_id in provided["sent_to"]
        found = await js.call("findProvider", cid=ours, want=p2pm_node.peer_id)
        assert found["found"], found
        await js.call("provide", cid=theirs)
        got = await dht(p2pm_node, "find_providers", {"key": theirs})
        assert js.peer_id in [p["peer_id"] for p in got["providers"]]


# -- Circuit Relay v2 -------------------------------------------------------------------

def circuit_addrs(addrs: list[str]) -> list[str]:
    return [a for a in addrs if "/p2p-circuit/" in a]


async def test_p2pm_reserves_on_a_js_relay_and_is_reached_through_it() -> None:
    """js relay; p2pm node `private` with that relay configured: it reserves a slot
    (HOP RESERVE to js), advertises the circuit address, and takes circuits js opens
    to it (STOP from js), from a js client and from another p2pm node."""
    async with open_js_peer(relay_server=True) as relay:
        private = {"reachability": "private", "relays": [relay.addrs[0]],
                   "holepunch": False}
        async with open_test_node("jsrelayed", transport_config=private) as node, \
                open_test_node("jsdialer", transport_config=private) as dialer, \
                open_js_peer() as client:
            async def advertised() -> list[str]:
                return circuit_addrs((await node.call("addrs"))["addrs"])
            addr = (await await_for(advertised, "a circuit address on the js relay"))[0]
            assert addr.startswith(relay.addrs[0] + "/p2p-circuit/")

            # A js client dials the circuit address: js relay -> STOP -> p2pm.
            assert (await client.call("dial", addr=addr))["peer"] == node.peer_id
            conn = next(p for p in await client.call("peers") if p["peer"] == node.peer_id)
            assert "/p2p-circuit" in conn["remoteAddr"]
            assert (await client.call("ping", peer=node.peer_id))["ms"] >= 0

            # Another p2pm node dials it the same way (HOP CONNECT to the js relay).
            await dialer.call("dial", {"addr": addr}, timeout=20)
            pong = await dialer.call("ping", {"peer_id": node.peer_id}, timeout=15)
            assert pong["rtt_ms"] > 0
            entry = await dialer.call("peer_info", {"peer_id": node.peer_id})
            assert entry["relayed"]


async def test_js_reserves_on_a_p2pm_relay_and_is_reached_through_it() -> None:
    """p2pm relay; a js client listens on "<p2pm relay>/p2p-circuit" (HOP RESERVE to
    p2pm) and is reached through it by a p2pm node and by another js client (HOP
    CONNECT to p2pm, STOP from p2pm to js)."""
    relay_cfg = {"relay_service": True, "reachability": "public"}
    async with open_test_node("jsrelay", transport_config=relay_cfg) as relay:
        relay_addr = relay.addrs[0]
        async with open_js_peer(listen=[f"{relay_addr}/p2p-circuit"]) as target, \
                open_js_peer() as client, \
                open_test_node("jsdialer2", transport_config={"holepunch": False}) as dialer:
            async def advertised() -> list[str]:
                return circuit_addrs(await target.call("addrs"))
            addr = (await await_for(advertised, "js to hold a reservation on p2pm"))[0]
            assert addr.startswith(relay_addr + "/p2p-circuit/")
            status = (await relay.call("sys.status"))["nat"]["relay_service"]
            assert status["reservations"] == 1

            assert (await client.call("dial", addr=addr))["peer"] == target.peer_id
            assert (await client.call("ping", peer=target.peer_id))["ms"] >= 0

            await dialer.call("dial", {"addr": addr}, timeout=20)
            pong = await dialer.call("ping", {"peer_id": target.peer_id}, timeout=15)
            assert pong["rtt_ms"] > 0
            assert (await relay.call("sys.status"))["nat"]["relay_service"]["circuits"] == 2
