"""The strangers part on the split gossip actor, with fakes for the actors behind it
(no sockets): a blocked peer is never dialled and the block is stored; opening the
direct chat with someone whose request is pending keeps their held messages as
received and settles the request; our messages a request answered for show it in
history and message_state."""

from __future__ import annotations

import time
from typing import Any

import nacl.signing

from p2pm.common import identity, wire
from p2pm.common.clients import Identity, KeystoreClient, StorageClient, fake
from p2pm.services.gossip import conversations as cv
from p2pm.services.gossip import requests as rq
from tests.helpers.identities import KEY, ME
from tests.unit.test_gossip_shell import gossip

BOB_KEY = nacl.signing.SigningKey(bytes([7]) * 32)
BOB = identity.peer_id_from_public_key(bytes(BOB_KEY.verify_key))
SECRET = bytes([9]) * 32  # what the keystore derives for our chat with Bob (any fixed value)


def keystore() -> KeystoreClient:
    async def sign(domain: str, data: bytes, payload_type: bytes | None = None) -> bytes:
        return identity.sign(KEY, domain, data, payload_type)

    return fake(KeystoreClient, sign=sign, direct_secret=SECRET, identity=Identity(
        ME, bytes(KEY.verify_key), identity.x25519_public(bytes(KEY.verify_key))))


def direct_keys() -> cv.Keys:
    return cv.Keys.derive("direct", SECRET)


class Kv:
    """Storage's key-value rows, for what the part saves."""

    def __init__(self) -> None:
        self.rows: dict[str, bytes] = {}

    async def kv_put(self, key: str, value: bytes) -> None:
        self.rows[key] = value

    async def kv_delete(self, key: str) -> bool:
        return self.rows.pop(key, None) is not None

    async def kv_get(self, key: str) -> bytes | None:
        return self.rows.get(key)


async def test_a_blocked_peer_is_never_dialled_and_the_block_is_stored() -> None:
    kv = Kv()
    node = gossip(keystore=keystore(), storage=fake(
        StorageClient, kv_put=kv.kv_put, kv_delete=kv.kv_delete))
    assert await node.peer_block(BOB) == {"blocked": True, "new": True}
    assert await node.peer_block(BOB) == {"blocked": True, "new": False}
    assert await node.blocked_list() == [BOB]
    assert kv.rows["gossip.blocked"] == b'["%s"]' % BOB.encode()
    # The transport fake answers nothing: a dial would fail the test.
    assert await node.reach.dial(BOB) is False
    assert node.status()["strangers"]["blocked"] == 1
    assert await node.peer_unblock(BOB) == {"blocked": False, "was": True}
    assert await node.blocked_list() == [] and kv.rows["gossip.blocked"] == b"[]"


async def test_opening_the_chat_of_a_pending_request_keeps_its_messages() -> None:
    keys = direct_keys()
    texts = ["hi, it's Bob from the café ☕", "are you 👩\u200d👩\u200d👧 coming?"]
    held = []
    for seq, text in enumerate(texts, 1):
        plaintext = cv.message_plaintext(keys.id, BOB, seq, 1000.0 + seq, text)
        env = cv.seal(keys.content_key,
                      identity.sign(BOB_KEY, cv.MESSAGE_DOMAIN, plaintext), plaintext)
        opened = cv.open_envelope(keys, env)
        held.append(rq.Held(opened.id, opened.seq, opened.ts, opened.text, env))
    stored: list[tuple[str, str, str]] = []

    async def message_put(id: str, conversation: str, author: str, seq: int, ts: float,
                          body: bytes, state: str) -> dict[str, Any]:
        assert cv.open_envelope(keys, body).text == texts[seq - 1]
        stored.append((id, author, state))
        return {"stored": True}

    async def conversation_put(*args: Any, **kw: Any) -> dict[str, Any]:
        return {}

    kv = Kv()
    node = gossip(keystore=keystore(), storage=fake(
        StorageClient, kv_put=kv.kv_put, kv_delete=kv.kv_delete, author_ranges={},
        conversation_put=conversation_put, message_put=message_put))
    events: list[tuple[str, Any]] = []
    node.ctx.publish = lambda topic, data: events.append((topic, data))
    node.ctx.spawn = lambda fn, *args: None  # the dial to Bob is not what is tested
    status, ids, _ = node.strangers.box.hold(BOB, "Bob", (), keys.id, held, time.time())
    assert status == "requested" and ids == [h.id for h in held]
    assert [m["body"] for r in await node.request_list() for m in r["messages"]] == texts

    got = await node.request_accept(BOB, "bob")
    assert got == {"id": keys.id, "name": "bob", "kind": "direct", "messages": 2}
    assert stored == [(h.id, BOB, "received") for h in held]
    assert await node.request_list() == []
    assert ("gossip.request.accepted", {"peer_id": BOB, "conversation": keys.id}) in events
    assert kv.rows["gossip.requests"] == b"[]" and "gossip.request." + BOB not in kv.rows
    # A second accept finds nothing to accept, and opening again keeps nothing twice.
    await node.direct_open(BOB)
    assert len(stored) == 2


async def test_our_messages_show_the_answer_their_request_got() -> None:
    keys = direct_keys()
    plaintext = cv.message_plaintext(keys.id, ME, 1, 1000.0, "hello?")
    env = cv.seal(keys.content_key, identity.sign(KEY, cv.MESSAGE_DOMAIN, plaintext),
                  plaintext)
    mid = cv.open_envelope(keys, env).id
    row = {"id": mid, "conversation": keys.id, "author": ME, "seq": 1, "ts": 1000.0,
           "body": wire.b64e(env), "state": "sent"}

    async def conversation_put(*args: Any, **kw: Any) -> dict[str, Any]:
        return {}

    node = gossip(keystore=keystore(), storage=fake(
        StorageClient, kv_delete=True, author_ranges={}, conversation_put=conversation_put,
        history={"messages": [row], "more": False}, message_get=row,
        outbox_get=[{"recipient": BOB, "state": "pending"}]))
    node.ctx.spawn = lambda fn, *args: None
    await node.direct_open(BOB, [], "bob")
    assert [m["state"] for m in await node.history(keys.id)] == ["sent"]
    for answer in ("requested", "refused"):
        node.strangers.asking.mark(keys.id, [mid], answer)
        assert [m["state"] for m in await node.history(keys.id)] == [answer]
        assert await node.message_state(mid) == {"id": mid, "state": answer,
                                                 "members": {BOB: answer}}
