"""The gossip actor's parts without sockets: held sequence numbers (gap detection),
dial backoff, receipt batching, the one place that adds members, and the validation
the router runs on every message."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import nacl.signing
import pytest

from p2pm.common import identity
from p2pm.common.clients import StorageClient, fake
from p2pm.common.log import get_logger
from p2pm.services.gossip import conversations as cv
from p2pm.services.gossip.context import Context, peer_bytes
from p2pm.services.gossip.delivery import Delivery, ReceiptBatch
from p2pm.services.gossip.membership import Membership, Why
from p2pm.services.gossip.reach import DialBackoff
from p2pm.services.gossip.receive import Receive
from p2pm.services.gossip.router.core import Validation
from p2pm.services.gossip.router.messages import Message
from p2pm.services.gossip.state import Conversation, Held, Registry

ME, ALICE, BOB = (identity.peer_id_from_public_key(
    bytes(nacl.signing.SigningKey(bytes([40 + i]) * 32).verify_key)) for i in range(3))

# -- held sequence numbers -----------------------------------------------------------


def test_messages_in_order_leave_no_gap() -> None:
    held = Held()
    assert [held.note("alice", s) for s in (1, 2, 3)] == [False, False, False]
    assert held.contiguous("alice") == 3 and not held.has_gap("alice")


def test_a_lost_message_is_a_gap_until_it_arrives() -> None:
    held = Held()
    held.note("alice", 1)
    assert held.note("alice", 3) is True  # 2 went missing
    assert held.note("alice", 4) is True and held.has_gap("alice")
    assert held.note("alice", 2) is False  # sync (or a late copy) fills it
    assert held.contiguous("alice") == 4 and not held.has_gap("alice")


def test_authors_are_counted_apart_and_redelivery_is_harmless() -> None:
    held = Held()
    held.note("alice", 1)
    held.note("bob", 2)
    assert not held.has_gap("alice") and held.has_gap("bob")
    assert held.note("alice", 1) is False and held.contiguous("alice") == 1


def test_held_at_start_comes_from_storage_ranges() -> None:
    held = Held.from_ranges({
        "alice": {"contiguous": 5, "ranges": [[1, 5], [8, 9]], "max_seq": 9},
        "bob": {"contiguous": 2, "ranges": [[1, 2]], "max_seq": 2},
        # A span too wide to expand is left out rather than costing the start.
        "carol": {"contiguous": 0, "ranges": [[5, 5 + 20_000]], "max_seq": 20_005},
    })
    assert held.has_gap("alice") and not held.has_gap("bob")
    assert held.contiguous("carol") == 0 and not held.has_gap("carol")
    # The first gap of alice's (6, 7) closes as the messages come.
    assert held.note("alice", 6) is True
    assert held.note("alice", 7) is False and held.contiguous("alice") == 9


# -- dial backoff --------------------------------------------------------------------


def test_a_peer_that_does_not_answer_is_dialled_less_and_less_often() -> None:
    backoff = DialBackoff(first=2.0, cap=30.0)
    tries = [t for t in range(0, 200) if backoff.attempt("bob", float(t))]
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert tries[0] == 0
    assert gaps[:4] == [2, 4, 8, 16] and set(gaps[4:]) == {30}


def test_two_callers_at_once_dial_once() -> None:
    backoff = DialBackoff()
    assert backoff.attempt("bob", 10.0) is True
    assert backoff.attempt("bob", 10.0) is False


def test_a_dial_that_succeeded_resets_the_backoff() -> None:
    backoff = DialBackoff(first=2.0, cap=30.0)
    for t in (0.0, 2.0, 6.0, 14.0):
        assert backoff.attempt("bob", t)
    backoff.succeeded("bob")
    assert backoff.attempt("bob", 14.5) and not backoff.attempt("bob", 16.0)
    assert backoff.attempt("bob", 16.5)  # 2 s again, not 16
    assert backoff.attempt("carol", 14.5)  # others were never held back


def test_the_backoff_table_is_bounded_and_forgets_the_oldest() -> None:
    backoff = DialBackoff(max_peers=3)
    for i, peer in enumerate(("a", "b", "c", "d")):
        backoff.attempt(peer, float(i))
    assert len(backoff) == 3
    assert backoff.attempt("a", 4.0)  # forgotten: dialled again at once
    assert not backoff.attempt("d", 4.0)  # still backing off


# -- receipt batching ----------------------------------------------------------------


def _kinds(kinds: dict[str, str]) -> Callable[[str], str | None]:
    return kinds.get


def test_a_direct_chat_acknowledges_at_every_flush_a_room_every_two_seconds() -> None:
    batch = ReceiptBatch(room_every_s=2.0)
    kinds = _kinds({"dm": "direct", "room": "room"})
    assert batch.take(0.0, kinds) == []
    batch.owe("dm", "m1")
    batch.owe("room", "r1")
    batch.owe("room", "r2")
    assert batch.take(0.2, kinds) == [("dm", ["m1"])]
    assert batch.owed("room") == ["r1", "r2"]
    assert batch.take(1.8, kinds) == []
    batch.owe("dm", "m2")
    assert batch.take(2.0, kinds) == [("room", ["r1", "r2"]), ("dm", ["m2"])]
    batch.owe("room", "r3")
    assert batch.take(2.2, kinds) == []  # the next room flush is two seconds on
    assert batch.take(4.0, kinds) == [("room", ["r3"])]


def test_the_flusher_is_woken_when_a_receipt_is_owed_and_sees_when_none_is() -> None:
    woken = []
    batch = ReceiptBatch(on_owed=lambda: woken.append(1))
    assert not batch  # an idle node's flusher sleeps on this
    batch.owe("dm", "m1")
    assert batch and woken == [1]
    batch.take(0.0, _kinds({"dm": "direct"}))
    assert not batch


def test_receipts_of_a_conversation_left_are_dropped() -> None:
    batch = ReceiptBatch()
    batch.owe("gone", "m1")
    assert batch.take(0.0, _kinds({})) == []
    assert batch.owed("gone") == []


def test_receipts_nobody_took_go_first_next_time_and_stay_bounded() -> None:
    batch = ReceiptBatch(max_held=4)
    kinds = _kinds({"dm": "direct"})
    batch.owe("dm", "a")
    batch.owe("dm", "b")
    taken = batch.take(0.0, kinds)
    batch.owe("dm", "c")  # arrived while a and b were being sent
    batch.put_back("dm", taken[0][1])
    assert batch.owed("dm") == ["a", "b", "c"]
    # Nobody reachable for a long time: the newest are kept, older ones are also
    # acknowledged by the next sync's HAVE.
    batch.put_back("dm", [f"old{i}" for i in range(10)])
    assert batch.owed("dm") == ["old9", "a", "b", "c"]


# -- membership: one place adds members ---------------------------------------------


Spawned = list[tuple[str, Callable[..., Awaitable[Any]], tuple[Any, ...]]]


def _membership(saved: list[list[str]] | None = None) -> tuple[Membership, Spawned]:
    spawned: Spawned = []

    def spawn(fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        spawned.append((fn.__name__, fn, args))

    async def conversation_put(id: str, kind: str, secret: bytes, members: list[str],
                               name: str | None = None, created_at: float | None = None
                               ) -> dict[str, Any]:
        assert saved is not None, "nothing is saved here"
        saved.append(members)
        return {"id": id}

    async def owe_first(conv: Conversation, members: set[str]) -> None:
        pass

    clients = SimpleNamespace(storage=fake(StorageClient, conversation_put=conversation_put))
    ctx = Context(clients, spawn, lambda topic, data: None, get_logger("gossip"))  # type: ignore[arg-type]
    ctx.me = ME
    return Membership(ctx, owe_first), spawned


def _room() -> Conversation:
    secret = cv.new_room_secret()
    return Conversation(cv.Keys.derive("room", secret), "ops", secret)


def test_stored_members_are_held_without_being_saved_again() -> None:
    membership, spawned = _membership()
    conv = _room()
    assert membership.add(conv, {ME, ALICE}, Why.STORED) == {ME, ALICE}
    assert conv.members == {ME, ALICE} and spawned == []


async def test_the_saved_member_list_is_the_whole_one() -> None:
    saved: list[list[str]] = []
    membership, spawned = _membership(saved)
    conv = _room()
    membership.add(conv, {ME, ALICE}, Why.STORED)
    membership.add(conv, {BOB}, Why.AUTHOR)
    _, save, args = spawned[0]
    await save(*args)
    assert saved == [sorted([ALICE, BOB, ME])]


@pytest.mark.parametrize("why", [Why.AUTHOR, Why.SYNC])
def test_a_member_learnt_is_saved_and_the_first_owe_what_we_wrote_alone(why: Why) -> None:
    membership, spawned = _membership()
    conv = _room()
    membership.add(conv, {ME}, Why.STORED)
    assert membership.add(conv, {ALICE}, why) == {ALICE}
    assert [name for name, _, _ in spawned] == ["_save", "owe_first"]
    assert spawned[1][2] == (conv, {ALICE})
    # The next member is saved, but owes nothing: alice already has a queue.
    spawned.clear()
    assert membership.add(conv, {ALICE, BOB}, why) == {BOB}
    assert [name for name, _, _ in spawned] == ["_save"]
    assert conv.members == {ME, ALICE, BOB}
    # Nobody new: nothing to save.
    spawned.clear()
    assert membership.add(conv, {BOB}, why) == set() and spawned == []


def test_an_invalid_peer_id_never_becomes_a_member_whatever_the_reason() -> None:
    membership, spawned = _membership()
    conv = _room()
    for why in Why:
        assert membership.add(conv, {"not a peer id", "12D3Koo spaced", ""}, why) == set()
    assert conv.members == set() and spawned == []
    assert membership.ctx.counters["invalid_member_dropped"] == 3 * len(Why)


def test_the_registry_finds_a_conversation_by_id_and_topic_until_left() -> None:
    registry = Registry()
    conv = _room()
    registry.add(conv)
    assert registry.get(conv.id) is conv and registry.of_topic(conv.keys.topic) is conv
    assert registry.require(conv.id) is conv and list(registry) == [conv]
    registry.remove(conv)
    assert conv.id not in registry and registry.of_topic(conv.keys.topic) is None
    with pytest.raises(Exception, match="no conversation"):
        registry.require(conv.id)


# -- validation: what the router lets through ----------------------------------------


def _envelope(conv: Conversation, key: nacl.signing.SigningKey, text: str) -> bytes:
    author = identity.peer_id_from_public_key(bytes(key.verify_key))
    plaintext = cv.message_plaintext(conv.id, author, 1, 1.0, text)
    return cv.seal(conv.keys.content_key, identity.sign(key, cv.MESSAGE_DOMAIN, plaintext),
                   plaintext)


def _validator(conv: Conversation) -> tuple[Receive, Context]:
    membership, _ = _membership()
    registry = Registry()
    registry.add(conv)
    ctx = membership.ctx

    async def sync_with(*args: Any, **kw: Any) -> None:
        raise AssertionError("validation never syncs")

    return Receive(ctx, registry, membership, Delivery(ctx, registry), sync_with), ctx


def test_validation_lets_a_members_message_through_and_refuses_the_rest() -> None:
    alice = nacl.signing.SigningKey(bytes([1]) * 32)
    mallory = nacl.signing.SigningKey(bytes([2]) * 32)
    alice_id = identity.peer_id_from_public_key(bytes(alice.verify_key))
    mallory_id = identity.peer_id_from_public_key(bytes(mallory.verify_key))
    secret = bytes(range(32))
    chat = Conversation(cv.Keys.derive("direct", secret), "alice", secret, {"me", alice_id})
    receive, ctx = _validator(chat)

    def message(envelope: bytes, sender: str) -> Message:
        return Message(from_=peer_bytes(sender), data=envelope, seqno=b"\x01",
                       topic=chat.keys.topic)

    ok = _envelope(chat, alice, "héllo 👋 مرحبا")
    assert receive.validate(message(ok, alice_id)) is Validation.ACCEPT
    # Alice's genuine envelope replayed by mallory: the author is not the sender.
    assert receive.validate(message(ok, mallory_id)) is Validation.REJECT
    # Mallory holds the key (leaked), but is not one of the direct chat's two.
    assert receive.validate(message(_envelope(chat, mallory, "let me in"), mallory_id)) \
        is Validation.REJECT
    assert receive.validate(message(b"\x00" * 100, alice_id)) is Validation.REJECT
    assert dict(ctx.counters) == {"rejected_author_mismatch": 1, "rejected_non_member": 1,
                                  "rejected_envelope": 1}
    # Not a topic of ours: neither accepted nor held against the sender.
    assert receive.validate(Message(from_=peer_bytes(alice_id), data=ok,
                                    topic="/other")) is Validation.IGNORE
