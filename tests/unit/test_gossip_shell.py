"""The gossip actor's RPCs with fakes for the actors behind it (no sockets): a room
is stored with us as its only member and its invite is ours, bad input is refused
before anything is written, and an unknown message or conversation is named."""

from __future__ import annotations

import random
import time
import types
from typing import Any

import nacl.signing
import orjson

import pytest
import trio

from p2pm.common import errors, identity, wire
from p2pm.common.clients import Addresses, StorageClient, TransportClient, build_actor, fake
from p2pm.services.gossip import conversations as cv
from p2pm.services.gossip.actor import Gossip
from p2pm.services.gossip.context import peer_bytes
from p2pm.services.gossip.reach import TARGET_MEMBER_PEERS
from p2pm.services.gossip.router.core import Router
from p2pm.services.gossip.router.signing import verify_ed25519
from tests.helpers.identities import ADDRS, ME, signing_keystore

KEY2 = nacl.signing.SigningKey(b"\x07" * 32)
OTHER = identity.peer_id_from_public_key(bytes(KEY2.verify_key))


def gossip(config: dict[str, Any] | None = None, **fakes: Any) -> Gossip:
    """A gossip actor past its start (identity known, router up, state loaded)."""
    fakes.setdefault("keystore", signing_keystore())
    fakes.setdefault("transport", fake(TransportClient, addrs=Addresses(ME, ADDRS)))
    actor = build_actor(Gossip, None, config or {}, **fakes)
    actor.ctx.start(ME, Router(peer_bytes(ME), verify=verify_ed25519, rng=random.Random(1),
                               validate=actor.receive.validate, params=actor.params))
    actor.loaded.set()
    return actor


async def test_a_new_room_is_stored_with_us_alone_and_its_invite_is_ours() -> None:
    stored: list[dict[str, Any]] = []

    async def conversation_put(id: str, kind: str, secret: bytes, members: list[str],
                               name: str | None = None, created_at: float | None = None
                               ) -> dict[str, Any]:
        stored.append({"id": id, "kind": kind, "members": members, "name": name})
        return {"id": id}

    node = gossip(storage=fake(StorageClient, conversation_put=conversation_put,
                               author_ranges={}))
    room = await node.room_create("café ☕ 運営")
    assert stored == [{"id": room["id"], "kind": "room", "members": [ME],
                       "name": "café ☕ 運営"}]
    invite = cv.decode_invite(room["invite"])  # checks the inviter's signature
    assert (invite.id, invite.name, invite.inviter) == (room["id"], "café ☕ 運営", ME)
    assert list(invite.addrs) == list(ADDRS)
    assert node.convs[room["id"]].members == {ME}
    assert (await node.room_invite(room["id"]))["invite"].startswith(cv.INVITE_PREFIX)


async def test_a_room_invite_lasts_the_setting_or_what_was_asked() -> None:
    async def conversation_put(id: str, *rest: Any, **kw: Any) -> dict[str, Any]:
        return {"id": id}

    stored = fake(StorageClient, conversation_put=conversation_put, author_ranges={})
    node = gossip({"gossip": {"room_invite_ttl_s": 7200}}, storage=stored)
    room = await node.room_create("ops")
    made = cv.decode_invite(room["invite"], now=time.time())
    assert made.exp - made.ts == 7200
    again = cv.decode_invite((await node.room_invite(room["id"], ttl_s=3 * 86400))["invite"])
    assert again.exp - again.ts == 3 * 86400
    for bad in (60, 400 * 86400):
        with pytest.raises(errors.BusError, match="ttl_s: an invite lives from 1h to 365d") \
                as info:
            await node.room_invite(room["id"], ttl_s=bad)
        assert info.value.code == errors.BAD_PARAMS


def _room_invite(now: float, ttl_s: float, version: int = cv.INVITE_VERSION) -> str:
    """A room invite from another member (KEY2), made at `now`."""
    payload = cv.invite_payload("garden", cv.new_room_secret(), OTHER, [], now, ttl_s)
    if version != cv.INVITE_VERSION:
        doc = orjson.loads(payload)
        payload = orjson.dumps({k: v for k, v in doc.items() if k not in ("ts", "exp")}
                               | {"v": version}, option=orjson.OPT_SORT_KEYS)
    return cv.encode_invite(payload, identity.sign(KEY2, cv.INVITE_DOMAIN, payload))


