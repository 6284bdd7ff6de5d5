"""Conversation keys v2: prekey bundles only their peer can have made, room messages
every member reads once, old messages unreadable from a later copy of our keys, and
keys that change when a member leaves."""

from __future__ import annotations

import os

import nacl.signing
import orjson
import pytest
import vodozemac
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pm.common import identity
from p2pm.services.gossip import sessions as ss

NOW = 1_800_000_000.0
HOUR = 3600.0


def _identity() -> tuple[nacl.signing.SigningKey, str]:
    key = nacl.signing.SigningKey.generate()
    return key, identity.peer_id_from_public_key(bytes(key.verify_key))


def _signed(key: nacl.signing.SigningKey, payload: bytes) -> bytes:
    return ss.Bundle.encode(payload, identity.sign(key, ss.PREKEY_DOMAIN, payload))


def _bundle(device: ss.Device, key: nacl.signing.SigningKey, peer: str,
            now: float = NOW, ttl_s: float = 24 * HOUR) -> bytes:
    return _signed(key, device.bundle(peer, now, ttl_s))


def _edited(payload: bytes, **changes: object) -> bytes:
    doc = orjson.loads(payload)
    doc.update(changes)
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


# -- bundles ---------------------------------------------------------------------


def test_a_contact_reaches_us_offline_through_our_bundle() -> None:
    key, peer = _identity()
    device = ss.Device.new()
    bundle = ss.Bundle.decode(_bundle(device, key, peer), peer, NOW + 60)
    assert bundle.peer == peer and len(bundle.one_time_keys) == ss.ONE_TIME_KEYS
    assert bundle.exp == NOW + 24 * HOUR
    # A contact builds an Olm session from the bundle alone; we open its first message.
    contact = vodozemac.Account()
    outbound = contact.create_outbound_session(
        vodozemac.Curve25519PublicKey.from_base64(bundle.curve25519),
        vodozemac.Curve25519PublicKey.from_base64(bundle.one_time_keys[0][1]))
    first = outbound.encrypt(b"hello while you were away").to_pre_key()
    _, plaintext = device.account.create_inbound_session(contact.curve25519_key, first)
    assert plaintext == b"hello while you were away"


def test_a_bundle_signed_by_one_peer_and_claimed_for_another_is_refused() -> None:
    mallory_key, mallory = _identity()
    _, alice = _identity()
    device = ss.Device.new()
    # Mallory's own bundle passed off as Alice's.
    with pytest.raises(ss.BundleError, match=f"not signed by {alice}"):
        ss.Bundle.decode(_bundle(device, mallory_key, mallory), alice, NOW)
    # A bundle naming Alice inside, but signed by Mallory.
    with pytest.raises(ss.BundleError, match=f"not signed by {alice}"):
        ss.Bundle.decode(_bundle(device, mallory_key, alice), alice, NOW)


def test_a_bundle_for_the_peer_it_names_only() -> None:
    key, peer = _identity()
    _, other = _identity()
    payload = _edited(ss.Device.new().bundle(peer, NOW, HOUR), peer=other)
    with pytest.raises(ss.BundleError, match=f"{other}'s, not {peer}'s"):
        ss.Bundle.decode(_signed(key, payload), peer, NOW)


def test_another_nodes_olm_keys_cannot_be_republished_under_our_peer_id() -> None:
    alice_key, alice = _identity()
    mallory_key, mallory = _identity()
    alices = orjson.loads(ss.Device.new().bundle(alice, NOW, HOUR))
    ours = ss.Device.new().bundle(mallory, NOW, HOUR)
    stolen = _edited(ours, curve25519=alices["curve25519"], ed25519=alices["ed25519"],
                     olm_sig=alices["olm_sig"])
    with pytest.raises(ss.BundleError, match="do not confirm they belong"):
        ss.Bundle.decode(_signed(mallory_key, stolen), mallory, NOW)


def test_an_expired_or_future_bundle_is_refused_with_when() -> None:
    key, peer = _identity()
    raw = _bundle(ss.Device.new(), key, peer, now=NOW, ttl_s=HOUR)
    assert ss.Bundle.decode(raw, peer, NOW + HOUR - 1).peer == peer
    with pytest.raises(ss.BundleError, match="key bundle expired on"):
        ss.Bundle.decode(raw, peer, NOW + HOUR)
    with pytest.raises(ss.BundleError, match="issued in the future"):
        ss.Bundle.decode(raw, peer, NOW - HOUR)


