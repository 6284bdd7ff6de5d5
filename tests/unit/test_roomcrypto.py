"""A room's content under keys v2, three members and their own roster replicas: what a
member reads, what it holds until a key comes, what a removed member can no longer
read, and what is refused (and whose fault it is)."""

from __future__ import annotations

import nacl.signing
import pytest

from p2pm.common import identity
from p2pm.services.gossip import conversations as cv
from p2pm.services.gossip import roomcrypto as rc
from p2pm.services.gossip import roster as rs
from p2pm.services.gossip import sessions as ss

ROOM = "garden"


class Member:
    def __init__(self) -> None:
        self.key = nacl.signing.SigningKey.generate()
        self.peer = identity.peer_id_from_public_key(bytes(self.key.verify_key))
        self.roster = rs.Roster.new(ROOM)
        self.crypto = rc.RoomCrypto(ROOM, self.peer, self.roster)

    def sign(self, payload: bytes) -> bytes:
        return identity.sign(self.key, rs.ROSTER_DOMAIN, payload)

    def inner(self, text: str, seq: int) -> bytes:
        plaintext = cv.message_plaintext(ROOM, self.peer, seq, 1000.0 + seq, text)
        return identity.sign(self.key, cv.MESSAGE_DOMAIN, plaintext) + plaintext


def change(by: Member, everyone: list[Member], kind: str, target: Member | None) -> None:
    """`by` makes a roster change; every replica applies it and follows it."""
    applied = by.roster.add_signed(*_signed(by, kind, target))
    raw = applied.event.encode()
    by.crypto.apply(applied.changes)
    for m in everyone:
        if m is not by:
            m.crypto.apply(m.roster.apply(raw).changes)


def _signed(by: Member, kind: str, target: Member | None) -> tuple[bytes, bytes]:
    payload = by.roster.propose(kind, by.peer, target.peer if target else None, 0.0)
    return payload, by.sign(payload)


@pytest.fixture
def room() -> tuple[Member, Member, Member]:
    alice, bob, carol = Member(), Member(), Member()
    everyone = [alice, bob, carol]
    change(alice, everyone, rs.CREATE, None)
    change(alice, everyone, rs.ADD, bob)
    change(alice, everyone, rs.ADD, carol)
    return alice, bob, carol


def send(author: Member, readers: list[Member], text: str, seq: int) -> bytes:
    """`author` seals; a new key goes to the members `seal` names, if among `readers`."""
    sealed = author.crypto.seal(author.inner(text, seq), 0.0)
    if sealed.share:
        for r in readers:
            if r.peer in sealed.to:
                r.crypto.take_key(author.peer, sealed.share, sealed.to)
    return sealed.envelope


def test_members_read_each_message_once_its_key_came(room):
    alice, bob, carol = room
    first = alice.crypto.seal(alice.inner("hello, ünïcode 🌱 مرحبا", 1), 0.0)
    assert set(first.to) == {bob.peer, carol.peer} and first.share
    assert bob.crypto.open(first.envelope) is None  # the key has not come: held
    released = bob.crypto.take_key(alice.peer, first.share, first.to)
    assert released == [first.envelope]
    opened = bob.crypto.open(first.envelope)
    assert opened.author == alice.peer
    assert cv.MESSAGE_DOMAIN and "🌱".encode() in opened.inner
    carol.crypto.take_key(alice.peer, first.share, first.to)
    assert carol.crypto.open(first.envelope).inner == opened.inner
    second = alice.crypto.seal(alice.inner("again", 2), 0.0)
    assert second.share is None  # the same session goes on
    assert bob.crypto.open(second.envelope).index == 1
    with pytest.raises(rc.EnvelopeRefused) as info:  # a redelivery is not a fault
        bob.crypto.open(second.envelope)
    assert not info.value.penalise


def test_a_removed_member_cannot_read_what_is_posted_afterwards(room):
    alice, bob, carol = room
    everyone = [alice, bob, carol]
    before = send(alice, [bob, carol], "before", 1)
    assert carol.crypto.open(before).author == alice.peer
    late_old_session = alice.crypto.seal(alice.inner("in flight", 2), 0.0).envelope
    change(alice, everyone, rs.REMOVE, carol)
    after = alice.crypto.seal(alice.inner("after carol left", 3), 0.0)
    assert after.share and after.to == (bob.peer,)  # a new key, for bob alone
    bob.crypto.take_key(alice.peer, after.share, after.to)
    assert b"after carol left" in bob.crypto.open(after.envelope).inner
    # carol kept everything she had (her replica does not even apply her removal)
    header = rc.decode(after.envelope)
    with pytest.raises(ss.UnknownSessionError):
        carol.crypto.keys.decrypt(alice.peer, header.session_id, header.ciphertext)
    # a message on the old session, which carol holds, is refused by bob
    with pytest.raises(rc.EnvelopeRefused, match="closed when a member left") as info:
        bob.crypto.open(late_old_session)
    assert not info.value.penalise  # alice sent it in good faith
    # and bob's own next message starts a session carol is not given
    mine = bob.crypto.seal(bob.inner("bob after", 1), 0.0)
    assert mine.to == (alice.peer,)


