"""A room's roster: admins manage members with signed events, forgeries are refused or
reported for penalty, and every replica holding the same events shows the same members
and roles, whatever order they arrived in."""

from __future__ import annotations

import base64
import random

import nacl.signing
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pm.common import identity
from p2pm.services.gossip import roster as rs
from p2pm.services.gossip.roster import ADMIN, MEMBER, Roster, RosterError

ROOM = "r" + "0" * 32
T0 = 1_700_000_000.0


class Peer:
    def __init__(self) -> None:
        self.key = nacl.signing.SigningKey.generate()
        self.id = identity.peer_id_from_public_key(bytes(self.key.verify_key))

    def sign(self, payload: bytes) -> bytes:
        return identity.sign(self.key, rs.ROSTER_DOMAIN, payload)


def act(roster: Roster, peer: Peer, kind: str, target: Peer | None = None,
        now: float = T0) -> rs.Applied:
    """`peer` does `kind` on its own replica, as the node would: propose, sign, add."""
    payload = roster.propose(kind, peer.id, target.id if target else None, now)
    return roster.add_signed(payload, peer.sign(payload))


def forge(peer: Peer, kind: str, target: str | None, prev: list[str], *,
          room: str = ROOM, ts: float = T0, signer: Peer | None = None) -> bytes:
    """An event built by hand, past `propose`'s refusals, signed by `signer` (the
    author unless told)."""
    payload = orjson.dumps({"v": 2, "room": room, "kind": kind, "author": peer.id,
                            "target": target, "ts": ts, "prev": sorted(prev)},
                           option=orjson.OPT_SORT_KEYS)
    return wire(payload, (signer or peer).sign(payload))


def wire(payload: bytes, signature: bytes) -> bytes:
    return orjson.dumps({"p": base64.b64encode(payload).decode(),
                         "s": base64.b64encode(signature).decode()})


def replica(raws: list[bytes]) -> Roster:
    roster = Roster.new(ROOM)
    for raw in raws:
        roster.apply(raw)
    return roster


def sync(a: Roster, b: Roster) -> None:
    """Each gives the other what it lacks."""
    for raw in a.since(b.heads()):
        b.apply(raw)
    for raw in b.since(a.heads()):
        a.apply(raw)


@pytest.fixture
def alice() -> Peer:
    return Peer()


@pytest.fixture
def room(alice: Peer) -> Roster:
    roster = Roster.new(ROOM)
    act(roster, alice, rs.CREATE)
    return roster


def test_the_creator_is_the_only_member_and_an_admin(room: Roster, alice: Peer) -> None:
    assert room.members() == {alice.id: ADMIN}
    assert room.is_admin(alice.id) and room.is_member(alice.id)
    assert len(room.events()) == 1 and len(room.heads()) == 1
    with pytest.raises(RosterError, match="created already"):
        room.propose(rs.CREATE, Peer().id, None, T0)


def test_an_admin_adds_promotes_and_removes_and_each_change_is_reported(
        room: Roster, alice: Peer) -> None:
    bob, carol = Peer(), Peer()
    added = act(room, alice, rs.ADD, bob)
    assert added.effective and added.changes.added == {bob.id}
    assert room.members() == {alice.id: ADMIN, bob.id: MEMBER}
    promoted = act(room, alice, rs.PROMOTE, bob)
    assert promoted.changes.role_changed == {bob.id} and room.is_admin(bob.id)
    act(room, bob, rs.ADD, carol)  # a promoted member manages members too
    removed = act(room, bob, rs.REMOVE, alice)  # an admin may remove another admin
    assert removed.changes.removed == {alice.id} and not removed.unauthorised
    assert room.members() == {bob.id: ADMIN, carol.id: MEMBER}
    assert room.removed() == {alice.id}
    left = act(room, carol, rs.LEAVE)
    assert left.changes.removed == {carol.id}
    assert room.removed() == {alice.id, carol.id}


