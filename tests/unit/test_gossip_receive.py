"""What a peer claims in a message is bounded where it enters (no sockets: gossip's
receive part with fakes for storage): a timestamp far in the future is kept as our
time and cannot make a conversation's read mark jump to that date; an author who signs
two messages under one sequence number gets the second refused, counted and shown,
and is penalised until the router graylists it."""

from __future__ import annotations

import time
from typing import Any

import nacl.signing

from p2pm.common import errors, identity
from p2pm.common.clients import StorageClient, fake
from p2pm.services.gossip import conversations as cv
from p2pm.services.gossip.context import peer_bytes
from p2pm.services.gossip.router import PROTOCOL_V11, ScoreParams
from p2pm.services.gossip.state import Conversation

from .test_gossip_shell import gossip

ALICE = nacl.signing.SigningKey(bytes([7]) * 32)
ALICE_ID = identity.peer_id_from_public_key(bytes(ALICE.verify_key))
YEAR_2286 = 9_999_999_999.0


def _room() -> Conversation:
    secret = bytes(range(32))
    return Conversation(cv.Keys.derive("room", secret), "room", secret, {ALICE_ID})


def _opened(conv: Conversation, seq: int, ts: float, text: str) -> tuple[cv.Opened, bytes]:
    plaintext = cv.message_plaintext(conv.id, ALICE_ID, seq, ts, text)
    envelope = cv.seal(conv.keys.content_key,
                       identity.sign(ALICE, cv.MESSAGE_DOMAIN, plaintext), plaintext)
    return cv.open_envelope(conv.keys, envelope), envelope


async def test_a_timestamp_from_the_far_future_is_kept_as_ours() -> None:
    stored: list[float] = []

    async def message_put(id: str, conversation: str, author: str, seq: int, ts: float,
                          body: bytes, state: str, **_: Any) -> dict[str, Any]:
        stored.append(ts)
        return {"stored": True}

    node = gossip(storage=fake(StorageClient, message_put=message_put))
    conv = _room()
    node.registry.add(conv)
    events: list[tuple[str, Any]] = []
    node.ctx.publish = lambda topic, data: events.append((topic, data))  # type: ignore
    before = time.time()
    opened, envelope = _opened(conv, 1, YEAR_2286, "from the future")
    assert await node.receive.accept(conv, opened, envelope, None)
    assert before <= stored[0] <= time.time()
    assert events[0][1]["ts"] == stored[0]
    # A clock a minute ahead is ordinary skew: kept as the author said.
    soon = time.time() + 60
    opened, envelope = _opened(conv, 2, soon, "a little ahead")
    assert await node.receive.accept(conv, opened, envelope, None)
    assert stored[1] == soon
    assert node.ctx.counters["ts_clamped"] == 1


async def test_mark_read_stays_near_our_clock_whatever_a_stored_ts_says() -> None:
    put: dict[str, bytes] = {}

    async def kv_put(key: str, value: bytes) -> dict[str, Any]:
        put[key] = value
        return {}

    node = gossip(storage=fake(StorageClient, kv_put=kv_put, history={
        "messages": [{"id": "m", "ts": YEAR_2286, "state": "received"}], "more": False}))
    conv = _room()
    node.registry.add(conv)
    read_ts = await node.conversations.mark_read(conv)
    assert read_ts <= time.time() + cv.MAX_FUTURE_S
    assert float(put[f"gossip.read.{conv.id}"]) == read_ts


def _refusing(conv: Conversation, stored_id: str) -> Any:
    """A node whose storage already holds `stored_id` as the author's seq 1."""
    node = gossip(storage=fake(
        StorageClient,
        message_put=errors.BusError(errors.CONFLICT, "already has seq 1"),
        messages_by_author={"messages": [{"id": stored_id, "seq": 1}], "more": False}))
    node.registry.add(conv)
    return node


async def test_two_messages_under_one_seq_the_second_is_refused_counted_and_penalised() -> None:
    conv = _room()
    first, _ = _opened(conv, 1, 1.0, "I will pay you back")
    second, envelope = _opened(conv, 1, 1.0, "I never said that")
    node = _refusing(conv, first.id)
    node.ctx.router.add_peer(peer_bytes(ALICE_ID), PROTOCOL_V11, outbound=True, now=0.0)
    assert not await node.receive.accept(conv, second, envelope, ALICE_ID)
    assert node.ctx.counters["equivocations"] == 1
    assert node.status()["equivocating_authors"] == {ALICE_ID: 1}
    assert node.ctx.router.score(peer_bytes(ALICE_ID)) < ScoreParams().graylist_threshold


async def test_a_refusal_that_is_not_equivocation_is_only_counted() -> None:
    conv = _room()
    opened, envelope = _opened(conv, 1, 1.0, "hello")
    node = _refusing(conv, opened.id)
    assert not await node.receive.accept(conv, opened, envelope, ALICE_ID)
    assert node.ctx.counters["store_refused"] == 1
    assert "equivocations" not in node.ctx.counters


def test_a_direct_chat_is_never_announced_in_the_dht_a_room_is() -> None:
    node = gossip()
    spawned: list[Any] = []
    node.ctx.spawn = lambda fn, *args: spawned.append((fn, args))  # type: ignore
    secret = bytes(32)
    direct = Conversation(cv.Keys.derive("direct", secret), "bob", secret, {ALICE_ID})
    node.reach.announce(direct, alone=True, now=1000.0)
    assert spawned == []  # the DHT would learn who talks to whom
    node.reach.announce(_room(), alone=True, now=1000.0)
    assert [fn.__name__ for fn, _ in spawned] == ["provide"]