@pytest.mark.parametrize("invite, words", [
    (lambda: _room_invite(time.time() - 8 * 86400, 7 * 86400), "room invite expired on"),
    (lambda: _room_invite(time.time() + 3600, 7 * 86400), "issued in the future"),
    (lambda: _room_invite(time.time(), 7 * 86400, version=1), "from an older p2pm"),
])
async def test_an_expired_future_or_old_room_invite_joins_nothing(invite: Any,
                                                                 words: str) -> None:
    node = gossip()  # storage answers nothing: any write would fail the test
    with pytest.raises(errors.BusError, match=words) as info:
        await node.room_join(invite())
    assert info.value.code == errors.FORBIDDEN
    assert not node.convs


@pytest.mark.parametrize("name", ["", "   ", "a\x00b", "x" * 257])
async def test_a_room_with_a_bad_name_is_refused_and_nothing_stored(name: str) -> None:
    node = gossip()  # storage answers nothing: any write would fail the test
    with pytest.raises(errors.BusError) as info:
        await node.room_create(name)
    assert info.value.code == errors.BAD_PARAMS
    assert not node.convs


@pytest.mark.parametrize("text", ["", "  \n", "x" * (16 * 1024 + 1)])
async def test_a_post_with_bad_text_is_refused_before_the_conversation_is_read(
        text: str) -> None:
    node = gossip()
    with pytest.raises(errors.BusError) as info:
        await node.post("no-such-conversation", text)
    assert info.value.code == errors.BAD_PARAMS


async def test_unknown_conversations_and_messages_are_named() -> None:
    node = gossip(storage=fake(StorageClient, message_get=None))
    with pytest.raises(errors.BusError) as info:
        await node.post("c0ffee", "hello")
    assert info.value.code == errors.NOT_FOUND and "c0ffee" in info.value.message
    with pytest.raises(errors.BusError) as info:
        await node.message_state("m1")
    assert info.value.code == errors.NOT_FOUND and "m1" in info.value.message


async def test_history_before_an_unknown_message_is_bad_params() -> None:
    async def conversation_put(*args: Any, **kw: Any) -> dict[str, Any]:
        return {}

    node = gossip(storage=fake(StorageClient, conversation_put=conversation_put,
                               author_ranges={}, message_get=None))
    room = await node.room_create("ops")
    with pytest.raises(errors.BusError) as info:
        await node.history(room["id"], before="m-gone")
    assert info.value.code == errors.BAD_PARAMS and "m-gone" in info.value.message


async def test_history_pages_backwards_reach_every_message_though_some_share_a_time() -> None:
    """Two members may post in the same instant (their clocks' resolution): paging
    back from a message must still return the one stored beside it. Paging by time
    alone skipped such messages for good."""
    stored: list[dict[str, Any]] = []

    async def history(conversation: str, before: str | None = None,
                      before_ts: float | None = None, limit: int | None = None
                      ) -> dict[str, Any]:
        rows = sorted(stored, key=lambda m: (m["ts"], m["id"]))
        if before is not None:
            ts, _, mid = before.partition(":")
            rows = [m for m in rows if (m["ts"], m["id"]) < (float(ts), mid)]
        if before_ts is not None:
            rows = [m for m in rows if m["ts"] < before_ts]
        return {"messages": rows[-(limit or 50):], "before": None}

    async def message_get(id: str) -> dict[str, Any] | None:
        return next((m for m in stored if m["id"] == id), None)

    async def conversation_put(*args: Any, **kw: Any) -> dict[str, Any]:
        return {}

    node = gossip(storage=fake(StorageClient, conversation_put=conversation_put,
                               author_ranges={}, history=history, message_get=message_get))
    room = await node.room_create("ops")
    keys = node.registry.require(room["id"]).keys
    for seq, ts in enumerate([10.0, 20.0, 20.0, 20.0, 20.0, 30.0], start=1):
        text = f"note {seq} 🌍"
        plaintext = cv.message_plaintext(room["id"], OTHER, seq, ts, text)
        envelope = cv.seal(keys.content_key,
                           identity.sign(KEY2, cv.MESSAGE_DOMAIN, plaintext), plaintext)
        stored.append({"id": cv.message_id(plaintext), "conversation": room["id"],
                       "author": OTHER, "seq": seq, "ts": ts, "state": "received",
                       "body": wire.b64e(envelope)})
    seen: list[str] = []
    page = await node.history(room["id"], limit=2)
    while page:
        seen = [m["body"] for m in page] + seen
        page = await node.history(room["id"], limit=2, before=page[0]["id"])
    assert sorted(seen) == sorted(f"note {i} 🌍" for i in range(1, 7))
    assert len(seen) == 6