def test_a_tampered_bundle_is_refused() -> None:
    key, peer = _identity()
    device, other = ss.Device.new(), ss.Device.new()
    payload = device.bundle(peer, NOW, HOUR)
    signature = identity.sign(key, ss.PREKEY_DOMAIN, payload)
    swapped = _edited(payload, curve25519=other.account.curve25519_key.to_base64())
    for raw in (ss.Bundle.encode(swapped, signature),
                ss.Bundle.encode(payload[:-1], signature),
                ss.Bundle.encode(payload, bytes(64))):
        with pytest.raises(ss.BundleError, match="not signed by"):
            ss.Bundle.decode(raw, peer, NOW)


@pytest.mark.parametrize("changes, message", [
    ({"v": 1}, "unsupported key bundle version 1"),
    ({"extra": 1}, "unknown fields: extra"),
    ({"one_time_keys": [["AAAA", "not a key"]]}, "one-time key is not a Curve25519 key"),
    ({"fallback_key": "AAAA"}, "fallback key is not a"),
    ({"exp": NOW - 1}, "time or expiry is not valid"),
    ({"exp": NOW + 400 * 24 * HOUR}, "within 365d"),
])
def test_a_malformed_bundle_says_what_is_wrong(changes: dict, message: str) -> None:
    key, peer = _identity()
    payload = _edited(ss.Device.new().bundle(peer, NOW, HOUR), **changes)
    with pytest.raises(ss.BundleError, match=message):
        ss.Bundle.decode(_signed(key, payload), peer, NOW)


def test_an_oversize_bundle_is_refused() -> None:
    key, peer = _identity()
    payload = ss.Device.new().bundle(peer, NOW, HOUR)
    many = [[f"k{i}", vodozemac.Curve25519SecretKey().public_key().to_base64()]
            for i in range(ss.MAX_BUNDLE_ONE_TIME_KEYS + 1)]
    with pytest.raises(ss.BundleError, match="at most"):
        ss.Bundle.decode(_signed(key, _edited(payload, one_time_keys=many)), peer, NOW)
    with pytest.raises(ss.BundleError, match=f"at most {ss.MAX_BUNDLE_BYTES} bytes"):
        ss.Bundle.decode(_signed(key, payload + b" " * ss.MAX_BUNDLE_BYTES), peer, NOW)


