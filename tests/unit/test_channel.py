"""The pairwise key channel core: two real vodozemac accounts, no network."""

from __future__ import annotations

import base64

import orjson
import pytest
import vodozemac
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pm.services.gossip import channel as ch

KEY = bytes(range(32))


class Node:
    """One side: an account and the channel's cores, as the actor would hold them."""

    def __init__(self, name: str, max_peers: int = ch.MAX_PEERS) -> None:
        self.name = name
        self.account = vodozemac.Account()
        self.book = ch.Book(self.account, max_peers=max_peers)
        self.queue = ch.Queue()
        self.seen = ch.Seen()
        self.inbox: list[tuple[str, ch.Payload]] = []
        self.refuse: set[str] = set()  # kinds the application will not take

    @property
    def identity_key(self) -> vodozemac.Curve25519PublicKey:
        return self.account.curve25519_key

    def bundle(self) -> tuple[vodozemac.Curve25519PublicKey, vodozemac.Curve25519PublicKey]:
        """A fresh (identity key, one-time key), as a published bundle would give."""
        self.account.generate_one_time_keys(1)
        (otk,) = self.account.one_time_keys.values()
        self.account.mark_keys_as_published()
        return self.identity_key, otk

    def send(self, peer: Node, kind: str = "sender_key", now: float = 0.0,
             **body: object) -> str:
        return self.queue.put(peer.name, payload(kind, **body), now)

    def push(self, peer: Node, now: float = 0.0, fresh_bundle: bool = False) -> ch.Push:
        """Our next PUSH to `peer`, as bytes would travel and be decoded."""
        ik, otk = peer.bundle() if fresh_bundle or not self.book.has_session(
            peer.name, peer.identity_key) else (peer.identity_key, None)
        push = ch.prepare_push(self.book, self.queue, peer.name, ik, otk, now)
        assert push is not None
        return push

    def answer(self, sender: Node, frame: bytes) -> bytes:
        """Our ACK to a PUSH frame from `sender`; hands what is new to our inbox."""
        push = ch.decode_push(frame)
        response = ch.respond(self.book, self.seen, sender.name, sender.identity_key,
                              push, lambda peer, p: p.kind not in self.refuse)
        self.inbox += [(sender.name, p) for p in response.delivered]
        return ch.encode_ack(response.ack)

    def settle(self, peer: Node, sent: ch.Push, ack_frame: bytes,
               now: float = 0.0) -> ch.Outcome:
        return ch.apply_ack(self.book, self.queue, peer.name, sent,
                            ch.decode_ack(ack_frame), now)


def payload(kind: str = "sender_key", **body: object) -> bytes:
    return ch.encode_payload(ch.Payload(kind, dict(body)))


def exchange(a: Node, b: Node, now: float = 0.0, fresh_bundle: bool = False) -> ch.Outcome:
    """One whole exchange: a's PUSH to b, b's ACK back."""
    sent = a.push(b, now, fresh_bundle)
    return a.settle(b, sent, b.answer(a, ch.encode_push(sent)), now)


def cross(a: Node, b: Node) -> None:
    """Both push at once: each encrypts before reading the other's PUSH."""
    a_push, b_push = a.push(b), b.push(a)
    a_ack, b_ack = b.answer(a, ch.encode_push(a_push)), a.answer(b, ch.encode_push(b_push))
    a.settle(b, a_push, a_ack)
    b.settle(a, b_push, b_ack)


@pytest.fixture
def alice() -> Node:
    return Node("alice")


@pytest.fixture
def bob() -> Node:
    return Node("bob")


def test_round_trip_delivers_a_payload(alice, bob):
    pid = alice.send(bob, room="r1", key="k1")
    outcome = exchange(alice, bob)
    assert outcome == ch.Outcome(delivered=(pid,))
    assert bob.inbox == [("alice", ch.Payload("sender_key", {"room": "r1", "key": "k1"}))]
    assert alice.queue.pending("bob") == ()
    assert bob.book.session_ids("alice") == alice.book.session_ids("bob")  # one, shared
    assert alice.book.current_session_id("bob") == bob.book.current_session_id("alice")


def test_a_payload_in_any_script_round_trips(alice, bob):
    body = {"name": "Zoë 🔑🙂", "ja": "日本語", "he": "עברית", "ar": "مرحبا", "nul": "a\u0000b"}
    alice.send(bob, "admit", **body)
    exchange(alice, bob)
    assert bob.inbox == [("alice", ch.Payload("admit", body))]


