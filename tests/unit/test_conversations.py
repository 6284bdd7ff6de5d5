"""Conversations without I/O: what a secret derives, sealed envelopes (only members
read them, only the author can have signed them), direct-chat secrets both sides agree
on, and room invites that refuse tampering."""

from __future__ import annotations

import base64

import nacl.signing
import orjson
import pytest

from p2pm.common import identity
from p2pm.services.gossip import conversations as cv


def _key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey.generate()


def _peer(key: nacl.signing.SigningKey) -> str:
    return identity.peer_id_from_public_key(bytes(key.verify_key))


def _message(key: nacl.signing.SigningKey, keys: cv.Keys, seq: int = 1,
             text: str = "hi") -> tuple[str, bytes]:
    plaintext = cv.message_plaintext(keys.id, _peer(key), seq, 1_700_000_000.5, text)
    signature = identity.sign(key, cv.MESSAGE_DOMAIN, plaintext)
    return cv.message_id(plaintext), cv.seal(keys.content_key, signature, plaintext)


def test_a_secret_derives_one_id_topic_and_key_and_others_differ() -> None:
    secret = cv.new_room_secret()
    a, b = cv.Keys.derive("room", secret), cv.Keys.derive("room", secret)
    assert a == b and a.id.startswith("r") and a.topic.startswith("/p2pm/conversation/")
    other = cv.Keys.derive("room", cv.new_room_secret())
    assert {other.id, other.topic, other.content_key} & {a.id, a.topic, a.content_key} \
        == set()
    # The topic reveals nothing of the key: neither contains the other.
    assert a.content_key.hex() not in a.topic and secret.hex() not in a.topic
    assert len(a.dht_key) == 34 and a.dht_key[:2] == b"\x12\x20"
    with pytest.raises(ValueError):
        cv.Keys.derive("room", b"short")


def test_direct_secret_is_the_same_on_both_sides() -> None:
    alice, bob, carol = _key(), _key(), _key()
    ab = identity.x25519_shared(alice, identity.x25519_public(bytes(bob.verify_key)))
    ba = identity.x25519_shared(bob, identity.x25519_public(bytes(alice.verify_key)))
    ac = identity.x25519_shared(alice, identity.x25519_public(bytes(carol.verify_key)))
    s1 = identity.direct_secret(ab, _peer(alice), _peer(bob))
    s2 = identity.direct_secret(ba, _peer(bob), _peer(alice))
    assert s1 == s2
    assert cv.Keys.derive("direct", s1).id.startswith("d")
    assert identity.direct_secret(ac, _peer(alice), _peer(carol)) != s1


def test_sealed_message_opens_for_members_with_its_author_and_id() -> None:
    alice = _key()
    keys = cv.Keys.derive("room", cv.new_room_secret())
    mid, env = _message(alice, keys, seq=7, text="héllo")
    opened = cv.open_envelope(keys, env)
    assert (opened.kind, opened.id, opened.author, opened.seq, opened.text) == \
        ("m", mid, _peer(alice), 7, "héllo")
    assert b"h\xc3\xa9llo" not in env  # encrypted on the wire and in storage
    # Sealing again (new nonce) gives other bytes but the same message id.
    _, env2 = _message(alice, keys, seq=7, text="héllo")
    assert env2 != env and cv.open_envelope(keys, env2).id == mid


def test_wrong_key_tampering_and_forged_authors_are_refused() -> None:
    alice, mallory = _key(), _key()
    keys = cv.Keys.derive("room", cv.new_room_secret())
    other = cv.Keys.derive("room", cv.new_room_secret())
    _, env = _message(alice, keys)
    with pytest.raises(cv.EnvelopeError, match="key"):
        cv.open_envelope(other, env)
    flipped = bytearray(env)
    flipped[-1] ^= 1
    with pytest.raises(cv.EnvelopeError):
        cv.open_envelope(keys, bytes(flipped))
    # Mallory holds the key but signs a message claiming alice wrote it.
    plaintext = cv.message_plaintext(keys.id, _peer(alice), 2, 1.0, "forged")
    forged = cv.seal(keys.content_key, identity.sign(mallory, cv.MESSAGE_DOMAIN, plaintext),
                     plaintext)
    with pytest.raises(cv.EnvelopeError, match="signature"):
        cv.open_envelope(keys, forged)
    # A message of another conversation sealed with this key is refused too.
    plaintext = cv.message_plaintext(other.id, _peer(alice), 1, 1.0, "elsewhere")
    moved = cv.seal(keys.content_key, identity.sign(alice, cv.MESSAGE_DOMAIN, plaintext),
                    plaintext)
    with pytest.raises(cv.EnvelopeError, match="another conversation"):
        cv.open_envelope(keys, moved)