def test_propose_refuses_what_the_roster_does_not_allow(room: Roster, alice: Peer) -> None:
    bob, carol = Peer(), Peer()
    act(room, alice, rs.ADD, bob)
    cases = [((rs.ADD, bob.id, carol.id), "only an admin"),
             ((rs.REMOVE, bob.id, alice.id), "only an admin"),
             ((rs.REMOVE, alice.id, carol.id), "not a member"),
             ((rs.ADD, alice.id, bob.id), "member already"),
             ((rs.PROMOTE, alice.id, carol.id), "not a member"),
             ((rs.LEAVE, carol.id, None), "not a member"),
             ((rs.LEAVE, alice.id, None), "last admin"),
             ((rs.REMOVE, alice.id, alice.id), "leave"),
             (("ban", alice.id, bob.id), "kind")]
    for (kind, author, target), message in cases:
        with pytest.raises(RosterError, match=message):
            room.propose(kind, author, target, T0)
    act(room, alice, rs.PROMOTE, bob)
    with pytest.raises(RosterError, match="admin already"):
        room.propose(rs.PROMOTE, alice.id, bob.id, T0)
    act(room, alice, rs.LEAVE)  # another admin remains, so now she may go
    assert room.members() == {bob.id: ADMIN}


def test_a_full_room_refuses_another_member(monkeypatch: pytest.MonkeyPatch,
                                             room: Roster, alice: Peer) -> None:
    monkeypatch.setattr(rs, "MAX_MEMBERS", 2)
    bob, carol = Peer(), Peer()
    act(room, alice, rs.ADD, bob)
    with pytest.raises(RosterError, match="full"):
        room.propose(rs.ADD, alice.id, carol.id, T0)
    forced = room.apply(forge(alice, rs.ADD, carol.id, room.heads()))
    assert not forced.effective and not room.is_member(carol.id)


def test_a_non_admin_removing_someone_is_kept_without_effect_and_flagged_for_penalty(
        room: Roster, alice: Peer) -> None:
    bob, carol = Peer(), Peer()
    act(room, alice, rs.ADD, bob)
    act(room, alice, rs.ADD, carol)
    before = room.members()
    raw = forge(bob, rs.REMOVE, carol.id, room.heads())
    result = room.apply(raw)
    assert result.new and not result.effective
    assert result.unauthorised and result.penalise == {bob.id}
    assert not result.changes and room.members() == before
    # Kept, so every replica agrees on it and on the heads that name it.
    other = replica(room.events())
    assert other.members() == before and other.heads() == room.heads()
    again = other.apply(raw)
    assert not again.new and again.unauthorised


def test_an_event_signed_by_another_key_than_its_author_is_refused(
        room: Roster, alice: Peer) -> None:
    mallory = Peer()
    heads = room.heads()
    with pytest.raises(RosterError, match="signature"):
        room.apply(forge(alice, rs.ADD, mallory.id, heads, signer=mallory))
    assert room.heads() == heads and not room.is_member(mallory.id)


def test_a_tampered_payload_is_refused(room: Roster, alice: Peer) -> None:
    bob, mallory = Peer(), Peer()
    payload = room.propose(rs.ADD, alice.id, bob.id, T0)
    signature = alice.sign(payload)
    tampered = payload.replace(bob.id.encode(), mallory.id.encode())
    with pytest.raises(RosterError, match="signature"):
        room.apply(wire(tampered, signature))
    with pytest.raises(RosterError, match="signature"):
        room.add_signed(tampered, signature)
    spaced = payload.replace(b",", b", ", 1)  # same content, other bytes
    with pytest.raises(RosterError, match="canonical"):
        room.apply(wire(spaced, alice.sign(spaced)))
    assert room.members() == {alice.id: ADMIN}
    assert room.apply(wire(payload, signature)).effective


def test_an_event_of_another_room_is_refused(room: Roster, alice: Peer) -> None:
    other = Roster.new("r" + "1" * 32)
    act(other, alice, rs.CREATE)
    with pytest.raises(RosterError, match="another room"):
        room.apply(other.events()[0])
    with pytest.raises(RosterError, match="created already"):
        room.apply(forge(Peer(), rs.CREATE, None, []))