def test_used_one_time_keys_are_replenished_and_leave_the_bundle() -> None:
    key, peer = _identity()
    device = ss.Device.new()
    bundle = ss.Bundle.decode(_bundle(device, key, peer), peer, NOW)
    used = bundle.one_time_keys[:ss.ONE_TIME_KEYS // 2 + 1]
    for _, one_time_key in used:
        contact = vodozemac.Account()
        outbound = contact.create_outbound_session(
            vodozemac.Curve25519PublicKey.from_base64(bundle.curve25519),
            vodozemac.Curve25519PublicKey.from_base64(one_time_key))
        device.account.create_inbound_session(contact.curve25519_key,
                                              outbound.encrypt(b"hi").to_pre_key())
    assert device.replenish() is True and device.one_time_key_count == ss.ONE_TIME_KEYS
    assert device.replenish() is False
    fresh = ss.Bundle.decode(_bundle(device, key, peer), peer, NOW)
    assert not set(fresh.one_time_keys) & set(used)
    assert fresh.fallback_key != bundle.fallback_key


# -- room messages -----------------------------------------------------------------


def _room(members: int = 2) -> tuple[str, ss.SenderKey, list[ss.RoomKeys]]:
    _, alice = _identity()
    sender = ss.SenderKey.new(NOW)
    rooms = [ss.RoomKeys() for _ in range(members)]
    for room in rooms:
        assert room.add(alice, sender.share()) == sender.session_id
    return alice, sender, rooms


def _send(sender: ss.SenderKey, count: int) -> list[bytes]:
    return [sender.encrypt(f"message {i}".encode()).ciphertext
            for i in range(sender.message_index, sender.message_index + count)]


def _read(room: ss.RoomKeys, alice: str, sender: ss.SenderKey, ct: bytes) -> bytes:
    return room.decrypt(alice, sender.session_id, ct).plaintext


def test_two_members_read_in_order_out_of_order_and_past_a_lost_message() -> None:
    alice, sender, (bob, carol) = _room()
    sent = _send(sender, 8)
    for i in (0, 1, 2):
        assert bob.decrypt(alice, sender.session_id, sent[i]) == (f"message {i}".encode(), i)
    for i in (6, 4, 3, 7):  # 5 is lost
        assert _read(bob, alice, sender, sent[i]) == f"message {i}".encode()
    for i in reversed(range(8)):
        assert _read(carol, alice, sender, sent[i]) == f"message {i}".encode()


def test_unicode_and_emoji_round_trip() -> None:
    alice, sender, (bob,) = _room(1)
    text = "Grüße 👋🏽 — 你好, ✓ \u200d👩‍👩‍👧"
    sealed = sender.encrypt(text.encode())
    assert sealed.session_id == sender.session_id and sealed.index == 0
    assert _read(bob, alice, sender, sealed.ciphertext).decode() == text


def test_a_replayed_message_is_refused() -> None:
    alice, sender, (bob,) = _room(1)
    sent = _send(sender, 4)
    for i in (0, 2):
        _read(bob, alice, sender, sent[i])
    for i in (0, 2):  # one below the session's floor, one above it
        with pytest.raises(ss.ReplayError, match=f"message {i} .* already decrypted"):
            _read(bob, alice, sender, sent[i])
    assert _read(bob, alice, sender, sent[1]) == b"message 1"


def test_a_tampered_or_foreign_message_does_not_decrypt() -> None:
    alice, sender, (bob,) = _room(1)
    ct = bytearray(_send(sender, 1)[0])
    ct[12] ^= 1
    with pytest.raises(ss.DecryptError, match="does not decrypt"):
        _read(bob, alice, sender, bytes(ct))
    stranger = ss.SenderKey.new(NOW).encrypt(b"not for this session").ciphertext
    with pytest.raises(ss.DecryptError):
        _read(bob, alice, sender, stranger)
    with pytest.raises(ss.DecryptError, match="malformed"):
        _read(bob, alice, sender, b"\x03")
    assert _read(bob, alice, sender, _send(sender, 1)[0]) == b"message 1"


def test_a_member_reads_from_when_the_key_was_shared_not_before() -> None:
    _, alice = _identity()
    sender = ss.SenderKey.new(NOW)
    early = _send(sender, 3)
    dave = ss.RoomKeys()
    dave.add(alice, sender.share())
    later = _send(sender, 1)
    with pytest.raises(ss.DecryptError, match="before we were given its key"):
        _read(dave, alice, sender, early[1])
    assert _read(dave, alice, sender, later[0]) == b"message 3"


def _stolen(room: ss.RoomKeys, alice: str, sender: ss.SenderKey) -> ss.RoomKeys:
    """What a thief makes of a copy of `room`'s keys: a fresh RoomKeys that has the
    session material but none of our bookkeeping of what was read."""
    thief = ss.RoomKeys()
    thief.add(alice, room.export(alice, sender.session_id))
    return thief


def test_a_later_copy_of_our_keys_cannot_read_messages_already_read() -> None:
    alice, sender, (bob,) = _room(1)
    sent = _send(sender, 12)
    for ct in sent[:10]:
        _read(bob, alice, sender, ct)
    key = os.urandom(32)
    copy = ss.RoomKeys.unpickle(bob.pickle(key), key)
    thief = _stolen(copy, alice, sender)
    for ct in sent[:10]:
        with pytest.raises(ss.SessionError):
            _read(copy, alice, sender, ct)
        with pytest.raises(ss.DecryptError):  # the key material is gone, not just marked
            _read(thief, alice, sender, ct)
    assert _read(copy, alice, sender, sent[10]) == b"message 10"
    assert _read(thief, alice, sender, sent[11]) == b"message 11"


def test_a_gap_keeps_only_the_missing_message_readable_until_given_up() -> None:
    alice, sender, (bob,) = _room(1)
    sent = _send(sender, 4 + ss.MAX_GAP + 1)
    for i in (0, 1, 2, *range(4, 10)):  # 3 is late
        _read(bob, alice, sender, sent[i])
    thief = _stolen(bob, alice, sender)
    for i in (0, 1, 2):
        with pytest.raises(ss.DecryptError):
            _read(thief, alice, sender, sent[i])
    assert _read(thief, alice, sender, sent[3]) == b"message 3"
    # Up to MAX_GAP later messages, the late one still gets through...
    for i in range(10, 4 + ss.MAX_GAP):
        _read(bob, alice, sender, sent[i])
    key = os.urandom(32)
    copy = ss.RoomKeys.unpickle(bob.pickle(key), key)
    assert _read(copy, alice, sender, sent[3]) == b"message 3"
    # ... one more and it is given up: the session moves past it.
    _read(bob, alice, sender, sent[4 + ss.MAX_GAP])
    with pytest.raises(ss.DecryptError, match="given up"):
        _read(bob, alice, sender, sent[3])
    with pytest.raises(ss.DecryptError):
        _read(_stolen(bob, alice, sender), alice, sender, sent[3])


def test_a_far_jump_gives_up_the_messages_skipped() -> None:
    alice, sender, (bob,) = _room(1)
    sent = _send(sender, 3 * ss.MAX_GAP)
    _read(bob, alice, sender, sent[0])
    _read(bob, alice, sender, sent[-1])
    with pytest.raises(ss.DecryptError, match="given up"):
        _read(bob, alice, sender, sent[ss.MAX_GAP])
    assert _read(bob, alice, sender, sent[-2]) == f"message {3 * ss.MAX_GAP - 2}".encode()


@settings(max_examples=30, deadline=None)
@given(st.permutations(range(12)))
def test_any_delivery_order_within_the_gap_decrypts_each_message_once(
        order: list[int]) -> None:
    alice, sender, (bob,) = _room(1)
    sent = _send(sender, len(order))
    for i in order:
        assert bob.decrypt(alice, sender.session_id, sent[i]) == \
            (f"message {i}".encode(), i)
    for i in order:
        with pytest.raises(ss.ReplayError):
            _read(bob, alice, sender, sent[i])


# -- keys held -------------------------------------------------------------------


def test_a_session_never_moves_backwards() -> None:
    alice, sender, (bob,) = _room(1)
    first_share = sender.share()
    sent = _send(sender, 3)
    for ct in sent:
        _read(bob, alice, sender, ct)
    with pytest.raises(ss.KeyRefused, match="already hold"):
        bob.add(alice, first_share)  # a copy from message 0
    with pytest.raises(ss.KeyRefused, match="already hold"):
        bob.add(alice, sender.share())  # a copy from message 3
    with pytest.raises(ss.ReplayError):
        _read(bob, alice, sender, sent[0])
    with pytest.raises(ss.KeyRefused, match="not a room key"):
        bob.add(alice, b"AAAA")


def test_a_sender_holds_at_most_the_newest_sessions() -> None:
    _, alice = _identity()
    bob = ss.RoomKeys()
    keys = [ss.SenderKey.new(NOW) for _ in range(ss.MAX_SESSIONS_PER_SENDER + 1)]
    for key in keys:
        bob.add(alice, key.share())
    assert not bob.has(alice, keys[0].session_id)
    assert all(bob.has(alice, key.session_id) for key in keys[1:])
    with pytest.raises(ss.UnknownSessionError):
        bob.decrypt(alice, keys[0].session_id, keys[0].encrypt(b"late").ciphertext)


def test_a_removed_members_sessions_are_closed() -> None:
    alice, from_alice, (bob,) = _room(1)
    _, carol = _identity()
    from_carol = ss.SenderKey.new(NOW)
    bob.add(carol, from_carol.share())
    late = from_carol.encrypt(b"sent before she was removed").ciphertext
    assert bob.close_all_except({alice}) == (carol,)
    assert not bob.has(carol, from_carol.session_id)
    with pytest.raises(ss.UnknownSessionError, match="we hold no session"):
        bob.decrypt(carol, from_carol.session_id, late)
    assert _read(bob, alice, from_alice, _send(from_alice, 1)[0]) == b"message 0"
    assert bob.close(alice) == 1 and not bob.has(alice, from_alice.session_id)


# -- rotation ---------------------------------------------------------------------


def test_a_sender_key_rotates_after_100_messages() -> None:
    sender = ss.SenderKey.new(NOW)
    _send(sender, ss.ROTATE_AFTER_MESSAGES - 1)
    assert not sender.needs_rotation(NOW)
    _send(sender, 1)
    assert sender.needs_rotation(NOW)


def test_a_sender_key_rotates_after_an_hour() -> None:
    sender = ss.SenderKey.new(NOW)
    assert not sender.needs_rotation(NOW + ss.ROTATE_AFTER_S - 1)
    assert sender.needs_rotation(NOW + ss.ROTATE_AFTER_S)


def test_after_a_removal_a_stolen_copy_reads_nothing_new() -> None:
    alice, old, (bob, carol) = _room()
    for ct in _send(old, 3):
        _read(bob, alice, old, ct)
    key = os.urandom(32)
    stolen = ss.RoomKeys.unpickle(bob.pickle(key), key)  # Bob's keys, taken now
    old.force_rotation()  # Bob is removed
    assert old.needs_rotation(NOW)
    with pytest.raises(ss.SessionStateError, match="retired"):
        old.encrypt(b"must not reach Bob")
    new = ss.SenderKey.new(NOW)
    carol.add(alice, new.share())  # shared with the others only
    sealed = new.encrypt(b"after Bob left")
    assert _read(carol, alice, new, sealed.ciphertext) == b"after Bob left"
    with pytest.raises(ss.UnknownSessionError):
        _read(stolen, alice, new, sealed.ciphertext)


def test_after_100_messages_a_stolen_copy_reads_nothing_of_the_next_session() -> None:
    alice, old, (bob, carol) = _room()
    key = os.urandom(32)
    stolen = ss.RoomKeys.unpickle(bob.pickle(key), key)
    _send(old, ss.ROTATE_AFTER_MESSAGES)
    assert old.needs_rotation(NOW)
    new = ss.SenderKey.new(NOW)
    carol.add(alice, new.share())
    sealed = new.encrypt(b"next session")
    with pytest.raises(ss.UnknownSessionError):
        _read(stolen, alice, new, sealed.ciphertext)
    assert _read(carol, alice, new, sealed.ciphertext) == b"next session"


# -- saved state ------------------------------------------------------------------


def test_saved_state_comes_back_and_carries_on() -> None:
    alice, sender, (bob,) = _room(1)
    key = os.urandom(32)
    sent = _send(sender, 2)
    _read(bob, alice, sender, sent[0])
    sender = ss.SenderKey.unpickle(sender.pickle(key), key)
    bob = ss.RoomKeys.unpickle(bob.pickle(key), key)
    with pytest.raises(ss.ReplayError):
        _read(bob, alice, sender, sent[0])
    assert _read(bob, alice, sender, sent[1]) == b"message 1"
    assert _read(bob, alice, sender, _send(sender, 1)[0]) == b"message 2"
    device = ss.Device.new()
    again = ss.Device.unpickle(device.pickle(key), key)
    assert again.account.curve25519_key == device.account.curve25519_key


def test_saved_state_with_the_wrong_key_or_damaged_is_refused() -> None:
    key, wrong = os.urandom(32), os.urandom(32)
    saved = {ss.Device.unpickle: ss.Device.new().pickle(key),
             ss.SenderKey.unpickle: ss.SenderKey.new(NOW).pickle(key),
             ss.RoomKeys.unpickle: _room(1)[2][0].pickle(key)}
    for unpickle, data in saved.items():
        with pytest.raises(ss.SessionStateError, match="does not open with this key"):
            unpickle(data, wrong)
        with pytest.raises(ss.SessionStateError, match="does not open"):
            unpickle(data[:-1] + bytes([data[-1] ^ 1]), key)
    with pytest.raises(ss.SessionStateError, match="not a saved room keys"):
        ss.RoomKeys.unpickle(saved[ss.SenderKey.unpickle], key)