@pytest.mark.parametrize("doc", [
    {"v": 2, "k": "m", "c": "x", "a": "y", "s": 1, "t": 1.0, "b": "hi"},
    {"v": 1, "k": "m", "s": 0, "t": 1.0, "b": "hi"},
    {"v": 1, "k": "q"},
    [1, 2],
])
def test_malformed_plaintexts_are_refused(doc: object) -> None:
    alice = _key()
    keys = cv.Keys.derive("room", cv.new_room_secret())
    if isinstance(doc, dict) and "c" not in doc and doc.get("k") == "m":
        doc = {**doc, "c": keys.id, "a": _peer(alice)}
    plaintext = orjson.dumps(doc)
    env = cv.seal(keys.content_key, identity.sign(alice, cv.MESSAGE_DOMAIN, plaintext),
                  plaintext)
    with pytest.raises(cv.EnvelopeError):
        cv.open_envelope(keys, env)


def test_receipt_round_trip_and_its_own_signing_domain() -> None:
    bob = _key()
    keys = cv.Keys.derive("direct", cv.new_room_secret())
    plaintext = cv.receipt_plaintext(keys.id, _peer(bob), 5.0, ["a1", "b2"])
    env = cv.seal(keys.content_key, identity.sign(bob, cv.RECEIPT_DOMAIN, plaintext),
                  plaintext)
    opened = cv.open_envelope(keys, env)
    assert (opened.kind, opened.author, opened.ids) == ("r", _peer(bob), ("a1", "b2"))
    # A message signature cannot be passed off as a receipt (domain separation).
    wrong = cv.seal(keys.content_key, identity.sign(bob, cv.MESSAGE_DOMAIN, plaintext),
                    plaintext)
    with pytest.raises(cv.EnvelopeError, match="signature"):
        cv.open_envelope(keys, wrong)


