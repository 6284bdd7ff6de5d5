"""The sync session without sockets: every transition of the table, legal and
illegal, from either side; both membership proofs (bound to the conversation, both
peer ids and both nonces); the small pre-proof frame limit checked before parsing;
and the per-peer session rate limiter with its bounded table."""

from __future__ import annotations

import itertools
import os

import pytest

from p2pm.common import identity
from p2pm.services.gossip import sync
from p2pm.services.gossip.sync import Role, Session, State
from p2pm.services.gossip.syncing import SessionLimiter

I, R = Role.INITIATOR, Role.RESPONDER
ALICE = identity.peer_id_from_public_key(bytes(range(32)))
BOB = identity.peer_id_from_public_key(bytes(range(1, 33)))
MALLORY = identity.peer_id_from_public_key(bytes(range(2, 34)))
KEY, OTHER_KEY = b"k" * 32, b"o" * 32
CONV = "r" + "00" * 16


def pair(responder_secrets: dict[str, bytes] | None = None) -> tuple[Session, Session]:
    alice = Session(I, ALICE, BOB, os.urandom(sync.NONCE_BYTES), {CONV: KEY})
    bob = Session(R, BOB, ALICE, os.urandom(sync.NONCE_BYTES),
                  responder_secrets if responder_secrets is not None else {CONV: KEY})
    return alice, bob


def handshake(alice: Session, bob: Session) -> None:
    bob.receive(alice.open())
    alice.receive(bob.open())
    bob.receive(alice.prove())
    alice.receive(bob.prove())


def test_an_honest_session_runs_to_the_end_and_the_responder_learns_the_conversation() -> None:
    others = {f"r{i:032x}": os.urandom(32) for i in range(20)}
    alice, bob = pair({**others, CONV: KEY})
    assert bob.conversation is None and not bob.proven
    handshake(alice, bob)
    assert alice.proven and bob.proven and bob.conversation == CONV
    hello = sync.Hello({ALICE: [(1, 2)]}, {BOB: ["/ip4/1.2.3.4/tcp/1"]})
    assert bob.receive(alice.send(hello)) == hello
    assert alice.receive(bob.send(sync.Hello({}, {}))) == sync.Hello({}, {})
    assert bob.receive(alice.send(sync.Envs((b"e1", b"e2")))) == sync.Envs((b"e1", b"e2"))
    bob.receive(alice.send(sync.Done()))
    alice.receive(bob.send(sync.Done()))
    bob.receive(alice.send(sync.Have({})))
    assert not alice.finished
    alice.receive(bob.send(sync.Have({ALICE: [(1, 2)]})))
    assert alice.finished and bob.finished


FRAMES = [sync.Open(b"\x00" * sync.NONCE_BYTES), sync.Proof(b"\x00" * sync.PROOF_BYTES),
          sync.Hello({}, {}), sync.Envs(()), sync.Done(), sync.Have({})]
STATES = [s for s in State if s is not State.FAILED]


def _legal(side: Role, state: State, other: State, frame: sync.Frame) -> bool:
    rule = sync.TRANSITIONS.get((side, state, type(frame)))
    if rule is None:
        return False
    needs = rule[1]
    return needs is None or other >= needs[1]


@pytest.mark.parametrize("role", [I, R])
def test_every_transition_we_send_follows_the_table(role: Role) -> None:
    """Every (our state, their state, frame): sent if the table allows it, else
    LocalProtocolError and nothing changes."""
    other = R if role is I else I
    for ours, theirs, frame in itertools.product(STATES, STATES, FRAMES):
        s = Session(role, ALICE, BOB, b"\x01" * sync.NONCE_BYTES, {CONV: KEY})
        s.states = {role: ours, other: theirs}
        if _legal(role, ours, theirs, frame):
            assert s.send(frame) == sync.encode(frame)
            assert s.ours == sync.TRANSITIONS[(role, ours, type(frame))][0]
        else:
            with pytest.raises(sync.LocalProtocolError):
                s.send(frame)
            assert s.states == {role: ours, other: theirs}, (ours, theirs, frame)


@pytest.mark.parametrize("role", [I, R])
def test_every_transition_the_peer_makes_follows_the_table(role: Role) -> None:
    """Every (their state, our state, frame) received: accepted if the table allows it
    (a PROOF then still has to verify), else SyncError and the session is over."""
    other = R if role is I else I
    for theirs, ours, frame in itertools.product(STATES, STATES, FRAMES):
        s = Session(role, ALICE, BOB, b"\x01" * sync.NONCE_BYTES, {CONV: KEY})
        s.states = {role: ours, other: theirs}
        if _legal(other, theirs, ours, frame):
            if isinstance(frame, sync.Proof):
                with pytest.raises(sync.NotAMember):  # zeros are nobody's proof
                    s.receive(sync.encode(frame))
                assert s.theirs is State.FAILED
            else:
                assert s.receive(sync.encode(frame)) == frame
                assert s.theirs == sync.TRANSITIONS[(other, theirs, type(frame))][0]
        else:
            with pytest.raises(sync.SyncError) as info:
                s.receive(sync.encode(frame))
            assert not isinstance(info.value, sync.NotAMember)
            assert s.theirs is State.FAILED, (theirs, ours, frame)
            with pytest.raises(sync.SyncError, match="failed"):
                s.receive(sync.encode(sync.Done()))