def test_both_sides_start_at_once_and_converge_on_one_session(alice, bob):
    alice.send(bob, n=1)
    bob.send(alice, n=1)
    cross(alice, bob)  # each creates an outbound session before reading the other's
    assert len(alice.book.session_ids("bob")) == len(bob.book.session_ids("alice")) == 2
    # The next round crosses again (the worst case): each side sends on the session it
    # just received on, which is the one the other has just left.
    alice.send(bob, n=2)
    bob.send(alice, n=2)
    cross(alice, bob)
    agreed = alice.book.current_session_id("bob")
    assert agreed is not None and agreed == bob.book.current_session_id("alice")
    assert agreed == min(alice.book.session_ids("bob"))
    # From now on both directions use that one session, crossing or not.
    for n in range(3, 7):
        alice.send(bob, n=n)
        bob.send(alice, n=n)
        if n % 2:
            exchange(alice, bob)
            exchange(bob, alice)
        else:
            a_push, b_push = alice.push(bob), bob.push(alice)
            assert {i.message.type for i in a_push.items + b_push.items} == {ch.OLM_NORMAL}
            alice.settle(bob, a_push, bob.answer(alice, ch.encode_push(a_push)))
            bob.settle(alice, b_push, alice.answer(bob, ch.encode_push(b_push)))
        assert alice.book.current_session_id("bob") == agreed
        assert bob.book.current_session_id("alice") == agreed
    assert [p.body["n"] for _, p in bob.inbox] == list(range(1, 7))
    assert [p.body["n"] for _, p in alice.inbox] == list(range(1, 7))
    assert len(alice.book.session_ids("bob")) == 2  # no session was added on the way


def test_after_crossing_once_a_one_sided_exchange_also_converges(alice, bob):
    alice.send(bob, n=1)
    bob.send(alice, n=1)
    cross(alice, bob)
    alice.send(bob, n=2)
    exchange(alice, bob)  # only Alice speaks: Bob now holds both confirmed
    bob.send(alice, n=2)
    exchange(bob, alice)
    assert alice.book.current_session_id("bob") == bob.book.current_session_id("alice")


def test_lost_and_reordered_messages_decrypt(alice, bob):
    ik, otk = bob.bundle()
    m1, m2, m3 = (alice.book.encrypt("bob", ik, otk, b"m%d" % i) for i in (1, 2, 3))
    # m2 never arrives; m3 comes before m1.
    assert bob.book.decrypt("alice", alice.identity_key, m3) == (b"m3", True)
    assert bob.book.decrypt("alice", alice.identity_key, m1) == (b"m1", False)
    r1, r2, r3 = (bob.book.encrypt("alice", alice.identity_key, None, b"r%d" % i)
                  for i in (1, 2, 3))
    assert r1.type == ch.OLM_NORMAL
    assert alice.book.decrypt("bob", None, r3) == (b"r3", False)
    assert alice.book.decrypt("bob", None, r1) == (b"r1", False)
    assert alice.book.decrypt("bob", None, r2) == (b"r2", False)
    assert len(alice.book.session_ids("bob")) == len(bob.book.session_ids("alice")) == 1


def test_a_replayed_frame_is_acked_but_handed_over_once(alice, bob):
    pid = alice.send(bob, room="r")
    sent = alice.push(bob)
    frame = ch.encode_push(sent)
    first = ch.decode_ack(bob.answer(alice, frame))
    again = ch.decode_ack(bob.answer(alice, frame))  # Olm refuses to decrypt it twice
    assert first == again == ch.Ack(ok=(pid,))
    assert len(bob.inbox) == 1


def test_a_resend_after_a_lost_ack_is_acked_but_handed_over_once(alice, bob):
    pid = alice.send(bob, room="r")
    sent = alice.push(bob)
    bob.answer(alice, ch.encode_push(sent))  # the ACK is lost on the way back
    retry_at = alice.queue.failed("bob", now=0.0)
    assert alice.queue.due(0.0) == [] and alice.queue.due(retry_at) == ["bob"]
    outcome = exchange(alice, bob, now=retry_at)  # encrypted afresh: a new Olm message
    assert outcome.delivered == (pid,)
    assert len(bob.inbox) == 1
    assert alice.queue.pending("bob") == ()