async def test_before_it_has_loaded_every_rpc_says_unavailable() -> None:
    node = build_actor(Gossip, None, {})
    for call in (node.room_create("ops"), node.conversation_list(),
                 node.message_state("m1")):
        with pytest.raises(errors.BusError) as info:
            await call
        assert info.value.code == errors.UNAVAILABLE
    assert node.status()["conversations"] == 0 and not node.healthy()


async def test_a_message_is_delivered_once_every_recipient_holds_it_whichever_way() -> None:
    """The one place a message becomes delivered: alice's receipt, then bob's sync
    ranges; a receipt naming the id in another conversation acknowledges nothing."""
    states: list[str] = []

    async def conversation_put(*args: Any, **kw: Any) -> dict[str, Any]:
        return {}

    async def message_set_state(id: str, state: str) -> dict[str, Any]:
        states.append(state)
        return {"changed": True, "state": state}

    storage = fake(StorageClient, conversation_put=conversation_put, author_ranges={},
                   outbox_done=True, message_set_state=message_set_state)
    node = gossip(storage=storage)
    events: list[tuple[str, Any]] = []
    node.ctx.publish = lambda topic, data: events.append((topic, data))
    room = node.convs[(await node.room_create("ops"))["id"]]
    other = node.convs[(await node.room_create("elsewhere"))["id"]]
    node.delivery.outbox.add("m1", room.id, 1, {"alice", "bob"}, now=0.0)

    def receipt(conv_id: str, reader: str) -> cv.Opened:
        return cv.Opened("r", "r-" + reader, conv_id, reader, 1.0, ids=("m1",))

    await node.delivery.receipt(other, receipt(other.id, "alice"))
    await node.delivery.receipt(room, receipt(room.id, "alice"))
    assert states == [] and "m1" in node.delivery.outbox  # bob still owes it
    await node.delivery.ranges_held(room, "bob", {ME: [(1, 1)]})
    assert states == ["delivered"] and "m1" not in node.delivery.outbox
    assert events == [("gossip.message.state",
                       {"id": "m1", "conversation": room.id, "state": "delivered"})]
    assert [c.kwargs or c.args for c in storage.outbox_done.await_args_list] == [
        ("m1", "alice"), ("m1", "bob")]


class _Stream:
    peer = ME
    protocol = "/p2pm/sync/2.0.0"

    def __init__(self) -> None:
        self.was_reset = False

    async def reset(self) -> None:
        self.was_reset = True