def _bad_events(alice: Peer, heads: list[str]) -> list[bytes]:
    good = orjson.loads(forge(alice, rs.ADD, Peer().id, heads))
    bob = Peer().id
    cyrillic = bob[:-1] + "\u0430"  # a lookalike letter: not base58
    return [
        b"", b"\x00\xff" * 10, b"not json", b"[]", b'{"p": 1, "s": 2}',
        orjson.dumps({"p": "!!", "s": good["s"]}),
        orjson.dumps({**good, "x": 1}),
        b"{" + b" " * (rs.MAX_EVENT_BYTES + 1) + b"}",
        wire(b"x" * (rs.MAX_PAYLOAD_BYTES + 1), b"s" * 64),
        wire(base64.b64decode(good["p"]), b"short"),
        forge(alice, rs.ADD, bob, heads, ts=-1.0),
        forge(alice, rs.ADD, bob, heads, ts=float("nan")),
        forge(alice, rs.ADD, cyrillic, heads),
        forge(alice, rs.ADD, "12D3KooW" + "x" * 44, heads),
        forge(alice, rs.ADD, None, heads),
        forge(alice, rs.LEAVE, bob, heads),
        forge(alice, rs.ADD, bob, []),
        forge(alice, rs.ADD, bob, ["ab" * 32] * 2),
        forge(alice, rs.ADD, bob, [f"{i:064x}" for i in range(rs.MAX_PREV + 1)]),
        forge(alice, rs.ADD, bob, ["NOTHEX" * 10 + "abcd"]),
        forge(alice, "ban", bob, heads),
        forge(alice, rs.CREATE, None, heads),
    ]


def test_garbage_oversize_and_malformed_events_are_refused_with_a_reason(
        room: Roster, alice: Peer) -> None:
    heads = room.heads()
    for raw in _bad_events(alice, heads):
        with pytest.raises(RosterError) as refused:
            room.apply(raw)
        assert str(refused.value)
    for bad in (b"\xff" * 40, b"{}", "not bytes"):
        with pytest.raises(RosterError):
            room.apply(bad)  # type: ignore[arg-type]
    assert room.heads() == heads and room.members() == {alice.id: ADMIN}
    assert room.pending() == 0


def test_peer_ids_are_ascii_base58_only(room: Roster, alice: Peer) -> None:
    bob = Peer().id
    for odd in (bob[:-1] + "\u0430", bob[:-1] + "\uff11", "\u200b" + bob[1:]):
        with pytest.raises(RosterError, match="peer ID"):
            room.propose(rs.ADD, alice.id, odd, T0)
        with pytest.raises(RosterError, match="peer ID"):
            room.apply(forge(alice, rs.ADD, odd, room.heads()))


def test_replicas_agree_whatever_order_concurrent_events_arrive_in(alice: Peer) -> None:
    bob, carol, dave, erin = Peer(), Peer(), Peer(), Peer()
    a = Roster.new(ROOM)
    act(a, alice, rs.CREATE)
    for peer in (bob, carol):
        act(a, alice, rs.ADD, peer)
        act(a, alice, rs.PROMOTE, peer)
    act(a, alice, rs.ADD, dave)
    b, c = replica(a.events()), replica(a.events())
    # Out of touch: bob and carol remove each other; alice removes bob while he adds erin.
    concurrent = [act(b, bob, rs.REMOVE, carol).event.encode(),
                  act(c, carol, rs.REMOVE, bob).event.encode(),
                  act(a, alice, rs.REMOVE, dave).event.encode()]
    fresh = replica(a.events()[:-1])
    concurrent.append(act(fresh, bob, rs.ADD, erin).event.encode())
    concurrent.append(act(a, alice, rs.REMOVE, bob).event.encode())
    history = a.events()[:-2]
    replicas = [replica(history + concurrent),
                replica(history + concurrent[::-1]),
                replica(history + concurrent[2:] + concurrent[:2])]
    for r in replicas:
        assert r.pending() == 0 and len(r.events()) == len(history) + len(concurrent)
    states = [r.members() for r in replicas]
    assert states[0] == states[1] == states[2]
    assert [r.heads() for r in replicas[1:]] == [replicas[0].heads()] * 2
    # Exactly one of the two who removed each other is still an admin, alice removed
    # bob and dave, and bob's add made while alice removed him had no effect.
    members = states[0]
    assert members.get(carol.id) == ADMIN and members[alice.id] == ADMIN
    assert set(members) == {alice.id, carol.id}
    assert replicas[0].removed() == {bob.id, dave.id}