def test_a_peer_that_lost_its_sessions_answers_no_session_and_the_sender_recovers(alice, bob):
    alice.send(bob, n=1)
    exchange(alice, bob)
    bob.send(alice, n=1)
    exchange(bob, alice)  # Alice's session is confirmed: she sends normal messages
    reborn = Node("bob")  # Bob restarted without his sessions (and his account)
    pid = alice.send(reborn, n=2)
    # Alice knows only his old keys, and holds a session with them.
    sent = ch.prepare_push(alice.book, alice.queue, "bob", bob.identity_key, None, 0.0)
    assert sent.items[0].message.type == ch.OLM_NORMAL
    outcome = alice.settle(reborn, sent, reborn.answer(alice, ch.encode_push(sent)), now=5.0)
    assert outcome.no_session == (pid,)
    assert "bob" not in alice.book  # forgotten
    assert [q.id for q in alice.queue.pending("bob")] == [pid]  # kept
    assert alice.queue.due(5.0) == []  # backs off, so a stale bundle cannot loop us
    with pytest.raises(ch.NoSession):  # no bundle of his yet: queue untouched
        ch.prepare_push(alice.book, alice.queue, "bob", reborn.identity_key, None, 10.0)
    assert alice.queue.due(5.0 + ch.RETRY_BASE_S) == ["bob"]
    outcome = exchange(alice, reborn, now=5.0 + ch.RETRY_BASE_S, fresh_bundle=True)
    assert outcome.delivered == (pid,)
    assert reborn.inbox == [("alice", ch.Payload("sender_key", {"n": 2}))]


def test_a_prekey_message_for_a_used_one_time_key_is_no_session(alice, bob):
    ik, otk = bob.bundle()
    first = alice.book.encrypt("bob", ik, otk, b"one")
    bob.book.decrypt("alice", alice.identity_key, first)
    bob.book.forget("alice")  # the one-time key is gone with the session
    with pytest.raises(ch.NoSession):
        bob.book.decrypt("alice", alice.identity_key, first)
    assert "alice" not in bob.book


def test_a_refused_payload_is_reported_and_not_seen(alice, bob):
    bob.refuse.add("admit")
    pid = alice.send(bob, "admit", who="carol")
    assert exchange(alice, bob).refused == (pid,)
    assert bob.inbox == [] and alice.queue.pending("bob") == ()
    assert not bob.seen.has("alice", pid)


def test_an_unknown_kind_inside_olm_is_malformed_and_not_delivered(alice, bob):
    bad = orjson.dumps({"b": {}, "k": "launch_missiles"})
    pid = alice.queue.put("bob", bad, 0.0)
    assert exchange(alice, bob).malformed == (pid,)
    assert bob.inbox == []


def test_an_id_that_is_not_the_hash_of_the_payload_is_malformed(alice, bob):
    ik, otk = bob.bundle()
    message = alice.book.encrypt("bob", ik, otk, payload(n=1))
    push = ch.Push((ch.PushItem("0" * 32, message),))
    response = ch.respond(bob.book, bob.seen, "alice", alice.identity_key, push)
    assert response.ack.bad == {"0" * 32: ch.Bad.MALFORMED} and response.delivered == ()


def test_payloads_are_validated_both_ways():
    with pytest.raises(ch.LocalProtocolError, match="kind"):
        ch.encode_payload(ch.Payload("launch_missiles", {}))
    with pytest.raises(ch.LocalProtocolError, match="bytes"):
        ch.encode_payload(ch.Payload("admit", {"x": "y" * ch.MAX_PAYLOAD}))
    for data, why in [(b"[1]", "object"), (b'{"b":{},"k":"nope"}', "kind"),
                      (b'{"b":[],"k":"admit"}', "body"), (b'{"k":"admit","b":{}}', "canonical"),
                      (b"\xff", "JSON")]:
        with pytest.raises(ch.ChannelError, match=why):
            ch.decode_payload(data)
    assert ch.decode_payload(payload("admit", z=1, a=2)) == ch.Payload("admit", {"a": 2, "z": 1})


def _push_doc(n: int = 1, **over: object) -> dict:
    doc = {"v": 1, "items": [{"id": "%032x" % i, "m": {"t": 0, "b": "AAAA"}}
                             for i in range(n)]}
    doc.update(over)
    return doc


def _item(**m: object) -> dict:
    return {"id": "a" * 32, "m": {"t": 1, "b": "AAAA", **m}}