def test_a_responder_without_the_key_is_found_out_before_the_initiator_says_anything() -> None:
    alice, mallory = pair({CONV: OTHER_KEY})
    mallory.receive(alice.open())
    alice.receive(mallory.open())
    proof = alice.prove()
    with pytest.raises(sync.NotAMember):
        mallory.receive(proof)  # she cannot check it: wrong key
    forged = sync.encode(sync.Proof(os.urandom(sync.PROOF_BYTES)))
    with pytest.raises(sync.NotAMember):
        alice.receive(forged)
    with pytest.raises(sync.LocalProtocolError):
        alice.send(sync.Hello({}, {}))


def test_an_initiator_without_the_key_gets_no_proof_and_no_hello() -> None:
    mallory = Session(I, MALLORY, BOB, os.urandom(sync.NONCE_BYTES), {CONV: OTHER_KEY})
    bob = Session(R, BOB, MALLORY, os.urandom(sync.NONCE_BYTES), {CONV: KEY})
    bob.receive(mallory.open())
    mallory.receive(bob.open())
    with pytest.raises(sync.NotAMember):
        bob.receive(mallory.prove())
    for frame in (sync.Proof(b"\x00" * 32), sync.Hello({}, {})):
        with pytest.raises(sync.LocalProtocolError):
            bob.send(frame)


def test_a_proof_is_bound_to_both_nonces_both_peers_and_the_role() -> None:
    alice, bob = pair()
    alice_open = alice.open()
    bob.receive(alice_open)
    bob_open = bob.open()
    alice.receive(bob_open)
    seen = alice.prove()
    # Replayed on a new session (a fresh nonce from bob): refused.
    _, bob2 = pair()
    bob2.receive(alice_open)
    bob2.open()
    with pytest.raises(sync.NotAMember):
        bob2.receive(seen)
    # Presented by another peer with the very same nonces: refused.
    bob_nonce = sync.decode(bob_open)
    assert isinstance(bob_nonce, sync.Open)
    carol = Session(R, BOB, MALLORY, bob_nonce.nonce, {CONV: KEY})
    carol.receive(alice_open)
    carol.open()
    with pytest.raises(sync.NotAMember):
        carol.receive(seen)
    # Reflected: the initiator's proof is not a responder's proof.
    bob.receive(seen)
    with pytest.raises(sync.NotAMember):
        alice.receive(seen)


def test_pre_proof_frames_are_small_and_measured_before_parsing() -> None:
    alice, bob = pair()
    with pytest.raises(sync.FrameTooLarge):
        bob.receive(b"{" * sync.MAX_FRAME)  # not even JSON: the length comes first
    alice, bob = pair()
    padded = b'{"t": "open", "nonce": "%s"%s}' % (
        sync.encode(sync.Open(b"\x00" * 16))[22:-2], b" " * sync.PRE_PROOF_FRAME)
    with pytest.raises(sync.FrameTooLarge):
        bob.receive(padded)
    alice, bob = pair()
    handshake(alice, bob)
    big = sync.Hello({ALICE: [(i * 2 + 1, i * 2 + 1) for i in range(1000)]}, {})
    assert len(sync.encode(big)) > sync.PRE_PROOF_FRAME
    assert bob.receive(alice.send(big)) == big  # after the proof, large frames are fine


def test_the_limiter_allows_a_burst_then_its_rate() -> None:
    lim = SessionLimiter(rate_per_s=1.0, burst=4, max_peers=8)
    assert [lim.allow(ALICE, 0.0) for _ in range(6)] == [True] * 4 + [False] * 2
    assert lim.allow(BOB, 0.0)  # per peer
    assert not lim.allow(ALICE, 0.5) and lim.allow(ALICE, 1.6)
    assert lim.allow(ALICE, 100.0) and lim.allow(ALICE, 100.0)


def test_a_refused_session_costs_more_than_an_honest_one() -> None:
    lim = SessionLimiter(rate_per_s=1.0, burst=32, max_peers=8)
    refused = 0
    while lim.allow(MALLORY, 0.0):
        lim.penalise(MALLORY, 0.0, 8.0)
        refused += 1
    assert refused == 4  # 32 tokens, 1 + 8 each
    for _ in range(100):
        lim.penalise(MALLORY, 0.0, 8.0)
    # At most a burst in debt: after 32 s back at zero, after 33 s heard again.
    assert not lim.allow(MALLORY, 32.0) and lim.allow(MALLORY, 33.5)
    assert [lim.allow(ALICE, 0.0) for _ in range(32)] == [True] * 32  # members pay 1


def test_the_limiter_table_is_bounded_and_newcomers_share_an_overflow_bucket() -> None:
    lim = SessionLimiter(rate_per_s=0.1, burst=2, max_peers=4)
    busy = [f"peer{i}" for i in range(4)]
    for p in busy:
        assert lim.allow(p, 0.0)
    # Full, nobody idle: fresh ids share one bucket of `burst` sessions.
    fresh = [lim.allow(f"sybil{i}", 1.0) for i in range(10)]
    assert fresh.count(True) == 2 and len(lim) <= 4 + 1 and lim.overflowed == 10
    # Later every bucket has refilled: idle ones are forgotten, a newcomer gets its own.
    assert lim.allow("late", 1000.0) and len(lim) <= 4 + 1
