"""The gateway's own logic with fakes for the actors behind it (no sockets): the
invite it builds is the one the keystore signed and verifies, contact rules refuse a
second name for a peer or a second peer for a name and write nothing, and an actor
that does not answer reads as "unavailable"."""

from __future__ import annotations

import re

from typing import Any

import pytest

from p2pm.common import errors
from p2pm.common import invite as invites
from p2pm.common.clients import (
    Addresses, DhtClient, StorageClient, TransportClient, build_actor, fake,
)
from p2pm.services.gateway.actor import NAME_KEY, Gateway
from tests.helpers.identities import ADDRS, BOB, ME, signing_keystore


def gateway(**fakes: Any) -> Gateway:
    fakes.setdefault("keystore", signing_keystore())
    fakes.setdefault("transport", fake(TransportClient, addrs=Addresses(ME, ADDRS)))
    return build_actor(Gateway, None, {}, **fakes)


async def test_an_invite_carries_the_name_and_addresses_and_verifies() -> None:
    storage = fake(StorageClient, kv_put=None)
    gw = gateway(storage=storage)
    made = await gw.invite(name="Ann 🌱")
    decoded = invites.decode(made.invite)  # checks the signature
    assert (decoded.peer_id, decoded.name, decoded.addrs) == (ME, "Ann 🌱", ADDRS)
    storage.kv_put.assert_awaited_once_with(NAME_KEY, "Ann 🌱".encode())
    tampered = made.invite[:-6] + ("A" if made.invite[-6] != "A" else "B") + made.invite[-5:]
    with pytest.raises(invites.InviteError):
        invites.decode(tampered)


async def test_without_a_name_the_remembered_one_else_the_short_peer_id() -> None:
    remembered = gateway(storage=fake(StorageClient, kv_get="Bo".encode()))
    assert (await remembered.invite()).name == "Bo"
    fresh = gateway(storage=fake(StorageClient, kv_get=None))
    assert (await fresh.invite()).name == ME[-8:]


async def test_contact_rules_refuse_and_write_nothing() -> None:
    async def contact_get(name: str | None = None,
                          peer_id: str | None = None) -> dict[str, Any] | None:
        if name == "bob" or peer_id == BOB:
            return {"name": "bob", "peer_id": BOB, "addrs": []}
        return None

    storage = fake(StorageClient, contact_get=contact_get)
    dht = fake(DhtClient, find_peer={"peer_id": BOB, "addrs": []})
    gw = gateway(storage=storage, dht=dht)
    with pytest.raises(errors.BusError) as again:
        await gw.contact_add("robert", BOB)  # the same peer under a second name
    assert again.value.code == errors.CONFLICT and "'bob'" in again.value.message
    with pytest.raises(errors.BusError) as mine:
        await gw.contact_add("me", ME)
    assert mine.value.code == errors.BAD_PARAMS
    with pytest.raises(errors.BusError) as junk:
        await gw.contact_add("carol", "not a peer id")
    assert junk.value.code == errors.BAD_PARAMS
    storage.contact_add.assert_not_called()


async def test_a_peer_the_dht_cannot_find_is_refused_with_its_reason() -> None:
    storage = fake(StorageClient, contact_get=None)
    gw = gateway(storage=storage,
                 dht=fake(DhtClient, find_peer=errors.not_found("no peer knows it")))
    with pytest.raises(errors.BusError) as lost:
        await gw.contact_add("bob", BOB)
    assert lost.value.code == errors.NOT_FOUND
    storage.contact_add.assert_not_called()


async def test_an_actor_that_does_not_answer_reads_as_unavailable() -> None:
    """The gateway's clients go through its _call, which turns a timeout into a
    message a person can act on."""
    gw = Gateway(None, {})

    async def silent(actor: str, method: str, params: Any = None, **kw: Any) -> Any:
        raise errors.BusError(errors.TIMEOUT, f"{actor} did not answer {method}")

    gw.call = silent  # type: ignore[method-assign]
    with pytest.raises(errors.BusError) as down:
        await gw.contact_list()
    assert down.value.code == errors.UNAVAILABLE
    # contact_list asks gossip (blocks) and storage (contacts): whichever it asks
    # first is the one named.
    assert re.search(r"the (storage|gossip) actor is not answering", down.value.message)