BAD_PUSHES = {
    "not json": b"{",
    "not an object": b"[]",
    "no version": orjson.dumps({"items": _push_doc()["items"]}),
    "version 2": orjson.dumps(_push_doc(v=2)),
    "version true": orjson.dumps(_push_doc(v=True)),
    "unknown field": orjson.dumps(_push_doc(extra=1)),
    "no items": orjson.dumps(_push_doc(0)),
    "want false": orjson.dumps(_push_doc(0, want=False)),
    "want a string": orjson.dumps(_push_doc(1, want="yes")),
    "items not a list": orjson.dumps(_push_doc(items={})),
    "33 items": orjson.dumps(_push_doc(33)),
    "item not an object": orjson.dumps(_push_doc(items=["x"])),
    "short id": orjson.dumps(_push_doc(items=[{"id": "ab", "m": {"t": 0, "b": "AAAA"}}])),
    "upper-case id": orjson.dumps(_push_doc(items=[{"id": "A" * 32, "m": {"t": 0, "b": "AAAA"}}])),
    "id a number": orjson.dumps(_push_doc(items=[{"id": 7, "m": {"t": 0, "b": "AAAA"}}])),
    "type 2": orjson.dumps(_push_doc(items=[_item(t=2)])),
    "type true": orjson.dumps(_push_doc(items=[_item(t=True)])),
    "type a string": orjson.dumps(_push_doc(items=[_item(t="0")])),
    "body a number": orjson.dumps(_push_doc(items=[_item(b=5)])),
    "garbage base64": orjson.dumps(_push_doc(items=[_item(b="!!not base64!!")])),
    "empty body": orjson.dumps(_push_doc(items=[_item(b="")])),
    "body too long": orjson.dumps(_push_doc(items=[_item(b=base64.b64encode(
        bytes(ch.MAX_BODY + 1)).decode())])),
    "message extra field": orjson.dumps(_push_doc(items=[_item(x=1)])),
    "same id twice": orjson.dumps(_push_doc(items=[_item(), _item()])),
    "garbage bundle": orjson.dumps(_push_doc(bundle="%%%")),
    "bundle too long": orjson.dumps(_push_doc(bundle=base64.b64encode(
        bytes(ch.MAX_BUNDLE + 1)).decode())),
    "oversize frame": b" " * (ch.MAX_FRAME + 1),
}


@pytest.mark.parametrize("frame", BAD_PUSHES.values(), ids=BAD_PUSHES.keys())
def test_a_broken_push_is_a_channel_error_and_changes_nothing(alice, bob, frame):
    alice.send(bob, n=1)
    exchange(alice, bob)
    before = (bob.book.session_ids("alice"), len(bob.seen))
    with pytest.raises(ch.ChannelError):
        bob.answer(alice, frame)
    assert (bob.book.session_ids("alice"), len(bob.seen)) == before
    assert bob.inbox == [("alice", ch.Payload("sender_key", {"n": 1}))]
    alice.send(bob, n=2)  # and the channel still works
    assert exchange(alice, bob).delivered


BAD_ACKS = {
    "not json": b"nope",
    "no version": b'{"ok":[]}',
    "unknown field": b'{"v":1,"ok":[],"more":1}',
    "ok not a list": b'{"v":1,"ok":{}}',
    "bad not an object": b'{"v":1,"bad":[]}',
    "unknown reason": orjson.dumps({"v": 1, "bad": {"a" * 32: "bored"}}),
    "reason a number": orjson.dumps({"v": 1, "bad": {"a" * 32: 1}}),
    "id twice in ok": orjson.dumps({"v": 1, "ok": ["a" * 32, "a" * 32]}),
    "id in ok and bad": orjson.dumps({"v": 1, "ok": ["a" * 32], "bad": {"a" * 32: "refused"}}),
    "bad id": orjson.dumps({"v": 1, "ok": ["xyz"]}),
    "unhashable id": orjson.dumps({"v": 1, "ok": [[1]]}),
    "33 ids": orjson.dumps({"v": 1, "ok": ["%032x" % i for i in range(33)]}),
    "garbage bundle": orjson.dumps({"v": 1, "ok": [], "bundle": "%%%"}),
    "empty bundle": orjson.dumps({"v": 1, "ok": [], "bundle": ""}),
    "oversize frame": b" " * (ch.MAX_ACK_FRAME + 1),
}


@pytest.mark.parametrize("frame", BAD_ACKS.values(), ids=BAD_ACKS.keys())
def test_a_broken_ack_is_a_channel_error(frame):
    with pytest.raises(ch.ChannelError):
        ch.decode_ack(frame)