def test_of_two_admins_removing_each_other_the_one_ordered_first_wins(alice: Peer) -> None:
    bob = Peer()
    a = Roster.new(ROOM)
    act(a, alice, rs.CREATE)
    act(a, alice, rs.ADD, bob)
    act(a, alice, rs.PROMOTE, bob)
    b = replica(a.events())
    one, two = act(a, alice, rs.REMOVE, bob), act(b, bob, rs.REMOVE, alice)
    sync(a, b)
    first, second = sorted([one.event, two.event], key=lambda e: e.id)
    assert a.members() == b.members() == {first.author: ADMIN}
    assert a.removed() == b.removed() == {second.author}
    assert not two.unauthorised and not one.unauthorised  # a lost race is nobody's fault


def test_an_add_concurrent_with_removing_the_adder_has_no_effect_in_either_order(
        alice: Peer) -> None:
    for _ in range(6):  # ids are random, so both orders come up
        bob, erin = Peer(), Peer()
        a = Roster.new(ROOM)
        act(a, alice, rs.CREATE)
        act(a, alice, rs.ADD, bob)
        act(a, alice, rs.PROMOTE, bob)
        b = replica(a.events())
        adds = act(b, bob, rs.ADD, erin)
        assert adds.changes.added == {erin.id}
        act(a, alice, rs.REMOVE, bob)
        result = a.apply(adds.event.encode())
        assert not result.effective and not result.unauthorised
        removals = [b.apply(raw).changes.removed for raw in a.since(b.heads())]
        # Bob's replica had let erin in: it is told she is out again (rotate keys).
        assert set().union(*removals) == {bob.id, erin.id}
        assert b.members() == a.members() == {alice.id: ADMIN}
        assert a.since(b.heads()) == b.since(a.heads()) == []


def test_a_removed_members_later_and_backdated_events_have_no_effect(
        room: Roster, alice: Peer) -> None:
    bob, carol, dave = Peer(), Peer(), Peer()
    act(room, alice, rs.ADD, bob)
    act(room, alice, rs.PROMOTE, bob)
    act(room, alice, rs.ADD, carol)
    before_removal = room.heads()
    act(room, alice, rs.REMOVE, bob)
    later = room.apply(forge(bob, rs.REMOVE, carol.id, room.heads()))
    assert not later.effective and later.unauthorised and later.penalise == {bob.id}
    # Signed as if before the removal: he had the right then, so it is no forgery,
    # but it is concurrent with his removal, which cancels it.
    for ts in range(20):
        backdated = room.apply(forge(bob, rs.ADD, dave.id, before_removal, ts=T0 + ts))
        assert not backdated.effective and not backdated.unauthorised
    assert room.members() == {alice.id: ADMIN, carol.id: MEMBER}
    assert replica(room.events()).members() == room.members()


def test_an_event_whose_prev_is_unknown_waits_and_applies_when_it_arrives(
        room: Roster, alice: Peer) -> None:
    bob, carol = Peer(), Peer()
    late = replica(room.events())
    first = act(room, alice, rs.ADD, bob).event
    second = act(room, alice, rs.ADD, carol).event
    held = late.apply(second.encode())
    assert held.pending and not held.effective and late.missing() == [first.id]
    assert not late.is_member(carol.id) and late.pending() == 1
    assert not late.apply(second.encode()).new
    result = late.apply(first.encode())
    assert result.released == (second.id,) and result.changes.added == {bob.id, carol.id}
    assert late.members() == room.members() and late.missing() == [] and late.pending() == 0