async def test_the_inbox_shows_the_latest_from_others_reading_only_pages_it_needs() -> None:
    """One chat where we replied 45 times between their two unread messages, and a
    busy room with 1,500 unread: the inbox shows both of theirs from the chat and the
    room's latest 20, and reads the room's history only as far as those (it read up
    to 1,000 messages of every unread conversation, 19 s with 200,000 stored)."""
    chat = [("them", "one")] + [("me", f"reply {i}") for i in range(45)] + [("them", "two")]
    room = [("them", f"news {i} 📰") for i in range(1500)]
    stored = {
        "chat": [{"id": f"chat-{i}", "author": BOB if who == "them" else ME, "body": text,
                  "ts": float(i), "state": "received" if who == "them" else "delivered"}
                 for i, (who, text) in enumerate(chat)],
        "room": [{"id": f"room-{i}", "author": BOB, "body": text, "ts": float(i),
                  "state": "received"} for i, (_, text) in enumerate(room)],
    }
    read = {"chat": 0, "room": 0}
    asked: list[str] = []

    async def call(actor: str, method: str, params: dict[str, Any] | None = None,
                   timeout: float | None = None) -> Any:
        params = params or {}
        asked.append(method)
        if method == "conversation_list":
            return [{"id": "chat", "name": "bob", "kind": "direct", "unread": 2},
                    {"id": "room", "name": "news", "kind": "room", "unread": 1000},
                    {"id": "quiet", "name": "old", "kind": "room", "unread": 0}]
        if method == "history":
            msgs = stored[params["conversation"]]
            if "before" in params:
                msgs = msgs[:[m["id"] for m in msgs].index(params["before"])]
            page = msgs[-params["limit"]:]
            read[params["conversation"]] += len(page)
            return page
        return {"profiles": {}, "request_list": []}[method]

    gw = gateway(storage=fake(StorageClient, contact_list=[{"name": "bob", "peer_id": BOB}]))
    gw._call = call  # type: ignore[method-assign]
    inbox = await gw.inbox()
    assert [(c["id"], c["unread"]) for c in inbox] == [("chat", 2), ("room", 1000)]
    assert [(m["body"], m["author_name"]) for m in inbox[0]["messages"]] == [
        ("one", "bob"), ("two", "bob")]
    assert [m["body"] for m in inbox[1]["messages"]] == [
        f"news {i} 📰" for i in range(1480, 1500)]
    assert read["room"] <= 40, read
    assert asked.count("profiles") == 1  # the names, once for the whole inbox


async def test_naming_a_conversation_does_not_count_every_conversations_unread() -> None:
    """Every command that names a conversation looks it up in gossip's list: that
    lookup asks without the unread counts (two storage calls per conversation)."""
    asked: list[tuple[str, dict[str, Any]]] = []

    async def call(actor: str, method: str, params: dict[str, Any] | None = None,
                   timeout: float | None = None) -> Any:
        asked.append((method, params or {}))
        if method == "conversation_list":
            return [{"id": "room1", "name": "news", "kind": "room", "members": [ME]}]
        if method == "post":
            return {"id": "m1", "state": "sent"}
        raise AssertionError(method)

    gw = gateway(storage=fake(StorageClient))
    gw._call = call  # type: ignore[method-assign]
    posted = await gw.post("news", "hello 👋")
    assert posted.conversation == "room1"
    assert asked == [("conversation_list", {"unread": False}),
                     ("post", {"conversation": "room1", "text": "hello 👋"})]


async def test_the_inbox_skips_a_conversation_left_while_it_reads_and_reports_other_errors() -> None:
    failing = {"gone": errors.not_found("no conversation 'gone'")}

    async def call(actor: str, method: str, params: dict[str, Any] | None = None,
                   timeout: float | None = None) -> Any:
        params = params or {}
        if method == "conversation_list":
            return [{"id": c, "name": c, "kind": "room", "unread": 1}
                    for c in ("gone", "here")]
        if method == "history":
            if params["conversation"] in failing:
                raise failing[params["conversation"]]
            return [{"id": "m1", "author": BOB, "body": "still here ✓", "ts": 1.0,
                     "state": "received"}]
        return {"profiles": {}, "request_list": []}[method]

    gw = gateway(storage=fake(StorageClient, contact_list=[]))
    gw._call = call  # type: ignore[method-assign]
    inbox = await gw.inbox()
    assert [(c["id"], [m["body"] for m in c["messages"]]) for c in inbox] == [
        ("here", ["still here ✓"])]
    failing["here"] = errors.unavailable("gossip is starting")
    with pytest.raises(errors.BusError) as info:
        await gw.inbox()
    assert info.value.code == errors.UNAVAILABLE