def test_an_ack_for_other_ids_is_a_channel_error_and_changes_nothing(alice, bob):
    pid = alice.send(bob, n=1)
    sent = alice.push(bob)
    bob.answer(alice, ch.encode_push(sent))
    for ack in (ch.Ack(), ch.Ack(ok=("f" * 32,)), ch.Ack(ok=(pid, "f" * 32))):
        with pytest.raises(ch.ChannelError, match="does not answer"):
            ch.apply_ack(alice.book, alice.queue, "bob", sent, ack, 0.0)
    assert [q.id for q in alice.queue.pending("bob")] == [pid]
    assert "bob" in alice.book


def test_frames_round_trip_and_a_full_push_fits_in_a_frame():
    ack = ch.Ack(ok=("1" * 32,), bad={"2" * 32: ch.Bad.NO_SESSION, "3" * 32: ch.Bad.REFUSED})
    assert ch.decode_ack(ch.encode_ack(ack)) == ack
    a, b = vodozemac.Account(), vodozemac.Account()
    b.generate_one_time_keys(1)
    (otk,) = b.one_time_keys.values()
    session = a.create_outbound_session(b.curve25519_key, otk)
    items = []
    for i in range(ch.MAX_ITEMS):
        kind, body = session.encrypt(bytes([i]) * ch.MAX_PAYLOAD).to_parts()
        items.append(ch.PushItem("%032x" % i, ch.OlmMessage(kind, body)))
    push = ch.Push(tuple(items), bundle=b"\xff" * ch.MAX_BUNDLE)
    frame = ch.encode_push(push)
    assert len(frame) <= ch.MAX_FRAME
    assert ch.decode_push(frame) == push
    with pytest.raises(ch.LocalProtocolError):
        ch.encode_push(ch.Push(tuple(items) + (ch.PushItem("f" * 32, items[0].message),)))


def test_a_first_contact_asks_for_the_bundle_with_no_items_and_gets_it_in_the_ack():
    ask = ch.Push((), bundle=b"mine", want_bundle=True)
    assert ch.decode_push(ch.encode_push(ask)) == ask
    with pytest.raises(ch.LocalProtocolError):
        ch.encode_push(ch.Push(()))  # without asking, an empty PUSH is pointless
    ack = ch.Ack(bundle=b"\xfe" * ch.MAX_BUNDLE,
                 ok=tuple("%032x" % i for i in range(ch.MAX_ITEMS)))
    frame = ch.encode_ack(ack)
    assert len(frame) <= ch.MAX_ACK_FRAME
    assert ch.decode_ack(frame) == ack


def test_a_full_queue_raises_and_keeps_what_it_holds(alice, bob):
    ids = [alice.send(bob, n=n) for n in range(ch.MAX_QUEUED)]
    with pytest.raises(ch.QueueFull) as info:
        alice.send(bob, n=ch.MAX_QUEUED)
    assert info.value.peer == "bob"
    assert [q.id for q in alice.queue.pending("bob")] == ids
    assert alice.send(bob, n=0) == ids[0]  # the same payload again is not a new one
    first = alice.push(bob)
    assert [i.id for i in first.items] == ids[:ch.MAX_ITEMS]  # oldest first
    alice.settle(bob, first, bob.answer(alice, ch.encode_push(first)))
    alice.send(bob, n=ch.MAX_QUEUED)  # room again once some were delivered


def test_the_queue_refuses_a_new_peer_beyond_its_bound():
    queue = ch.Queue(max_peers=2)
    queue.put("p1", payload(n=1), 0.0)
    queue.put("p2", payload(n=1), 0.0)
    with pytest.raises(ch.QueueFull):
        queue.put("p3", payload(n=1), 0.0)
    assert len(queue) == 2
    with pytest.raises(ValueError):
        queue.put("p1", b"x" * (ch.MAX_PAYLOAD + 1), 0.0)


def test_failed_exchanges_back_off_exponentially_up_to_a_cap():
    queue = ch.Queue()
    queue.put("p", payload(n=1), 100.0)
    assert queue.due(100.0) == ["p"]
    queue.take("p")
    assert queue.due(100.0) == [] and queue.next_due() is None  # in flight
    waits = []
    for _ in range(10):
        waits.append(queue.failed("p", 100.0) - 100.0)
    assert waits[:4] == [ch.RETRY_BASE_S, 2 * ch.RETRY_BASE_S, 4 * ch.RETRY_BASE_S,
                         8 * ch.RETRY_BASE_S]
    assert max(waits) == ch.RETRY_MAX_S
    assert queue.next_due() == 100.0 + ch.RETRY_MAX_S
    queue.take("p")
    queue.acked("p", [], {}, 500.0)  # the peer answered: the backoff is over
    assert queue.due(500.0) == ["p"]


