"""The Kademlia core on its own: the server side of every request type, hostile input,
and the client side driven by hand (replies, failures, timeouts, timers)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pm.common.protobuf import DecodeError
from p2pm.services.dht.core import (CancelRequest, Config, KadCore, LookupDone, ProvideDone,
                                    PutDone, RequestRejected, SendRequest)
from p2pm.services.dht.keyspace import kad_key
from p2pm.services.dht.messages import (Message, MessageType, Peer, Record, decode_message,
                                        encode_message)
from p2pm.services.dht.records import (PublicKeyValidator, RecordError, SignedRecordValidator,
                                       Validators)
from p2pm.services.dht.sim import random_peer_id

from .test_kad_records import HOSTILE_RECORDS, NOW, Owner, hostile_record, nacl_verify

MH_KEY = b"\x12\x20" + bytes(range(32))  # a sha256 multihash, as provider keys are


def make_core(seed: int = 1, peers: int = 0, **cfg: object) -> tuple[KadCore, list[Peer]]:
    rng = random.Random(seed)
    validators = Validators(PublicKeyValidator(), SignedRecordValidator(nacl_verify))
    core = KadCore(Peer(random_peer_id(rng), (b"/ip4/10.0.0.1/tcp/1",)), validators,
                   Config(**cfg))  # type: ignore[arg-type]
    known = [Peer(random_peer_id(rng), (b"/ip4/10.0.0.2/tcp/%d" % i,)) for i in range(peers)]
    for p in known:
        core.routing.add(p, NOW)
    return core, known


def sends(actions: list) -> list[SendRequest]:
    return [a for a in actions if isinstance(a, SendRequest)]


def done(actions: list, kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


# -- server side ------------------------------------------------------------------------

def test_find_node_returns_the_k_closest_without_the_requester() -> None:
    core, known = make_core(peers=60, k=20)
    asker = core.routing.closest(kad_key(b"target"), 1)[0]
    reply = core.handle_request(Message(type=MessageType.FIND_NODE, key=b"target"), asker, NOW)
    assert reply is not None and reply.type == MessageType.FIND_NODE
    members = [p for p in known if p.id in core.routing and p.id != asker.id]
    want = sorted(members, key=lambda p: kad_key(p.id) ^ kad_key(b"target"))[:20]
    assert list(reply.closer_peers) == want


def test_a_server_sender_joins_the_routing_table_a_client_does_not() -> None:
    core, _ = make_core()
    client, server = Peer(b"\x00\x01c"), Peer(b"\x00\x01s")
    core.handle_request(Message(type=MessageType.PING), client, NOW)
    core.handle_request(Message(type=MessageType.PING), server, NOW, sender_is_server=True)
    assert client.id not in core.routing and server.id in core.routing


def test_put_then_get_a_signed_record() -> None:
    core, _ = make_core(peers=5)
    alice = Owner(1)
    key, value = alice.record("profile", b"hello")
    put = Message(type=MessageType.PUT_VALUE, key=key, record=Record(key, value))
    assert core.handle_request(put, Peer(b"\x00\x01x"), NOW) == put  # echoed, as the spec says
    reply = core.handle_request(Message(type=MessageType.GET_VALUE, key=key), Peer(b"y"), NOW)
    assert reply is not None and reply.record == Record(key, value)
    assert len(reply.closer_peers) == 5
    missing = core.handle_request(Message(type=MessageType.GET_VALUE, key=b"/pk/none"),
                                  Peer(b"y"), NOW)
    assert missing is not None and missing.record is None


@pytest.mark.parametrize("case", [c for c, _ in HOSTILE_RECORDS] + ["key mismatch", "no record"])
def test_hostile_put_value_is_rejected_without_state_change(case: str) -> None:
    core, _ = make_core()
    key, value = hostile_record(case if case in dict(HOSTILE_RECORDS) else "plain key")
    if case in ("key mismatch", "no record"):
        key, value = Owner(1).record("profile", b"hello")
    record = None if case == "no record" else Record(b"other" if case == "key mismatch" else key,
                                                     value)
    sender = Peer(b"\x00\x01mallory")
    with pytest.raises(RequestRejected):
        core.handle_request(Message(type=MessageType.PUT_VALUE, key=key, record=record),
                            sender, NOW, sender_is_server=True)
    assert len(core.records) == 0 and sender.id not in core.routing


def test_add_provider_records_only_the_sender_once() -> None:
    core, _ = make_core()
    sender = Peer(b"\x00\x01prov", (b"/ip4/1.2.3.4/tcp/1",))
    forged = Peer(b"\x00\x01someone-else")
    announce = Message(type=MessageType.ADD_PROVIDER, key=MH_KEY, provider_peers=(forged, sender))
    for _ in range(3):
        assert core.handle_request(announce, sender, NOW) is None  # ADD_PROVIDER has no reply
    reply = core.handle_request(Message(type=MessageType.GET_PROVIDERS, key=MH_KEY),
                                Peer(b"asker"), NOW)
    assert reply is not None and list(reply.provider_peers) == [sender]


@pytest.mark.parametrize("msg", [
    Message(type=MessageType.ADD_PROVIDER, key=MH_KEY, provider_peers=(Peer(b"\x00\x01z"),)),
    Message(type=MessageType.ADD_PROVIDER, key=b"not a multihash", provider_peers=(Peer(b"s"),)),
    Message(type=MessageType.ADD_PROVIDER, key=b"", provider_peers=(Peer(b"s"),)),
    Message(type=MessageType.GET_PROVIDERS, key=b"\x12\x20short"),
    Message(type=MessageType.FIND_NODE),
    Message(type=MessageType.GET_VALUE),
    Message(type=17),
])
def test_malformed_requests_are_rejected_and_change_nothing(msg: Message) -> None:
    core, _ = make_core()
    with pytest.raises(RequestRejected):
        core.handle_request(msg, Peer(b"s"), NOW, sender_is_server=True)
    assert core.providers.key_count() == 0 and len(core.routing) == 0


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"\x08\x09", b"\x12\x05ab", b"\x0a\x02\x08"])
def test_bad_protobuf_is_rejected(data: bytes) -> None:
    core, _ = make_core()
    with pytest.raises(RequestRejected, match="malformed"):
        core.handle_request_bytes(data, Peer(b"s"), NOW)


def test_ping_is_answered() -> None:
    core, _ = make_core()
    reply = core.handle_request_bytes(encode_message(Message(type=MessageType.PING)),
                                      Peer(b"s"), NOW)
    assert reply == Message(type=MessageType.PING)


def test_a_flood_from_one_peer_is_cut_off_others_still_served() -> None:
    core, _ = make_core(peers=10, rate=10.0, burst=20.0)
    flooder, other = Peer(b"\x00\x01flood"), Peer(b"\x00\x01fine")
    find = Message(type=MessageType.FIND_NODE, key=b"k")
    answered = refused = 0
    for _ in range(500):
        try:
            core.handle_request(find, flooder, NOW)
            answered += 1
        except RequestRejected as exc:
            assert "rate limited" in str(exc)
            refused += 1
    assert (answered, refused) == (20, 480)
    assert core.handle_request(find, other, NOW) is not None
    assert core.handle_request(find, flooder, NOW + 1.0) is not None  # refilled at 10/s


# -- client side ------------------------------------------------------------------------

def test_lookup_with_an_empty_table_finishes_at_once() -> None:
    core, _ = make_core()
    op_id, actions = core.find_node(b"x", NOW)
    (result,) = done(actions, LookupDone)
    assert result.op_id == op_id and result.result.closest == () and not sends(actions)


def test_lookup_keeps_alpha_in_flight_and_survives_timeouts_and_bad_replies() -> None:
    core, known = make_core(peers=8, k=6, alpha=3, request_timeout=5.0, max_failures=1)
    seeds = core.routing.closest(kad_key(b"target"), 6)
    op_id, actions = core.find_node(b"target", NOW)
    first = sends(actions)
    assert len(first) == 3 and all(s.message.type == MessageType.FIND_NODE for s in first)
    # one answers, one sends garbage, one never answers
    good, garbage, silent = first
    actions = core.handle_reply(good.request_id, Message(type=MessageType.FIND_NODE), NOW + 1)
    actions += core.handle_reply(garbage.request_id, b"\xff\xff", NOW + 1)
    refill = sends(actions)
    assert len(refill) == 2  # two more to keep three in flight
    assert garbage.peer.id not in core.routing  # a broken reply counts as a failure
    assert core.next_deadline() == float("-inf")  # never ticked: maintenance is due
    actions = core.tick(NOW + 5.0, random.Random(0))
    assert silent.peer.id not in core.routing  # timed out: evicted (max_failures=1)
    assert core.handle_reply(silent.request_id, Message(type=MessageType.FIND_NODE),
                             NOW + 6) == []  # too late, ignored
    pending = refill + sends(actions)
    while True:
        replies = []
        for s in pending:
            replies += core.handle_reply(s.request_id, Message(type=MessageType.FIND_NODE),
                                         NOW + 7)
        finished = [d for d in done(replies, LookupDone) if d.op_id == op_id]
        if finished:
            break
        pending = sends(replies)
        assert pending, "the lookup stalled"
    closest = finished[0].result.closest
    # the empty replies named nobody new: the answer is the seeds that did not fail
    assert list(closest) == [p for p in seeds if p not in (garbage.peer, silent.peer)]


def test_reply_of_the_wrong_type_is_a_failure() -> None:
    core, _ = make_core(peers=1, max_failures=1)
    _, actions = core.find_node(b"t", NOW)
    (req,) = sends(actions)
    actions = core.handle_reply(req.request_id, Message(type=MessageType.PING), NOW)
    assert done(actions, LookupDone)[0].result.failed == 1 and len(core.routing) == 0


def test_put_value_refuses_an_invalid_record_before_sending() -> None:
    core, _ = make_core(peers=5)
    with pytest.raises(RecordError):
        core.put_value(b"plain", b"value", NOW)
    assert len(core.records) == 0 and core.statistics()["pending_requests"] == 0


def _answer_all(core: KadCore, actions: list, now: float) -> list:
    """Answer every request as an empty-handed peer would; return every action seen."""
    seen = list(actions)
    queue = sends(actions)
    while queue:
        req = queue.pop(0)
        if not req.expects_reply:
            continue
        reply = Message(type=req.message.type, key=req.message.key, record=req.message.record)
        more = core.handle_reply(req.request_id, reply, now)
        seen += more
        queue += sends(more)
    return seen


def test_put_value_stores_at_the_closest_peers() -> None:
    core, known = make_core(peers=30, k=5)
    members = [p for p in known if p.id in core.routing]
    key, value = Owner(1).record("profile", b"v")
    op_id, actions = core.put_value(key, value, NOW)
    seen = _answer_all(core, actions, NOW)
    puts = [s for s in sends(seen) if s.message.type == MessageType.PUT_VALUE]
    want = sorted(members, key=lambda p: kad_key(p.id) ^ kad_key(key))[:5]
    assert [s.peer for s in puts] == want and puts[0].message.record == Record(key, value)
    (put_done,) = done(seen, PutDone)
    assert put_done.op_id == op_id and set(put_done.stored_at) == {p.id for p in want}
    assert core.records.get(key, NOW) == value


def test_get_value_uses_the_local_value_and_corrects_outdated_peers() -> None:
    core, known = make_core(peers=6, k=3, quorum=2)
    alice = Owner(1)
    key, old = alice.record("profile", b"old", seq=1)
    _, new = alice.record("profile", b"new", seq=2)
    core.records.put(key, new, NOW)
    _, actions = core.get_value(key, NOW)
    first = sends(actions)
    # the first answer carries a stale version: quorum (local + it) is reached
    stale = Message(type=MessageType.GET_VALUE, key=key, record=Record(key, old))
    actions = core.handle_reply(first[0].request_id, stale, NOW)
    (lookup,) = done(actions, LookupDone)
    assert lookup.result.value == new
    assert {c.request_id for c in done(actions, CancelRequest)} == {
        s.request_id for s in first[1:]}
    corrections = [s for s in sends(actions) if s.message.type == MessageType.PUT_VALUE]
    assert [c.peer for c in corrections] == [first[0].peer]
    assert corrections[0].message.record == Record(key, new)


def test_provide_announces_and_republishes_every_22h() -> None:
    core, known = make_core(peers=10, k=4)
    op_id, actions = core.provide(MH_KEY, NOW)
    seen = _answer_all(core, actions, NOW)
    adds = [s for s in sends(seen) if s.message.type == MessageType.ADD_PROVIDER]
    assert len(adds) == 4 and not any(a.expects_reply for a in adds)
    assert adds[0].message.provider_peers == (core.local,)
    (provided,) = done(seen, ProvideDone)
    assert provided.op_id == op_id and len(provided.sent_to) == 4
    early = core.tick(NOW + 21 * 3600, random.Random(0))
    assert not any(s.message.key == MH_KEY for s in sends(early))
    _answer_all(core, early, NOW + 21 * 3600)
    due = core.tick(NOW + 22 * 3600, random.Random(0))
    assert any(s.message.type == MessageType.FIND_NODE and s.message.key == MH_KEY
               for s in sends(due))
    _answer_all(core, due, NOW + 22 * 3600)
    core.stop_providing(MH_KEY)
    later = core.tick(NOW + 44 * 3600 + 1, random.Random(0))
    assert not any(s.message.key == MH_KEY for s in sends(later))


def test_tick_refreshes_stale_buckets_and_looks_itself_up() -> None:
    core, _ = make_core(peers=40, refresh_interval=600.0)
    first = sends(core.tick(NOW, random.Random(1)))
    assert any(s.message.key == core.local.id for s in first)  # the self-lookup
    _answer_all(core, first, NOW)
    assert core.next_deadline() == NOW + 60.0  # nothing in flight: the next maintenance
    assert not any(s.message.key == core.local.id
                   for s in sends(core.tick(NOW + 120, random.Random(1))))
    later = sends(core.tick(NOW + 700, random.Random(1)))
    buckets = {core.routing.bucket_of(s.message.key) for s in later
               if s.message.key != core.local.id}
    assert buckets and buckets <= set(range(13))
    assert any(s.message.key == core.local.id for s in later)


_peer_st = st.builds(Peer, id=st.binary(min_size=1, max_size=40),
                     addrs=st.lists(st.binary(max_size=20), max_size=2).map(tuple))
_message_st = st.builds(
    Message, type=st.integers(0, 7), key=st.sampled_from([b"", MH_KEY, b"/pk/x", b"/p2pm/a/b"])
    | st.binary(max_size=40),
    record=st.none() | st.builds(Record, key=st.binary(max_size=20), value=st.binary(max_size=60)),
    closer_peers=st.lists(_peer_st, max_size=3).map(tuple),
    provider_peers=st.lists(_peer_st, max_size=3).map(tuple))


@settings(max_examples=300, deadline=None)
@given(st.one_of(_message_st.map(encode_message), st.binary(max_size=120)))
def test_any_request_is_answered_or_rejected_never_crashes(data: bytes) -> None:
    core, _ = make_core(peers=5)
    sender = Peer(b"\x00\x01fuzz")
    before = (len(core.records), core.providers.key_count(), len(core.routing))
    try:
        reply = core.handle_request_bytes(data, sender, NOW, sender_is_server=True)
    except RequestRejected:
        assert (len(core.records), core.providers.key_count(), len(core.routing)) == before
        return
    if reply is not None:
        assert isinstance(encode_message(reply), bytes)


@settings(max_examples=200, deadline=None)
@given(st.one_of(_message_st.map(encode_message), st.binary(max_size=120)))
def test_any_reply_is_taken_or_counted_as_a_failure(data: bytes) -> None:
    core, _ = make_core(peers=3, max_failures=1)
    _, actions = core.find_node(b"t", NOW)
    try:
        usable = decode_message(data).type == MessageType.FIND_NODE
    except DecodeError:
        usable = False
    for req in sends(actions):
        core.handle_reply(req.request_id, data, NOW)
        # an answer we can use keeps the peer; anything else evicts it (max_failures=1)
        assert (req.peer.id in core.routing) == usable


def test_client_mode_serves_nothing_but_still_queries() -> None:
    core, _ = make_core(peers=5)
    assert core.set_server_mode(False) and not core.set_server_mode(False)
    with pytest.raises(RequestRejected, match="client mode"):
        core.handle_request(Message(type=MessageType.FIND_NODE, key=b"k"), Peer(b"\x00\x01s"),
                            NOW, sender_is_server=True)
    assert len(core.routing) == 5
    _, actions = core.find_node(b"k", NOW)
    assert len(sends(actions)) == 3


def test_a_refusal_fails_the_request_but_not_the_peer() -> None:
    core, _ = make_core(peers=3, k=3, max_failures=1)
    key, value = Owner(1).record("profile", b"v")
    _, actions = core.put_value(key, value, NOW)
    seen = list(actions)
    for req in sends(actions):  # the lookup: everyone answers with nobody new
        seen += core.handle_reply(req.request_id, Message(type=MessageType.FIND_NODE), NOW)
    puts = [s for s in sends(seen) if s.message.type == MessageType.PUT_VALUE]
    assert len(puts) == 3
    seen += core.handle_failure(puts[0].request_id, NOW, refused=True)  # holds a newer one
    seen += core.handle_failure(puts[1].request_id, NOW)  # unreachable
    seen += core.handle_reply(puts[2].request_id, puts[2].message, NOW)
    (put_done,) = done(seen, PutDone)
    assert put_done.stored_at == (puts[2].peer.id,)
    assert set(put_done.failed) == {puts[0].peer.id, puts[1].peer.id}
    assert puts[0].peer.id in core.routing and puts[1].peer.id not in core.routing


# -- the shell's entry points: find_peer, bootstrap, probe, connected peers ---------------

def test_find_peer_stops_at_the_first_reply_that_names_the_target() -> None:
    core, known = make_core(peers=10, k=20, alpha=3)
    target = Peer(random_peer_id(random.Random(99)), (b"/ip4/10.0.0.9/tcp/9",))
    op, actions = core.find_peer(target.id, NOW)
    first = sends(actions)
    assert len(first) == 3
    # The first answer names nobody new; the second names the target: done, with its
    # addresses, without waiting for the third.
    seen = core.handle_reply(first[0].request_id, Message(type=MessageType.FIND_NODE), NOW)
    assert not done(seen, LookupDone)
    waiting = {r.request_id for r in sends(seen)} | {first[2].request_id}
    seen = core.handle_reply(first[1].request_id, Message(
        type=MessageType.FIND_NODE, closer_peers=(target,)), NOW)
    (lookup,) = done(seen, LookupDone)
    assert lookup.op_id == op and lookup.result.found == target
    assert {a.request_id for a in done(seen, CancelRequest)} == waiting
    assert not sends(seen)  # the target itself is not asked: its addresses are known


def test_find_peer_of_nobody_known_ends_not_found() -> None:
    core, _ = make_core(peers=2)
    _, actions = core.find_peer(random_peer_id(random.Random(5)), NOW)
    seen = list(actions)
    for req in sends(actions):
        seen += core.handle_reply(req.request_id, Message(type=MessageType.FIND_NODE), NOW)
    (lookup,) = done(seen, LookupDone)
    assert lookup.result.found is None and lookup.result.queried == 2


def test_find_node_names_a_connected_peer_that_is_not_in_the_table() -> None:
    core, known = make_core(peers=5)
    hidden = Peer(random_peer_id(random.Random(3)), (b"/ip4/10.0.0.7/tcp/7",))
    ask = Message(type=MessageType.FIND_NODE, key=hidden.id)
    reply = core.handle_request(ask, known[0], NOW)
    assert reply is not None and hidden not in reply.closer_peers
    core.peer_connected(hidden)
    reply = core.handle_request(ask, known[0], NOW)
    assert reply is not None and reply.closer_peers[0] == hidden
    assert len(reply.closer_peers) <= core.config.k
    # ...but not to the target itself, which knows its own addresses.
    assert hidden not in core.handle_request(ask, hidden, NOW).closer_peers  # type: ignore[union-attr]


def test_a_refused_lookup_request_counts_as_an_empty_answer() -> None:
    # py-libp2p resets FIND_NODE for keys that are not peer IDs (record keys): the
    # peer is alive and serving, so a put must still store the record there.
    core, known = make_core(peers=1)
    key, value = Owner(1).record("profile", b"v")
    _, actions = core.put_value(key, value, NOW)
    (lookup_req,) = sends(actions)
    seen = core.handle_failure(lookup_req.request_id, NOW, refused=True)
    (put,) = [s for s in sends(seen) if s.message.type == MessageType.PUT_VALUE]
    assert put.peer.id == known[0].id
    assert known[0].id in core.routing


def test_bootstrap_asks_seeds_outside_the_table_and_probe_proves_a_peer() -> None:
    core, _ = make_core()
    seed = Peer(random_peer_id(random.Random(11)), (b"/ip4/10.0.0.3/tcp/3",))
    _, actions = core.bootstrap([seed], NOW)
    (req,) = sends(actions)
    assert req.peer == seed and req.message.key == core.local.id
    core.handle_reply(req.request_id, Message(type=MessageType.FIND_NODE), NOW)
    assert seed.id in core.routing
    other = Peer(random_peer_id(random.Random(12)), (b"/ip4/10.0.0.4/tcp/4",))
    probe = core.probe(other, NOW)
    assert other.id not in core.routing
    core.handle_reply(probe.request_id, Message(type=MessageType.FIND_NODE), NOW)
    assert other.id in core.routing


def test_the_shell_tells_the_core_about_connections_addresses_and_mode() -> None:
    core, known = make_core(peers=2)
    gone = Peer(random_peer_id(random.Random(4)), (b"/ip4/10.0.0.8/tcp/8",))
    ask = Message(type=MessageType.FIND_NODE, key=gone.id)
    core.peer_connected(gone)
    assert core.handle_request(ask, known[0], NOW).closer_peers[0] == gone  # type: ignore[union-attr]
    core.peer_disconnected(gone.id)
    assert gone not in core.handle_request(ask, known[0], NOW).closer_peers  # type: ignore[union-attr]
    core.peer_connected(gone)
    core.connections_reset()
    assert gone not in core.handle_request(ask, known[0], NOW).closer_peers  # type: ignore[union-attr]
    moved = Peer(core.local.id, (b"/ip4/192.0.2.9/tcp/9",))
    core.set_local_addrs(moved)
    assert core.local == moved
    with pytest.raises(ValueError):
        core.set_local_addrs(gone)
    assert core.set_server_mode(False)
    with pytest.raises(RequestRejected, match="client mode"):
        core.handle_request(ask, known[0], NOW)
    assert core.set_server_mode(True) and core.handle_request(ask, known[0], NOW)
