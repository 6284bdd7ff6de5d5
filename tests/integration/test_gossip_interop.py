"""The gossip actor against py-libp2p's own GossipSub (Pubsub + GossipSub on a
py-libp2p host in the test's trio loop, heartbeat 1 s, strict signing): messages go
both ways on a shared topic, each side verifying the other's signatures."""

from __future__ import annotations

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from p2pm.common import wire
from tests.helpers.gossip_node import open_gossip_node

TOPIC = "p2pm-interop-test"


async def test_messages_flow_both_ways_with_py_libp2p_gossipsub() -> None:
    host = new_host(key_pair=create_new_key_pair())
    router = GossipSub(protocols=[PROTOCOL_ID_V11, PROTOCOL_ID], degree=6, degree_low=4,
                       degree_high=12, heartbeat_interval=1,
                       spam_protection_enabled=False)
    pubsub = Pubsub(host, router, strict_signing=True)
    async with open_gossip_node("interop") as node, \
            host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]), \
            background_trio_service(pubsub), background_trio_service(router):
        await pubsub.wait_until_ready()
        sub = await pubsub.subscribe(TOPIC)
        await node.call("gossip", "pubsub_subscribe", {"topic": TOPIC})
        await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(node.addrs[0])))
        ref_id = host.get_id()

        # Both sides know the other subscribes (and p2pm has grafted it) before
        # publishing, so neither message depends on gossip timing.
        node_id = info_from_p2p_addr(multiaddr.Multiaddr(node.addrs[0])).peer_id

        async def ready() -> bool:
            status = await node.call("gossip", "sys.status")
            return status["router"]["mesh"].get(TOPIC, 0) >= 1 and \
                node_id in pubsub.peer_topics.get(TOPIC, set())
        await node.wait_for(ready, "a mesh on both sides")

        sent = await node.call("gossip", "pubsub_publish",
                               {"topic": TOPIC, "data": b"from p2pm"})
        assert sent["peers"] == 1
        with trio.fail_after(10):
            got = await sub.get()
        assert got.data == b"from p2pm"
        assert got.from_id == node_id.to_bytes()

        await pubsub.publish(TOPIC, b"from py-libp2p")

        async def received() -> list[dict]:
            return await node.call("gossip", "pubsub_messages", {"topic": TOPIC})
        msgs = await node.wait_for(received, "py-libp2p's message at p2pm")
        assert [wire.b64d(m["data"]) for m in msgs] == [b"from py-libp2p"]
        assert msgs[0]["from"] == str(ref_id)
        counters = (await node.call("gossip", "sys.status"))["router"]["counters"]
        assert counters.get("msg_invalid_signature", 0) == 0
        assert counters.get("msg_delivered") == 1
        # py-libp2p took our message as validly signed: it would drop it otherwise.
        assert node.gossip.router is not None
        protocol = node.gossip.router._peers[ref_id.to_bytes()].protocol
        assert protocol in ("/meshsub/1.1.0", "/meshsub/1.0.0")