def test_a_peer_keeps_at_most_four_sessions_and_sends_on_the_newest(alice, bob):
    for n in range(ch.MAX_SESSIONS_PER_PEER + 2):
        alice.book.forget("bob")  # Alice starts afresh each time
        alice.send(bob, n=n)
        exchange(alice, bob, fresh_bundle=True)
        assert bob.book.current_session_id("alice") == alice.book.current_session_id("bob")
    assert len(bob.book.session_ids("alice")) == ch.MAX_SESSIONS_PER_PEER
    assert bob.book.session_ids("alice")[-1] == bob.book.current_session_id("alice")
    bob.send(alice, n=99)
    exchange(bob, alice)
    assert alice.inbox[-1][1].body == {"n": 99}


def test_the_book_evicts_the_least_recently_used_peer():
    me = Node("me", max_peers=2)
    peers = [Node(f"p{i}") for i in range(3)]
    for p in peers[:2]:
        ik, otk = p.bundle()
        me.book.encrypt(p.name, ik, otk, b"hi")
    me.book.encrypt("p0", peers[0].identity_key, None, b"again")  # p0 is now the newest
    ik, otk = peers[2].bundle()
    me.book.encrypt("p2", ik, otk, b"hi")
    assert "p1" not in me.book and "p0" in me.book and "p2" in me.book
    assert len(me.book) == 2


def test_sessions_pickle_per_peer_and_a_wrong_key_fails_clearly(alice, bob):
    alice.send(bob, n=1)
    exchange(alice, bob)
    sealed = bob.book.pickle_peer("alice", KEY)
    assert sealed is not None and bob.book.pickle_peer("nobody", KEY) is None
    restored = ch.Book(bob.account)
    with pytest.raises(ch.BadPickle, match="wrong key"):
        restored.unpickle_peer("alice", sealed, bytes(32))
    with pytest.raises(ch.BadPickle):
        restored.unpickle_peer("alice", sealed[:-20], KEY)
    with pytest.raises(ch.BadPickle):
        restored.unpickle_peer("carol", sealed, KEY)  # another peer's record
    with pytest.raises(ValueError):
        restored.unpickle_peer("alice", sealed, b"short")
    assert "alice" not in restored
    restored.unpickle_peer("alice", sealed, KEY)
    assert restored.current_session_id("alice") == bob.book.current_session_id("alice")
    bob.book = restored  # as after a restart: the conversation goes on
    bob.send(alice, n=2)
    exchange(bob, alice)
    alice.send(bob, n=3)
    exchange(alice, bob)
    assert [p.body["n"] for _, p in bob.inbox] == [1, 3]


def test_seen_forgets_the_oldest_first():
    seen = ch.Seen(max_ids=3)
    assert all(seen.add("p", str(i)) for i in range(3))
    assert not seen.add("p", "0")
    seen.add("p", "3")
    assert not seen.has("p", "0") and seen.has("p", "1") and seen.has("p", "3")
    assert not seen.has("q", "1")  # per peer: another sender's same payload is its own
    assert len(seen) == 3


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_decoding_arbitrary_bytes_raises_only_channel_errors(data):
    for decode in (ch.decode_push, ch.decode_ack, ch.decode_payload):
        try:
            decode(data)
        except ch.ChannelError:
            pass


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["v", "items", "bundle", "id", "m", "t", "b", "ok", "bad", "k", "x"])
        | st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(_json, st.integers(0, 2), st.integers(0, 1))
def test_decoding_arbitrary_json_raises_only_channel_errors(doc, pick, olm_type):
    # Shapes close to the real frames reach the deeper checks.
    shaped = [doc, {"v": 1, "items": [{"id": "a" * 32, "m": {"t": olm_type, "b": doc}}],
                    "bundle": doc},
              {"v": 1, "ok": doc, "bad": {"b" * 32: doc}}][pick]
    data = orjson.dumps(shaped)
    for decode in (ch.decode_push, ch.decode_ack, ch.decode_payload):
        try:
            decode(data)
        except ch.ChannelError:
            pass