async def test_a_sync_or_request_that_comes_before_the_load_waits_for_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Streams are accepted from the start; a member's sync that arrives while storage
    is still being read is served once the conversations are loaded (answering it
    earlier would refuse the member as a stranger), and healthy waits for the load."""
    from p2pm.services.gossip import actor as gossip_actor

    node = gossip()
    node.loaded = trio.Event()  # started, not loaded yet
    assert not node.healthy()
    served: list[tuple[str, Any]] = []

    async def serve_sync(stream: Any) -> None:
        served.append(("sync", stream))

    async def serve_request(stream: Any) -> None:
        served.append(("request", stream))

    monkeypatch.setattr(node.syncer, "serve", serve_sync)
    monkeypatch.setattr(node.strangers, "serve", serve_request)
    early_sync, early_request = _Stream(), _Stream()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node._serve_sync, early_sync)
        nursery.start_soon(node._serve_request, early_request)
        await trio.sleep(0.05)
        assert served == []  # nothing answered before the load
        node.loaded.set()
    assert sorted(kind for kind, _ in served) == ["request", "sync"]
    assert node.healthy() and not early_sync.was_reset and not early_request.was_reset

    # A load that never finishes: the stream is reset after the bound, not held forever.
    monkeypatch.setattr(gossip_actor, "LOAD_WAIT_S", 0.05)
    node.loaded = trio.Event()
    served.clear()
    late = _Stream()
    await node._serve_sync(late)
    assert late.was_reset and served == []


async def test_a_task_that_fails_while_the_actor_stops_is_logged_and_the_stop_stays_clean() -> None:
    """A sync whose stream is reset as the actor stops ends in a group of that reset and
    Cancelled; the actor's stop must neither raise the peer's error nor hang."""
    node = gossip()

    async def sync_cut_by_the_stop() -> None:
        async def receive() -> None:
            await trio.sleep_forever()

        async def send() -> None:
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                raise errors.unavailable("the owner closed its stream client") from None

        async with trio.open_nursery() as inner:
            inner.start_soon(receive)
            inner.start_soon(send)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            node.runtime = types.SimpleNamespace(_nursery=nursery)  # type: ignore[assignment]
            node.spawn(sync_cut_by_the_stop)
            await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert node.ctx.counters["task_crashed"] == 1


async def test_hinted_peers_are_proven_on_the_connections_there_are_and_few_are_dialled(
        ) -> None:
    """Peers a member named in a sync: one already connected is synced with at once;
    the others are dialled only while the room lacks connected members, so proving
    hints never widens a room's mesh beyond what call_members keeps."""
    async def conversation_put(id: str, *rest: Any, **kw: Any) -> dict[str, Any]:
        return {"id": id}

    node = gossip(storage=fake(StorageClient, conversation_put=conversation_put,
                               author_ranges={}))
    room = node.convs[(await node.room_create("ops"))["id"]]
    peers = sorted(identity.peer_id_from_public_key(bytes(
        nacl.signing.SigningKey(bytes([i]) * 32).verify_key)) for i in range(1, 9))
    connected = set(peers[:2])
    node.reach.connected |= connected
    synced: list[str] = []
    dialled: list[str] = []
    node.spawn = lambda fn, *args: (synced if fn == node._sync_with else dialled).append(
        args[0])  # type: ignore[method-assign]

    node.hints[room.id] = set(peers)
    node._prove_hints(room, connected_members=1)
    assert sorted(synced) == sorted(connected)  # proven on the connections there are
    assert len(dialled) == TARGET_MEMBER_PEERS - 1 and not set(dialled) & connected
    assert room.id not in node.hints  # the rest wait for a later sync to name them

    synced.clear(), dialled.clear()
    node.hints[room.id] = set(peers)
    node._prove_hints(room, connected_members=TARGET_MEMBER_PEERS)
    assert sorted(synced) == sorted(connected) and dialled == []  # enough: no dial


async def test_a_conversation_read_while_the_list_is_counted_stays_read() -> None:
    """The list reads a read mark from storage while the user marks that conversation
    read: the older mark the list got must not replace the new one (the conversation
    would show unread again until gossip restarted)."""
    kv: dict[str, bytes] = {}
    answered = trio.Event()
    release = trio.Event()
    asked: list[dict[str, float]] = []

    async def kv_get(key: str) -> bytes | None:
        value = kv.get(key)
        if key.startswith("gossip.read.") and not release.is_set():
            answered.set()
            await release.wait()  # storage answers late, with what it had
        return value

    async def kv_put(key: str, value: bytes) -> None:
        kv[key] = value

    async def unread_counts(marks: dict[str, float], limit: int = 1000) -> dict[str, int]:
        asked.append(dict(marks))
        return {c: 0 for c in marks}

    async def conversation_put(*args: Any, **kw: Any) -> dict[str, Any]:
        return {}

    listed: list[dict[str, Any]] = []
    node = gossip(storage=fake(
        StorageClient, conversation_put=conversation_put, author_ranges={}, kv_get=kv_get,
        kv_put=kv_put, unread_counts=unread_counts, conversation_list=lambda: listed,
        history={"messages": [], "before": None}))
    room = await node.room_create("ops")
    listed.append({"id": room["id"], "name": "ops", "kind": "room", "members": [ME],
                   "last_ts": None})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.conversation_list)
        await answered.wait()
        read = (await node.mark_read(room["id"]))["read_ts"]
        release.set()
    await node.conversation_list()
    assert asked[-1] == {room["id"]: read} and read > 0
