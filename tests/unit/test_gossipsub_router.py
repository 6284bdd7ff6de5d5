"""The GossipSub router core driven directly: RPC frames in, events and frames out,
with a fake clock and a seeded rng. No sockets, no event loop."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import nacl.signing
import pytest

from p2pm.services.gossip.router import (
    PROTOCOL_V10, PROTOCOL_V11, PROTOCOL_V12, Backpressure, GossipParams, Grafted,
    MessageReceived, PeerExchange, Published, Pruned, Router, ScoreParams, Validation,
)
from p2pm.services.gossip.router import messages as m
from p2pm.services.gossip.router.signing import ed25519_signer, peer_id_bytes, verify_ed25519

KEYS = [nacl.signing.SigningKey(bytes([i + 1]) * 32) for i in range(24)]
PEERS = [peer_id_bytes(bytes(k.verify_key)) for k in KEYS]
ME, A, B, C = PEERS[0], PEERS[1], PEERS[2], PEERS[3]
T = "room"


def make_router(validate: Any = None, score_params: ScoreParams | None = None,
                **params: Any) -> Router:
    return Router(ME, verify=verify_ed25519, sign=ed25519_signer(KEYS[0]),
                  rng=random.Random(7), validate=validate,
                  params=GossipParams(**params), score_params=score_params)


def signed(author: int, data: bytes, seqno: int, topic: str = T) -> m.Message:
    msg = m.Message(from_=PEERS[author], data=data, seqno=seqno.to_bytes(8, "big"), topic=topic)
    return dataclasses.replace(msg, signature=ed25519_signer(KEYS[author])(m.signing_data(msg)))


def frame(*msgs: m.Message, subs: tuple[str, ...] = (), control: m.ControlMessage | None = None,
          unsubs: tuple[str, ...] = ()) -> bytes:
    opts = tuple(m.SubOpts(subscribe=True, topicid=t) for t in subs) + \
        tuple(m.SubOpts(subscribe=False, topicid=t) for t in unsubs)
    return m.encode(m.RPC(subscriptions=opts, publish=msgs, control=control))


def sent(router: Router) -> dict[bytes, list[m.RPC]]:
    out: dict[bytes, list[m.RPC]] = {}
    for send in router.flush():
        assert len(send.frame) <= router.params.max_rpc_size
        out.setdefault(send.peer, []).append(m.decode_rpc(send.frame, 1 << 30))
    return out


def published(rpcs: list[m.RPC]) -> list[m.Message]:
    return [msg for rpc in rpcs for msg in rpc.publish]


def control(rpcs: list[m.RPC]) -> m.ControlMessage:
    parts = [r.control for r in rpcs if r.control is not None]
    return m.ControlMessage(*(tuple(x for c in parts for x in getattr(c, f))
                              for f in ("ihave", "iwant", "graft", "prune", "idontwant")))


def joined(router: Router, *peers: bytes, now: float = 0.0, protocol: str = PROTOCOL_V11,
           outbound: bool = True) -> None:
    """Connect `peers`, have them subscribe to T, and drop what the router queued."""
    for p in peers:
        router.add_peer(p, protocol, outbound=outbound, now=now)
        router.handle_rpc(p, frame(subs=(T,)), now)
    router.flush()


def state(router: Router) -> tuple:  # type: ignore[type-arg]
    stats = router.statistics()
    return (stats["mesh"], stats["topics"], stats["seen"], stats["mcache"],
            {p: router.score(p) for p in router.peers()},
            {t: router.topic_peers(t) for t in (T, "other")}, router.pending_peers())


# -- joining, publishing, forwarding ----------------------------------------------------

def test_subscribe_announces_and_grafts_known_peers() -> None:
    r = make_router()
    joined(r, A, B)
    events = r.subscribe(T, now=1.0)
    assert {e.peer for e in events if isinstance(e, Grafted)} == {A, B}
    out = sent(r)
    for p in (A, B):
        assert out[p][0].subscriptions == (m.SubOpts(subscribe=True, topicid=T),)
        assert control(out[p]).graft == (m.ControlGraft(topic_id=T),)


def test_new_peer_learns_our_subscriptions() -> None:
    r = make_router()
    r.subscribe(T, 0.0)
    r.add_peer(A, PROTOCOL_V11, outbound=False, now=0.0)
    assert sent(r)[A][0].subscriptions == (m.SubOpts(subscribe=True, topicid=T),)


def test_received_message_is_delivered_once_and_forwarded_to_mesh_but_not_back() -> None:
    r = make_router()
    r.subscribe(T, 0.0)
    joined(r, A, B, C)
    r.heartbeat(1.0)
    r.flush()
    msg = signed(5, b"hello", 1)
    events = r.handle_rpc(A, frame(msg), 1.1)
    assert [type(e) for e in events] == [MessageReceived]
    assert events[0].message == msg and events[0].source == A
    out = sent(r)
    assert A not in out
    assert published(out[B]) == [msg] and published(out[C]) == [msg]
    assert r.handle_rpc(B, frame(msg), 1.2) == []
    assert r.statistics()["counters"]["msg_duplicate"] == 1
    assert sent(r) == {}


def test_messages_of_unsubscribed_topics_are_ignored_and_counted() -> None:
    r = make_router()
    r.subscribe(T, 0.0)
    joined(r, A)
    assert r.handle_rpc(A, frame(signed(5, b"x", 1, topic="other")), 0.1) == []
    assert r.statistics()["counters"]["msg_unknown_topic"] == 1


def test_own_publish_floods_all_topic_peers_in_one_frame_each() -> None:
    r = make_router()
    r.subscribe(T, 0.0)
    joined(r, *PEERS[1:9])
    results = [r.publish(T, b"m%d" % i, now=1.0 + i / 1000) for i in range(20)]
    assert all(isinstance(x, Published) and len(x.peers) == 8 for x in results)
    sends = r.flush()
    assert sorted(s.peer for s in sends) == sorted(PEERS[1:9])  # one frame per peer
    got = published([m.decode_rpc(sends[0].frame, 1 << 30)])
    assert [x.data for x in got] == [b"m%d" % i for i in range(20)]
    assert all(verify_ed25519(ME, None, m.signing_data(x), x.signature) for x in got)


def test_republishing_the_same_message_is_harmless() -> None:
    r = make_router()
    r.subscribe(T, 0.0)
    joined(r, A)
    msg = r.new_message(T, b"x", 1.0)
    msg = dataclasses.replace(msg, signature=ed25519_signer(KEYS[0])(m.signing_data(msg)))
    first = r.publish_message(msg, 1.0)
    again = r.publish_message(msg, 1.5)
    assert isinstance(again, Published) and again.duplicate and again.msg_id == first.msg_id
    assert len(published(sent(r)[A])) == 1


def test_publish_refuses_bad_local_input_without_changing_anything() -> None:
    r = make_router(max_message_size=100, max_rpc_size=2000)
    r.subscribe(T, 0.0)
    joined(r, A)
    before = state(r)
    with pytest.raises(ValueError):
        r.publish(T, b"x" * 200, 1.0)
    with pytest.raises(ValueError):
        r.publish("", b"x", 1.0)
    with pytest.raises(ValueError):
        r.publish_message(signed(5, b"not mine", 1), 1.0)
    with pytest.raises(ValueError):
        r.add_peer(B, "/floodsub/1.0.0", outbound=True, now=1.0)
    assert state(r) == before


# -- validation and scoring ------------------------------------------------------------

def test_invalid_signature_sender_is_penalised_pruned_then_graylisted() -> None:
    r = make_router()
    r.subscribe(T, 0.0)
    joined(r, A, B, C)
    r.heartbeat(1.0)
    assert A in r.mesh(T)
    r.flush()
    forged = dataclasses.replace(signed(5, b"evil", 1), data=b"EVIL")
    assert r.handle_rpc(A, frame(forged), 1.1) == []
    assert r.statistics()["counters"]["msg_invalid_signature"] == 1
    assert r.score(A) < 0 and sent(r) == {}  # not forwarded
    # The genuine message with the same id still gets through (forgery marks nothing seen).
    genuine = signed(5, b"evil", 1)
    assert [e.message for e in r.handle_rpc(B, frame(genuine), 1.2)] == [genuine]
    events = r.heartbeat(2.0)
    assert Pruned(A, T) in events and A not in r.mesh(T)
    prune = control(sent(r)[A]).prune
    assert prune[0].topic_id == T and prune[0].backoff == 60 and prune[0].peers == ()
    for seq in (2, 3):
        r.handle_rpc(A, frame(dataclasses.replace(signed(5, b"x", seq), data=b"y")), 2.1)
    assert r.score(A) < r._score.params.graylist_threshold
    assert r.handle_rpc(A, frame(signed(6, b"valid but graylisted", 1)), 2.2) == []
    assert r.statistics()["counters"]["rpc_graylisted"] == 1
    # Honest peers are unaffected.
    ok = signed(6, b"honest", 2)
    assert [e.message for e in r.handle_rpc(C, frame(ok), 2.3)] == [ok]
    assert r.score(B) >= 0 and r.score(C) >= 0


def test_unsigned_messages_are_rejected_under_strict_sign() -> None:
    r = make_router()
    r.subscribe(T, 0.0)
    joined(r, A)
    unsigned = m.Message(from_=PEERS[5], data=b"x", seqno=b"\0" * 8, topic=T)
    assert r.handle_rpc(A, frame(unsigned), 0.1) == []
    assert r.statistics()["counters"]["msg_unsigned"] == 1 and r.score(A) < 0


def test_validation_hook_reject_penalises_ignore_does_not() -> None:
    verdicts = {b"bad": Validation.REJECT, b"meh": Validation.IGNORE}
    r = make_router(validate=lambda msg: verdicts.get(msg.data, Validation.ACCEPT))
    r.subscribe(T, 0.0)
    joined(r, A, B)
    assert r.handle_rpc(A, frame(signed(5, b"meh", 1)), 0.1) == []
    assert r.score(A) >= 0
    assert r.handle_rpc(B, frame(signed(5, b"bad", 2)), 0.1) == []
    assert r.score(B) < 0
    c = r.statistics()["counters"]
    assert c["msg_ignored"] == 1 and c["msg_rejected"] == 1
    assert sent(r) == {}


def test_pending_validation_is_concluded_later_and_bounded() -> None:
    r = make_router(validate=lambda msg: Validation.PENDING, max_pending_validations=2,
                    validation_timeout_s=5.0)
    r.subscribe(T, 0.0)
    joined(r, A, B)
    r.heartbeat(1.0)
    r.flush()
    first, second, third = (signed(5, b"%d" % i, i) for i in (1, 2, 3))
    assert r.handle_rpc(A, frame(first, second, third), 1.1) == []
    assert r.statistics()["counters"]["validation_backlog_full"] == 1
    assert sent(r) == {}  # nothing forwarded before the verdict
    accepted = r.report_validation(r._message_id(first), Validation.ACCEPT, 1.2)
    assert [e.message for e in accepted] == [first]
    assert published(sent(r)[B]) == [first]
    assert r.report_validation(r._message_id(second), Validation.REJECT, 1.2) == []
    assert r.score(A) < 0
    assert r.report_validation(r._message_id(second), Validation.ACCEPT, 1.3) == []
    assert r.statistics()["counters"]["validation_report_unknown"] == 1
    # The one refused for lack of room was not marked seen: B's copy gets its chance.
    r.handle_rpc(B, frame(third), 1.4)
    r.heartbeat(10.0)
    assert r.statistics()["counters"]["validation_timeout"] == 1
    assert r.report_validation(r._message_id(third), Validation.ACCEPT, 10.1) == []


def test_validator_crash_does_not_crash_the_router() -> None:
    def boom(msg: m.Message) -> Validation:
        raise RuntimeError("bug in the conversation layer")

    r = make_router(validate=boom)
    r.subscribe(T, 0.0)
    joined(r, A)
    assert r.handle_rpc(A, frame(signed(5, b"x", 1)), 0.1) == []
    assert r.statistics()["counters"]["msg_ignored"] == 1 and r.score(A) >= 0


def test_scores_decay_and_survive_reconnect() -> None:
    r = make_router()
    r.subscribe(T, 0.0)
    joined(r, A)
    r.handle_rpc(A, frame(dataclasses.replace(signed(5, b"x", 1), data=b"z")), 0.1)
    low = r.score(A)
    r.remove_peer(A, 1.0)
    joined(r, A, now=2.0)
    assert r.score(A) == low  # reconnecting does not wash the score clean
    r.heartbeat(2.0)
    r.heartbeat(5000.0)
    assert low < r.score(A) <= 0


# -- malformed input -------------------------------------------------------------------

def test_malformed_oversized_and_unknown_input_is_counted_and_changes_nothing() -> None:
    r = make_router(max_message_size=1000, max_rpc_size=4096)
    r.subscribe(T, 0.0)
    joined(r, A, B)
    r.heartbeat(1.0)
    r.flush()
    before = state(r)
    big = signed(5, b"x" * 2000, 1)
    unknown_only = b"\x1a\x02\x48\x01"  # control with only field 9
    bad_inputs = [b"\xff\xff", frame(signed(5, b"y", 2))[:-3], b"\x12" + b"\x80" * 11,
                  b"\x00" * 5000, frame(big), unknown_only, frame(subs=("x" * 1000,)),
                  b"\x1a\x03\x1a\x01\x0a"]  # graft with a truncated topic
    for data in bad_inputs:
        assert r.handle_rpc(A, data, 1.5) == []
    assert r.handle_rpc(PEERS[9], frame(signed(5, b"z", 3)), 1.5) == []  # not connected
    c = r.statistics()["counters"]
    assert c["rpc_malformed"] == 4 and c["rpc_oversized"] == 1 and c["msg_oversized"] == 1
    assert c["control_unknown_fields"] == 1 and c["subscription_invalid"] == 1
    assert c["rpc_unknown_peer"] == 1
    assert state(r) == before


# -- mesh maintenance ------------------------------------------------------------------

def test_heartbeat_fills_mesh_to_d_and_prunes_oversubscription_keeping_outbound() -> None:
    r = make_router(d=4, d_lo=3, d_hi=6, d_score=2, d_out=2)
    r.subscribe(T, 0.0)
    inbound, outbound = PEERS[1:10], PEERS[10:12]
    joined(r, *inbound, outbound=False)
    joined(r, *outbound, outbound=True)
    graft = frame(control=m.ControlMessage(graft=(m.ControlGraft(topic_id=T),)))
    for p in inbound:  # everyone grafts us; inbound grafts stop at d_hi
        r.handle_rpc(p, graft, 1.0)
    assert len(r.mesh(T)) == 6 and r.statistics()["counters"]["graft_mesh_full"] == 3
    for p in outbound:  # outbound peers are taken even then: the mesh overflows
        r.handle_rpc(p, graft, 1.0)
    assert len(r.mesh(T)) == 8
    r.heartbeat(1.5)
    mesh = r.mesh(T)
    assert len(mesh) == 4
    assert len(mesh & set(outbound)) >= 2
    prunes = {p: control(rpcs).prune for p, rpcs in sent(r).items() if control(rpcs).prune}
    assert prunes and all(pr[0].backoff == 60 for pr in prunes.values())
    assert any(pr[0].peers for pr in prunes.values())  # peer exchange on oversubscription


def test_graft_during_backoff_is_refused_and_penalised_for_v11_only() -> None:
    r = make_router()
    r.subscribe(T, 0.0)
    joined(r, A)
    joined(r, B, protocol=PROTOCOL_V10)
    graft = frame(control=m.ControlMessage(graft=(m.ControlGraft(topic_id=T),)))
    for p in (A, B):
        r.handle_rpc(p, frame(control=m.ControlMessage(prune=(m.ControlPrune(topic_id=T),))), 1.0)
    r.flush()
    for p in (A, B):
        r.handle_rpc(p, graft, 2.0)
    assert A not in r.mesh(T) and B not in r.mesh(T)
    out = sent(r)
    assert control(out[A]).prune[0].backoff == 60
    # A 1.0 peer gets a plain PRUNE: no backoff field, no peer exchange, no penalty.
    assert control(out[B]).prune == (m.ControlPrune(topic_id=T),)
    assert r.score(A) < 0 and r.score(B) == 0


def test_graft_for_unknown_topic_is_ignored_without_reply() -> None:
    r = make_router()
    joined(r, A)
    r.handle_rpc(A, frame(control=m.ControlMessage(graft=(m.ControlGraft(topic_id=T),))), 1.0)
    assert sent(r) == {} and r.statistics()["counters"]["graft_unknown_topic"] == 1


def test_prune_with_backoff_keeps_us_from_regrafting_and_px_needs_a_trusted_peer() -> None:
    r = make_router(score_params=ScoreParams(accept_px_threshold=0.0))
    r.subscribe(T, 0.0)
    joined(r, A)
    r.heartbeat(1.0)
    assert A in r.mesh(T)
    px = (m.PeerInfo(peer_id=PEERS[7]),)
    events = r.handle_rpc(A, frame(control=m.ControlMessage(prune=(
        m.ControlPrune(topic_id=T, peers=px, backoff=30),))), 2.0)
    assert Pruned(A, T) in events and PeerExchange(T, A, px) in events
    r.heartbeat(20.0)
    assert A not in r.mesh(T)
    r.heartbeat(40.0)
    assert A in r.mesh(T)
    strict = make_router()  # default accept_px_threshold is above a fresh peer's score
    strict.subscribe(T, 0.0)
    joined(strict, A)
    events = strict.handle_rpc(A, frame(control=m.ControlMessage(prune=(
        m.ControlPrune(topic_id=T, peers=px, backoff=30),))), 2.0)
    assert not any(isinstance(e, PeerExchange) for e in events)


def test_unsubscribe_prunes_mesh_with_short_backoff() -> None:
    r = make_router()
    r.subscribe(T, 0.0)
    joined(r, A)
    r.heartbeat(1.0)
    r.flush()
    r.unsubscribe(T, 2.0)
    out = sent(r)[A]
    assert out[0].subscriptions == (m.SubOpts(subscribe=False, topicid=T),)
    assert control(out).prune[0].backoff == 10
    assert r.mesh(T) == set()


def test_direct_peers_get_every_message_stay_out_of_the_mesh_and_are_never_graylisted() -> None:
    r = make_router(flood_publish=False)
    r.subscribe(T, 0.0)
    joined(r, A, B)
    r.add_peer(C, PROTOCOL_V11, outbound=True, now=0.0, direct=True)
    r.handle_rpc(C, frame(subs=(T,)), 0.0)
    r.heartbeat(1.0)
    assert r.mesh(T) == {A, B}
    r.flush()
    relayed = signed(5, b"relayed", 1)
    r.handle_rpc(A, frame(relayed), 1.1)
    r.publish(T, b"own", 1.2)
    assert [x.data for x in published(sent(r)[C])] == [b"own", b"relayed"]  # own first
    graft = frame(control=m.ControlMessage(graft=(m.ControlGraft(topic_id=T),)))
    r.handle_rpc(C, graft, 1.3)
    assert C not in r.mesh(T) and control(sent(r)[C]).prune
    for seq in range(2, 6):  # a misbehaving direct peer is still heard
        r.handle_rpc(C, frame(dataclasses.replace(signed(5, b"x", seq), data=b"y")), 1.4)
    assert r.score(C) < r._score.params.graylist_threshold
    ok = signed(6, b"still heard", 1)
    assert [e.message for e in r.handle_rpc(C, frame(ok), 1.5)] == [ok]


# -- gossip ----------------------------------------------------------------------------

def test_ihave_leads_to_iwant_and_broken_promises_cost_score() -> None:
    r = make_router()
    r.subscribe(T, 0.0)
    joined(r, A)
    ids = [PEERS[5] + (i).to_bytes(8, "big") for i in range(3)]
    ihave = m.ControlIHave(topic_id=T, message_ids=tuple(ids))
    r.handle_rpc(A, frame(control=m.ControlMessage(ihave=(ihave,))), 1.0)
    assert control(sent(r)[A]).iwant == (m.ControlIWant(message_ids=tuple(ids)),)
    r.heartbeat(2.0)
    assert r.score(A) >= 0
    r.heartbeat(4.5)  # past iwant_followup_s without the promised message
    assert r.statistics()["counters"]["iwant_broken_promises"] == 1
    assert r.score(A) < 0


def test_ihave_limits_per_heartbeat() -> None:
    r = make_router(max_ihave_messages=2, max_ihave_length=5)
    r.subscribe(T, 0.0)
    joined(r, A)
    for k in range(4):
        ids = tuple(bytes([k, i]) * 10 for i in range(4))
        r.handle_rpc(A, frame(control=m.ControlMessage(ihave=(m.ControlIHave(
            topic_id=T, message_ids=ids),))), 1.0)
    asked = control(sent(r)[A]).iwant
    assert sum(len(x.message_ids) for x in asked) == 5
    assert r.statistics()["counters"]["ihave_over_limit"] >= 2


def test_iwant_is_answered_from_mcache_a_limited_number_of_times() -> None:
    r = make_router(gossip_retransmission=2)
    r.subscribe(T, 0.0)
    joined(r, A)
    res = r.publish(T, b"cached", 1.0)
    r.flush()
    iwant = m.ControlIWant(message_ids=(res.msg_id, b"nope"))
    ask = frame(control=m.ControlMessage(iwant=(iwant,)))
    for _ in range(3):
        r.handle_rpc(A, ask, 1.1)
    assert [x.data for x in published(sent(r)[A])] == [b"cached", b"cached"]
    c = r.statistics()["counters"]
    assert c["iwant_over_retransmission"] == 1 and c["iwant_unknown"] == 3


def test_heartbeat_gossips_ihave_to_peers_outside_the_mesh_for_mcache_gossip_windows() -> None:
    r = make_router(d=1, d_lo=1, d_hi=1, d_score=1, d_out=0, d_lazy=6)
    r.subscribe(T, 0.0)
    joined(r, *PEERS[1:5])
    r.heartbeat(0.5)
    r.flush()
    res = r.publish(T, b"x", 1.0)
    r.flush()
    outside = set(PEERS[1:5]) - r.mesh(T)
    for tick in range(3):
        r.heartbeat(2.0 + tick)
        out = sent(r)
        assert set(out) == outside
        for p in outside:
            assert control(out[p]).ihave == (m.ControlIHave(topic_id=T, message_ids=(res.msg_id,)),)
    r.heartbeat(6.0)
    assert sent(r) == {}  # shifted out of the gossip windows


def test_idontwant_from_v12_peer_skips_forwarding_and_we_send_it_for_big_messages() -> None:
    r = make_router(idontwant_min_size=400)
    r.subscribe(T, 0.0)
    joined(r, A, B, protocol=PROTOCOL_V12)
    joined(r, C, protocol=PROTOCOL_V11)
    r.heartbeat(1.0)
    r.flush()
    small, big = signed(5, b"s", 1), signed(5, b"b" * 400, 2)
    r.handle_rpc(B, frame(control=m.ControlMessage(idontwant=(m.ControlIDontWant(
        message_ids=(PEERS[5] + (1).to_bytes(8, "big"),)),))), 1.1)
    r.handle_rpc(A, frame(small, big), 1.2)
    out = sent(r)
    assert [x.data for x in published(out[B])] == [big.data]  # small one skipped
    big_id = PEERS[5] + (2).to_bytes(8, "big")
    assert control(out[B]).idontwant == (m.ControlIDontWant(message_ids=(big_id,)),)
    assert control(out[C]).idontwant == ()  # not a 1.2 peer


# -- queue policy ----------------------------------------------------------------------

def test_own_messages_are_never_dropped_publish_backpressure_changes_nothing() -> None:
    r = make_router(max_own_queue=50)
    r.subscribe(T, 0.0)
    joined(r, A, B)
    accepted: list[bytes] = []
    refused = 0
    for i in range(200):
        res = r.publish(T, b"%d" % i, 1.0 + i / 1e6)
        if isinstance(res, Backpressure):
            refused += 1
            assert set(res.full_peers) == {A, B}
        else:
            accepted.append(res.msg_id)
    assert len(accepted) == 50 and refused == 150
    assert r.statistics()["seen"] == 50 and r.statistics()["mcache"] == 50
    out = sent(r)
    for p in (A, B):
        got = [x.from_ + x.seqno for x in published(out[p])]
        assert got == accepted
    assert isinstance(r.publish(T, b"after flush", 2.0), Published)


def test_forwarded_burst_beyond_the_queue_bound_is_dropped_and_counted() -> None:
    r = make_router(max_forward_queue=100)
    r.subscribe(T, 0.0)
    joined(r, A, B)
    r.heartbeat(1.0)
    r.flush()
    burst = [signed(5, b"%d" % i, i + 1) for i in range(300)]
    delivered = [e for e in r.handle_rpc(A, frame(*burst), 1.1) if isinstance(e, MessageReceived)]
    assert len(delivered) == 300  # the local application gets all of it
    assert r.queued(B) == (0, 100)
    assert r.statistics()["counters"]["dropped_forward_queue_full"] == 200
    frames = [s for s in r.flush() if s.peer == B]
    assert len(published([m.decode_rpc(f.frame, 1 << 30) for f in frames])) == 100


def test_big_queues_are_split_into_frames_within_max_rpc_size() -> None:
    r = make_router(max_message_size=3000, max_rpc_size=8192)
    r.subscribe(T, 0.0)
    joined(r, A)
    for i in range(10):
        r.publish(T, bytes([i]) * 2500, 1.0 + i / 1e6)
    sends = r.flush()
    assert len(sends) > 1 and all(len(s.frame) <= 8192 for s in sends)
    msgs = published([m.decode_rpc(s.frame, 1 << 30) for s in sends])
    assert [x.data[0] for x in msgs] == list(range(10))


def test_disconnect_discards_queue_with_a_count() -> None:
    r = make_router()
    r.subscribe(T, 0.0)
    joined(r, A)
    r.publish(T, b"x", 1.0)
    r.remove_peer(A, 1.1)
    assert r.statistics()["counters"]["own_discarded_on_disconnect"] == 1
    assert r.flush() == [] and r.peers() == []


# -- fanout ----------------------------------------------------------------------------

def test_fanout_without_flood_publish_expires_after_ttl() -> None:
    r = make_router(flood_publish=False, fanout_ttl_s=10.0)
    joined(r, *PEERS[1:10])
    res = r.publish(T, b"x", 1.0)
    assert len(res.peers) == 6 and r.fanout(T) == set(res.peers)
    r.heartbeat(5.0)
    assert r.fanout(T)
    r.heartbeat(12.0)
    assert r.fanout(T) == set()


def test_parameters_are_validated() -> None:
    for bad in ({"d": 3, "d_lo": 4}, {"d_out": 5}, {"mcache_gossip": 9}, {"heartbeat_s": 0},
                {"max_rpc_size": 10}):
        with pytest.raises(ValueError):
            GossipParams(**bad)
    with pytest.raises(ValueError):
        ScoreParams(graylist_threshold=0.0)


def test_check_topic_is_the_rule_subscribing_applies() -> None:
    router = make_router()
    limit = router.params.max_topic_length
    router.check_topic("/p2pm/conversation/" + "a" * 10)
    for bad in ("", "t" * (limit + 1), None):
        with pytest.raises(ValueError, match="a topic is"):
            router.check_topic(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="a topic is"):
            router.subscribe(bad, 0.0)  # type: ignore[arg-type]