def test_the_number_of_waiting_events_is_bounded(monkeypatch: pytest.MonkeyPatch,
                                                 room: Roster, alice: Peer) -> None:
    monkeypatch.setattr(rs, "MAX_PENDING", 2)
    for i in range(2):
        assert room.apply(forge(alice, rs.ADD, Peer().id, [f"{i:064x}"])).pending
    with pytest.raises(RosterError, match="wait"):
        room.apply(forge(alice, rs.ADD, Peer().id, ["f" * 64]))
    assert room.pending() == 2 and len(room.missing()) == 2


def test_the_number_of_events_is_bounded(monkeypatch: pytest.MonkeyPatch,
                                         room: Roster, alice: Peer) -> None:
    monkeypatch.setattr(rs, "MAX_EVENTS", 2)
    act(room, alice, rs.ADD, Peer())
    with pytest.raises(RosterError, match="full"):
        room.propose(rs.ADD, alice.id, Peer().id, T0)
    with pytest.raises(RosterError, match="full"):
        room.apply(forge(alice, rs.ADD, Peer().id, room.heads()))
    assert len(room.events()) == 2


def test_since_gives_exactly_what_a_peer_lacks(room: Roster, alice: Peer) -> None:
    behind = replica(room.events())
    ids_before = set(room.heads())
    news = [act(room, alice, rs.ADD, Peer()).event.encode() for _ in range(3)]
    assert room.since(behind.heads()) == news
    assert room.since(ids_before) == news
    assert room.since(room.heads()) == []
    assert room.since([]) == room.events()
    assert room.since(["0" * 64]) == room.events()  # ids we do not hold are passed over
    for raw in room.since(behind.heads()):
        assert behind.apply(raw).effective
    assert behind.members() == room.members() and behind.heads() == room.heads()


# -- any delivery order gives the same state -----------------------------------------

PEERS = [Peer() for _ in range(5)]


@st.composite
def histories(draw: st.DrawFn) -> list[bytes]:
    """Events of a room whose members act on replicas that sync now and then, so many
    events are concurrent; some are forgeries by members without the right."""
    first = Roster.new(ROOM)
    act(first, PEERS[0], rs.CREATE)
    for peer in PEERS[1:]:  # a room of admins and members that every replica holds
        role = draw(st.sampled_from([None, MEMBER, ADMIN]))
        if role:
            act(first, PEERS[0], rs.ADD, peer)
        if role == ADMIN:
            act(first, PEERS[0], rs.PROMOTE, peer)
    produced = first.events()
    replicas = [replica(produced) for _ in PEERS]
    for step in range(draw(st.integers(10, 40))):
        who = draw(st.integers(0, len(PEERS) - 1))
        mine = replicas[who]
        choice = draw(st.integers(0, 9))
        if choice < 3:
            other = replicas[draw(st.integers(0, len(PEERS) - 1))]
            sync(mine, other)
            continue
        kind = draw(st.sampled_from([rs.ADD, rs.REMOVE, rs.REMOVE, rs.PROMOTE, rs.LEAVE]))
        target = None if kind == rs.LEAVE else PEERS[draw(st.integers(0, len(PEERS) - 1))]
        if target is PEERS[who]:
            continue
        if choice == 9:  # a forgery: past propose's checks
            raw = forge(PEERS[who], kind, target.id if target else None, mine.heads(),
                        ts=T0 + step)
            mine.apply(raw)
            produced.append(raw)
            continue
        try:
            produced.append(act(mine, PEERS[who], kind, target, T0 + step).event.encode())
        except RosterError:
            continue
    return produced


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(), seed=st.randoms(use_true_random=False))
def test_any_delivery_order_of_a_history_gives_the_same_members_and_roles(
        history: list[bytes], seed: random.Random) -> None:
    reference = replica(history)
    assert reference.pending() == 0
    shuffled = list(history)
    seed.shuffle(shuffled)
    other = replica(shuffled)
    assert other.pending() == 0 and other.missing() == []
    assert other.members() == reference.members()
    assert other.removed() == reference.removed()
    assert other.heads() == reference.heads()
    assert other.events() == reference.events()
    assert replica(reference.events()).members() == reference.members()
