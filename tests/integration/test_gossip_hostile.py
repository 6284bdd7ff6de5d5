"""Hostile input against the gossip actor: malformed RPCs from local clients, and from a
peer (mallory, speaking raw meshsub and sync through her own transport) garbage frames,
invalid signatures, envelopes under the wrong key, a non-member in a direct chat, a
forged author, replays and a flood. Mallory is no member, so the chat's private topic
drops all of it at the router's gate, before any decoding of messages or signature
work, and counts it; alice's messages to bob keep arriving exactly once."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import zmq

from p2pm.common import actor_tokens, errors, wire
from p2pm.common.client import open_client
from p2pm.services.gossip import conversations as cv
from p2pm.services.gossip import sync
from p2pm.services.gossip.context import peer_bytes
from p2pm.services.gossip.router.messages import RPC, Message, SubOpts, encode, signing_data
from tests.helpers.gossip_node import GossipNode, open_gossip_node
from p2pm.common.streams import ProtocolSpec, StreamReset, open_streams
from tests.helpers.transport_node import LocalNode, open_test_node

MESH = "/meshsub/1.1.0"


@asynccontextmanager
async def chat() -> AsyncIterator[tuple[GossipNode, GossipNode, dict[str, Any]]]:
    async with open_gossip_node("alice") as alice, open_gossip_node("bob") as bob:
        conv = await alice.call("gossip", "direct_open",
                                {"peer_id": bob.peer_id, "addrs": bob.addrs})
        await bob.call("gossip", "direct_open", {"peer_id": alice.peer_id})
        yield alice, bob, conv


async def _bob_history(bob: GossipNode, conv: str) -> list[dict[str, Any]]:
    return await bob.call("gossip", "history", {"conversation": conv})


async def test_malformed_rpcs_get_clear_errors_and_store_nothing() -> None:
    async with chat() as (alice, bob, conv):
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("post", {"conversation": conv["id"], "text": ""}, errors.BAD_PARAMS),
            ("post", {"conversation": conv["id"], "text": "  \n"}, errors.BAD_PARAMS),
            ("post", {"conversation": conv["id"], "text": "x" * (16 * 1024 + 1)},
             errors.BAD_PARAMS),
            ("post", {"conversation": conv["id"], "text": 5}, errors.BAD_PARAMS),
            ("post", {"conversation": "nope", "text": "hi"}, errors.NOT_FOUND),
            ("room_join", {"invite": "p2pm-invite1:garbage"}, errors.FORBIDDEN),
            ("room_join", {"invite": ""}, errors.BAD_PARAMS),
            ("direct_open", {"peer_id": "not-a-peer"}, errors.BAD_PARAMS),
            ("direct_open", {"peer_id": alice.peer_id}, errors.BAD_PARAMS),
            ("history", {"conversation": conv["id"], "limit": 0}, errors.BAD_PARAMS),
            ("room_invite", {"conversation": conv["id"]}, errors.BAD_PARAMS),
            ("pubsub_subscribe", {"topic": ""}, errors.BAD_PARAMS),
        ]
        for method, params, code in cases:
            with pytest.raises(errors.BusError) as info:
                await alice.call("gossip", method, params)
            assert info.value.code == code, (method, params, info.value)
        assert await alice.call("gossip", "history", {"conversation": conv["id"]}) == []
        # A tampered invite names what is wrong.
        room = await alice.call("gossip", "room_create", {"name": "ops"})
        body, sig = room["invite"].split(".")
        with pytest.raises(errors.BusError, match="signature|garbled"):
            await bob.call("gossip", "room_join", {"invite": body + "." + sig[::-1]})
        # Joining twice is harmless.
        one = await bob.call("gossip", "room_join", {"invite": room["invite"]})
        two = await bob.call("gossip", "room_join", {"invite": room["invite"]})
        assert one == two == {"id": room["id"], "name": "ops", "kind": "room"}


async def _mallory_sign(mallory: LocalNode, data: bytes) -> bytes:
    async with open_client(zmq.Context.instance(), mallory.endpoints.rpc("keystore"),
                           "keystore") as ks:
        got = await ks.call("sign", {"domain": "libp2p-pubsub:", "data": data},
                            auth=actor_tokens.auth_for(mallory.endpoints, "gossip"))
    return wire.b64d(got["signature"])


async def test_a_hostile_peer_is_rejected_counted_and_penalised() -> None:
    async with chat() as (alice, bob, conv), open_test_node("mallory") as mallory, \
            open_streams(mallory.endpoints, "evil", {MESH: ProtocolSpec(messages=True)}) \
            as streams:
        first = await alice.call("gossip", "post", {"conversation": conv["id"], "text": "1"})
        await bob.wait_for(lambda: _bob_history(bob, conv["id"]), "alice's first message")
        bob_conv = bob.gossip.convs[conv["id"]]
        topic, keys = bob_conv.keys.topic, bob_conv.keys
        me = peer_bytes(mallory.peer_id)
        seqno = iter(range(1, 10_000))

        async def signed(data: bytes, *, author: bytes = me, topic: str = topic) -> Message:
            msg = Message(from_=author, data=data, seqno=next(seqno).to_bytes(8, "big"),
                          topic=topic)
            return dataclasses.replace(msg, signature=await _mallory_sign(
                mallory, signing_data(msg)))

        def frame(*msgs: Message, subscribe: bool = False) -> bytes:
            subs = (SubOpts(subscribe=True, topicid=topic),) if subscribe else ()
            return encode(RPC(subscriptions=subs, publish=tuple(msgs)))

        stream = await streams.open_stream(MESH, peer=bob.peer_id, addrs=bob.addrs)
        await stream.send(frame(subscribe=True))
        await stream.send(b"\xff\xff\xff garbage")
        # Mallory does not hold the direct chat's key: her envelope cannot be opened.
        wrong_key = await signed(os.urandom(120))
        # A GossipSub signature that is not the author's.
        bad_sig = dataclasses.replace(await signed(b"x"), signature=bytes(64))
        # Even with the key (leaked), mallory is not a member of alice and bob's chat.
        m_plain = cv.message_plaintext(keys.id, mallory.peer_id, 1, 1.0, "let me in")
        async with open_client(zmq.Context.instance(), mallory.endpoints.rpc("keystore"),
                               "keystore") as ks:
            m_sig = wire.b64d((await ks.call("sign", {
                "domain": cv.MESSAGE_DOMAIN, "data": m_plain},
                auth=actor_tokens.auth_for(mallory.endpoints, "gossip")))["signature"])
        non_member = await signed(cv.seal(keys.content_key, m_sig, m_plain))
        # Alice's genuine envelope, replayed by mallory: the author is not the sender.
        stored = await bob.call("storage", "message_get", {"id": first["id"]})
        replayed = await signed(wire.b64d(stored["body"]))
        # Mallory is no member: the chat's topic is private, so all four are dropped
        # before any decoding or signature check (what a member's invalid messages
        # cost it is tested on the validation hook and the router without sockets),
        # and her subscription is only a claim.
        await stream.send(frame(wrong_key, bad_sig, non_member, replayed))

        async def counted() -> dict[str, int]:
            status = await bob.call("gossip", "sys.status")
            c = {**status["router"]["counters"], **status["counters"]}
            ok = c.get("rpc_malformed") and c.get("msg_not_admitted", 0) >= 4 \
                and c.get("subscription_not_admitted")
            return c if ok else {}
        got = await bob.wait_for(counted, "every hostile message counted")
        for never in ("rejected_envelope", "msg_invalid_signature", "rejected_non_member",
                      "rejected_author_mismatch"):
            assert not got.get(never), never  # not one reached the costly checks

        # A flood of junk on the chat's topic: each costs a set lookup, none gets in.
        junk = await signed(os.urandom(64))
        for _ in range(200):
            await stream.send(frame(dataclasses.replace(junk, seqno=os.urandom(8))))

        async def flood_dropped() -> bool:
            status = await bob.call("gossip", "sys.status")
            return status["router"]["counters"].get("msg_not_admitted", 0) >= 204
        await bob.wait_for(flood_dropped, "the flood dropped at the gate")

        # A sync without the conversation's secret is refused.
        async with open_streams(mallory.endpoints, "evil-sync",
                                {sync.PROTOCOL: ProtocolSpec(messages=True)}) as s2:
            probe = await s2.open_stream(sync.PROTOCOL, peer=bob.peer_id)
            await probe.send(sync.encode(sync.Open(os.urandom(sync.NONCE_BYTES))))
            assert isinstance(sync.decode(await probe.receive()), sync.Open)
            await probe.send(sync.encode(sync.Proof(os.urandom(sync.PROOF_BYTES))))
            with pytest.raises((StreamReset, trio.EndOfChannel)):
                with trio.fail_after(10):
                    await probe.receive()
        status = await bob.call("gossip", "sys.status")
        assert status["counters"]["sync_refused"] == 1

        # Honest traffic is unaffected: alice's messages arrive, once each, in order;
        # replaying her first message (the router's dedup, then storage's) adds nothing.
        for text in ("2", "3"):
            await alice.call("gossip", "post", {"conversation": conv["id"], "text": text})

        async def three() -> list[dict[str, Any]]:
            h = await _bob_history(bob, conv["id"])
            return h if len(h) == 3 else []
        history = await bob.wait_for(three, "alice's messages despite mallory")
        assert [(m["body"], m["seq"], m["author"]) for m in history] == [
            ("1", 1, alice.peer_id), ("2", 2, alice.peer_id), ("3", 3, alice.peer_id)]
        assert all(m["author"] != mallory.peer_id for m in history)
        await stream.reset()