def test_a_key_shared_with_a_removed_member_is_refused(room):
    alice, bob, carol = room
    everyone = [alice, bob, carol]
    change(alice, everyone, rs.REMOVE, carol)
    rogue = ss.SenderKey.new(0.0)
    with pytest.raises(rc.EnvelopeRefused, match="removed"):
        bob.crypto.take_key(alice.peer, rogue.share(), [bob.peer, carol.peer])
    with pytest.raises(rc.EnvelopeRefused) as info:  # carol is no sender any more
        bob.crypto.take_key(carol.peer, rogue.share(), [bob.peer])
    assert info.value.penalise


def test_what_a_stranger_or_a_forger_sends_is_refused_and_blamed(room):
    alice, bob, _carol = room
    stranger = Member()
    stranger.roster = alice.roster  # it even knows the roster
    envelope = rc.encode(stranger.peer, "x" * 43, b"\x03" * 80)
    with pytest.raises(rc.EnvelopeRefused) as info:
        bob.crypto.open(envelope)
    assert info.value.penalise and "not a member" in str(info.value)
    good = send(alice, [bob], "fine", 1)
    tampered = good[:-5] + bytes(b ^ 0x55 for b in good[-5:])
    second = send(alice, [bob], "fine too", 2)
    bob_state = bob.crypto
    with pytest.raises(rc.EnvelopeRefused) as info:
        bob_state.open(tampered)
    assert info.value.penalise
    assert bob_state.open(second).author == alice.peer  # still reads what is real
    for junk in (b"p2pm\x02", b"p2pm\x02\xff", b"p2pm\x02\x02ab\x01x", b"p2pm\x02" + b"\x00" * 9):
        with pytest.raises(rc.EnvelopeRefused) as info:
            bob.crypto.open(junk)
        assert info.value.penalise


def test_a_version_1_envelope_is_refused_as_from_an_older_p2pm(room):
    _alice, bob, _carol = room
    old = cv.seal(b"k" * 32, b"s" * 64, b"{}")
    with pytest.raises(rc.EnvelopeRefused, match="older p2pm") as info:
        bob.crypto.open(old)
    assert not info.value.penalise


def test_a_new_member_reads_from_its_join_not_before(room):
    alice, bob, carol = room
    everyone = [alice, bob, carol]
    old = send(alice, [bob, carol], "before dave", 1)
    dave = Member()
    for raw in alice.roster.events():
        dave.roster.apply(raw)
    everyone.append(dave)
    change(alice, everyone, rs.ADD, dave)
    key = alice.crypto.share_for(dave.peer)
    dave.crypto.take_key(alice.peer, key, [bob.peer, carol.peer, dave.peer])
    with pytest.raises(rc.EnvelopeRefused):
        dave.crypto.open(old)  # sent before its key's first index
    new = alice.crypto.seal(alice.inner("welcome dave", 2), 0.0)
    assert new.share is None and b"welcome dave" in dave.crypto.open(new.envelope).inner


def test_the_sender_key_turns_over_after_a_hundred_messages_and_an_hour(room):
    alice, bob, carol = room
    shares = 0
    for i in range(ss.ROTATE_AFTER_MESSAGES + 1):
        sealed = alice.crypto.seal(alice.inner(f"m{i}", i + 1), 0.0)
        shares += sealed.share is not None
    assert shares == 2
    assert alice.crypto.seal(alice.inner("later", 500), ss.ROTATE_AFTER_S).share


def test_envelopes_held_for_a_key_are_bounded_per_sender(room):
    alice, bob, _carol = room
    envelopes = [alice.crypto.seal(alice.inner(f"m{i}", i + 1), 0.0).envelope
                 for i in range(rc.MAX_HELD_PER_SENDER + 3)]
    for e in envelopes:
        assert bob.crypto.open(e) is None
    assert bob.crypto.held() == rc.MAX_HELD_PER_SENDER and bob.crypto.dropped_held == 3


def test_a_copy_of_a_members_state_taken_later_reads_nothing_it_had_read(room):
    alice, bob, carol = room
    envelopes = [send(alice, [bob, carol], f"secret {i}", i + 1) for i in range(10)]
    for e in envelopes:
        bob.crypto.open(e)
    stolen = ss.RoomKeys.unpickle(bob.crypto.keys.pickle(b"k" * 32), b"k" * 32)
    for e in envelopes:
        h = rc.decode(e)
        with pytest.raises(ss.SessionError):
            stolen.decrypt(h.author, h.session_id, h.ciphertext)
    later = send(alice, [bob, carol], "after the theft", 11)
    h = rc.decode(later)
    assert b"after the theft" in stolen.decrypt(h.author, h.session_id, h.ciphertext).plaintext