def test_text_limits() -> None:
    assert cv.check_text("ok") == "ok"
    for bad in ("", "   ", "x" * (cv.MAX_TEXT + 1), "a\x00b"):
        with pytest.raises(ValueError):
            cv.check_text(bad)
    cv.check_text("é" * (cv.MAX_TEXT // 2))  # 2 bytes each: exactly the limit


NOW = 1_800_000_000.0
DAY = 86400.0


def _invite(key: nacl.signing.SigningKey, secret: bytes, name: str = "ops",
            now: float = NOW, ttl_s: float = 7 * DAY) -> str:
    payload = cv.invite_payload(name, secret, _peer(key), ["/ip4/127.0.0.1/tcp/4001"],
                                now, ttl_s)
    return cv.encode_invite(payload, identity.sign(key, cv.INVITE_DOMAIN, payload))


def _signed_invite(key: nacl.signing.SigningKey, doc: dict, prefix: str) -> str:
    """Any payload under any prefix, genuinely signed (an old or lying inviter)."""
    payload = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    sig = identity.sign(key, cv.INVITE_DOMAIN, payload)
    return prefix + base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + \
        base64.urlsafe_b64encode(sig).decode().rstrip("=")


def _doc(text: str) -> dict:
    body = text[len(cv.INVITE_PREFIX):].split(".")[0]
    return orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def test_invite_round_trip() -> None:
    alice, secret = _key(), cv.new_room_secret()
    text = _invite(alice, secret)
    assert text.startswith("p2pm-invite2:")
    got = cv.decode_invite("  " + text + "\n", now=NOW + 60)
    assert (got.id, got.name, got.secret, got.inviter, got.addrs, got.ts, got.exp) == (
        cv.Keys.derive("room", secret).id, "ops", secret, _peer(alice),
        ("/ip4/127.0.0.1/tcp/4001",), NOW, NOW + 7 * DAY)


def test_an_expired_room_invite_is_refused_saying_when() -> None:
    alice, secret = _key(), cv.new_room_secret()
    text = _invite(alice, secret, now=NOW - 3 * DAY, ttl_s=2 * DAY)
    assert cv.decode_invite(text, now=NOW - DAY - 1).exp == NOW - DAY
    with pytest.raises(cv.InviteExpired) as info:
        cv.decode_invite(text, now=NOW - DAY)
    assert str(info.value) == ("this room invite expired on 2027-01-14 08:00 UTC; "
                               "ask for a new one")


def test_a_room_invite_from_the_future_is_refused() -> None:
    text = _invite(_key(), cv.new_room_secret(), now=NOW + DAY)
    with pytest.raises(cv.InviteExpired, match="room invite was issued in the future"):
        cv.decode_invite(text, now=NOW)


def test_an_invite_of_the_older_version_says_it_comes_from_an_older_p2pm() -> None:
    alice, secret = _key(), cv.new_room_secret()
    doc = _doc(_invite(alice, secret))
    v1 = {k: v for k, v in doc.items() if k not in ("ts", "exp")} | {"v": 1}
    for text in (_signed_invite(alice, v1, "p2pm-invite1:"),
                 _signed_invite(alice, v1, cv.INVITE_PREFIX), "p2pm-invite1:garbage"):
        with pytest.raises(cv.InviteError, match="comes from an older p2pm .*ask for a "
                                                 "new invite"):
            cv.decode_invite(text, now=NOW)


@pytest.mark.parametrize("change", [
    {"exp": NOW}, {"exp": NOW - 1}, {"exp": NOW + 365 * DAY + 1}, {"exp": "later"},
    {"ts": None}, {"ts": True}, {"ts": -5.0, "exp": 1.0}])
def test_bad_times_are_refused_even_when_signed(change: dict) -> None:
    alice = _key()
    doc = _doc(_invite(alice, cv.new_room_secret())) | change
    with pytest.raises(cv.InviteError, match="time or expiry"):
        cv.decode_invite(_signed_invite(alice, doc, cv.INVITE_PREFIX))


@pytest.mark.parametrize("ttl", [0, 3599, 365 * DAY + 1, float("nan")])
def test_an_invite_cannot_be_made_for_a_lifetime_outside_the_bounds(ttl: float) -> None:
    with pytest.raises(cv.InviteError, match="an invite lives from 1h to 365d"):
        _invite(_key(), cv.new_room_secret(), ttl_s=ttl)


def test_tampered_truncated_and_garbled_invites_are_refused() -> None:
    alice, mallory, secret = _key(), _key(), cv.new_room_secret()
    text = _invite(alice, secret)
    body, sig = text[len(cv.INVITE_PREFIX):].split(".")
    payload = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["name"] = "evil"
    altered = cv.INVITE_PREFIX + base64.urlsafe_b64encode(
        orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).decode().rstrip("=") + "." + sig
    bad_id = cv.invite_payload("ops", secret, _peer(mallory), [], NOW, DAY)
    doc = orjson.loads(bad_id)
    doc["id"] = "r" + "0" * 32
    bad_id = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    wrong_id = cv.encode_invite(bad_id, identity.sign(mallory, cv.INVITE_DOMAIN, bad_id))
    for bad, why in ((altered, "signature"), (text[:-10], "signature|garbled"),
                     (text.split(".")[0], "garbled"), ("hello", "not an invite"),
                     (cv.INVITE_PREFIX + "!!!.???", "garbled"), (wrong_id, "room id")):
        with pytest.raises(cv.InviteError, match=why):
            cv.decode_invite(bad)
