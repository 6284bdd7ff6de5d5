"""Node invites: a signed invite round-trips; anything altered, truncated or forged is
refused with a message; one past its expiry or from the future is refused saying when;
safety numbers follow Signal's construction, agree on both sides and differ between
pairs."""

from __future__ import annotations

import base64
import hashlib

import nacl.signing
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pm.common import identity, invite


def _key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey.generate()


def _peer(key: nacl.signing.SigningKey) -> str:
    return identity.peer_id_from_public_key(bytes(key.verify_key))


def _make(key: nacl.signing.SigningKey, name: str = "alice",
          addrs: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/4001",)) -> str:
    inv = invite.NodeInvite.issue(_peer(key), name, addrs, 1_700_000_000.5)
    return invite.encode(inv, identity.sign(key, invite.DOMAIN, inv.payload()))


def _signed(key: nacl.signing.SigningKey, doc: dict) -> str:
    """Any payload, genuinely signed: what a peer (honest, old or lying) can send."""
    payload = orjson.dumps(doc)
    return f"{invite.PREFIX}{_b64(payload)}.{_b64(identity.sign(key, invite.DOMAIN, payload))}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def test_round_trip_gives_back_what_was_signed() -> None:
    key = _key()
    text = _make(key, "Alice B.", ("/ip4/10.0.0.1/tcp/1", "/ip6/::1/tcp/2"))
    got = invite.decode(text)
    assert got.peer_id == _peer(key)
    assert got.name == "Alice B."
    assert got.ts == 1_700_000_000.5 and got.exp == got.ts + 7 * 86400
    assert got.addrs == ("/ip4/10.0.0.1/tcp/1", "/ip6/::1/tcp/2")
    assert invite.looks_like_invite(text)
    # A terminal or mail client may wrap a long line: the pasted invite still works.
    assert invite.decode(text[:40] + "\n  " + text[40:]) == got


def test_changed_payload_is_refused() -> None:
    key = _key()
    text = _make(key)
    body, sig = text[len(invite.PREFIX):].split(".")
    doc = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    doc["addrs"] = ["/ip4/6.6.6.6/tcp/666"]
    forged = f"{invite.PREFIX}{_b64(orjson.dumps(doc))}.{sig}"
    with pytest.raises(invite.InviteError, match="signature does not match"):
        invite.decode(forged)


def test_invite_signed_by_another_key_is_refused() -> None:
    alice, mallory = _key(), _key()
    inv = invite.NodeInvite.issue(_peer(alice), "alice", (), 1.0)
    sig = identity.sign(mallory, invite.DOMAIN, inv.payload())
    with pytest.raises(invite.InviteError, match="signature"):
        invite.decode(invite.encode(inv, sig))


def test_signature_from_another_domain_is_refused() -> None:
    key = _key()
    inv = invite.NodeInvite.issue(_peer(key), "alice", (), 1.0)
    sig = identity.sign(key, "p2pm-message:", inv.payload())
    with pytest.raises(invite.InviteError, match="signature"):
        invite.decode(invite.encode(inv, sig))


@pytest.mark.parametrize("text, why", [
    ("", "should start with"),
    ("hello", "should start with"),
    ("p2pm-node:", "truncated"),
    ("p2pm-node:abc", "truncated"),
    ("p2pm-node:!!!.abc", "base64"),
    ("p2pm-node:" + "A" * 5000, "at most"),
    ("p2pm-node:" + _b64(b"not json") + "." + _b64(b"x" * 64), "not JSON"),
    ("p2pm-node:" + _b64(b"[1]") + "." + _b64(b"x" * 64), "not an object"),
    ("p2pm-node:" + _b64(b'{"v": 3}') + "." + _b64(b"x" * 64), "version"),
    ("p2pm-node:" + _b64(b'{"v": true}') + "." + _b64(b"x" * 64), "version"),
])
def test_malformed_invites_say_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(invite.InviteError, match=why):
        invite.decode(text)


@pytest.mark.parametrize("change, why", [
    ({"peer_id": "QmNotAnEd25519Key"}, "peer ID"),
    ({"name": ""}, "name"),
    ({"name": "x" * 65}, "name"),
    ({"name": "bell\x07"}, "name"),
    ({"addrs": ["not-a-multiaddr"]}, "addresses"),
    ({"addrs": ["/ip4/1.1.1.1/tcp/1"] * 17}, "addresses"),
    ({"ts": -1}, "time"),
    ({"ts": True}, "time"),
    ({"extra": 1}, "unknown fields"),
    ({"exp": None}, "expiry"),
    ({"exp": "tomorrow"}, "expiry"),
    ({"exp": 1.0}, "expiry"),  # not after its own time
    ({"exp": 0.5}, "expiry"),
    ({"exp": 1.0 + 365 * 86400 + 1}, "expiry"),  # an issuer may not grant for ever
])
def test_bad_fields_are_refused_even_when_signed(change: dict, why: str) -> None:
    key = _key()
    doc = {"v": 2, "peer_id": _peer(key), "name": "alice", "addrs": [], "ts": 1.0,
           "exp": 2.0, **change}
    text = _signed(key, doc)
    with pytest.raises(invite.InviteError, match=why):
        invite.decode(text)


NOW = 1_800_000_000.0
DAY = 86400.0


def test_a_fresh_invite_is_taken_and_an_expired_one_refused_saying_when() -> None:
    key = _key()
    made = invite.NodeInvite.issue(_peer(key), "alice", (), NOW - 3 * DAY, 2 * DAY)
    text = invite.encode(made, identity.sign(key, invite.DOMAIN, made.payload()))
    assert invite.decode(text, now=NOW - 3 * DAY + 60).exp == NOW - DAY
    with pytest.raises(invite.InviteExpired) as info:
        invite.decode(text, now=NOW)
    message = str(info.value)
    assert "expired on 2027-01-14 08:00 UTC" in message and "ask for a new one" in message
    assert "\n" not in message
    # Exactly at its expiry it is already gone; just before, still good.
    with pytest.raises(invite.InviteExpired):
        invite.decode(text, now=made.exp)
    assert invite.decode(text, now=made.exp - 1).peer_id == _peer(key)
    # Without a time, decode only checks form and signature (peer profiles).
    assert invite.decode(text).exp == made.exp


def test_an_invite_from_the_future_is_refused() -> None:
    key = _key()
    made = invite.NodeInvite.issue(_peer(key), "alice", (), NOW + 3600)
    text = invite.encode(made, identity.sign(key, invite.DOMAIN, made.payload()))
    with pytest.raises(invite.InviteExpired, match="issued in the future.*clock"):
        invite.decode(text, now=NOW)
    # A few minutes of skew between two honest clocks is taken.
    assert invite.decode(text, now=NOW + 3600 - 300).name == "alice"


def test_a_version_1_invite_expires_seven_days_after_it_was_made() -> None:
    key = _key()
    text = _signed(key, {"v": 1, "peer_id": _peer(key), "name": "old", "addrs": [],
                         "ts": NOW})
    got = invite.decode(text, now=NOW + 6 * DAY)
    assert (got.name, got.exp) == ("old", NOW + 7 * DAY)
    with pytest.raises(invite.InviteExpired, match="expired on"):
        invite.decode(text, now=NOW + 7 * DAY + 1)
    with pytest.raises(invite.InviteError, match="unknown fields: exp"):
        invite.decode(_signed(key, {"v": 1, "peer_id": _peer(key), "name": "old",
                                    "addrs": [], "ts": NOW, "exp": NOW + 1e7}))


@pytest.mark.parametrize("text, seconds", [
    ("1h", 3600), ("90m", 5400), ("2d", 172800), ("1w", 604800), ("365d", 365 * DAY),
    ("7200", 7200), (" 12H ", 43200)])
def test_durations_as_typed(text: str, seconds: float) -> None:
    assert invite.parse_duration(text) == seconds


@pytest.mark.parametrize("text, why", [
    ("0d", "1h to 365d, not 0s"), ("59m", "not 59m"), ("366d", "not 366d"),
    ("banana", "not a duration"), ("2x", "not a duration"), ("", "not a duration"),
    ("-1h", "not a duration"), ("1.5h", "not a duration"), ("h", "not a duration"),
    ("9" * 40, "not a duration")])
def test_bad_durations_are_refused(text: str, why: str) -> None:
    with pytest.raises(invite.InviteError, match=why):
        invite.parse_duration(text)


@pytest.mark.parametrize("ttl", [0, 3599, 365 * DAY + 1, float("nan"), True, "1d", None])
def test_an_invite_cannot_be_issued_for_a_lifetime_outside_the_bounds(ttl: object) -> None:
    with pytest.raises(invite.InviteError, match="an invite lives from 1h to 365d"):
        invite.NodeInvite.issue(_peer(_key()), "alice", (), NOW, ttl)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_any_flipped_byte_is_refused(position: int, xor: int) -> None:
    key = _KEY
    text = _TEXT
    body, sig = text[len(invite.PREFIX):].split(".")
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)) +
                    base64.urlsafe_b64decode(sig + "=="))
    i = position % len(raw)
    raw[i] ^= xor or 1
    split = len(raw) - 64
    forged = f"{invite.PREFIX}{_b64(bytes(raw[:split]))}.{_b64(bytes(raw[split:]))}"
    with pytest.raises(invite.InviteError):
        invite.decode(forged)
    assert invite.decode(text).peer_id == _peer(key)


_KEY = _key()
_TEXT = _make(_KEY)


def test_safety_number_is_the_same_on_both_sides_and_differs_per_pair() -> None:
    a, b, c = (_peer(_key()) for _ in range(3))
    ab = invite.safety_number(a, b)
    assert ab == invite.safety_number(b, a)
    assert ab != invite.safety_number(a, c)  # the other party's key changed
    assert ab != invite.safety_number(c, b)  # our key changed
    groups = ab.split(" ")
    assert len(groups) == 12 and all(len(g) == 5 and g.isdigit() for g in groups)


def _signal_half(seed: bytes) -> str:
    """Signal's NumericFingerprintGenerator, written out from its description with
    nothing of p2pm's: the peer ID bytes are built by hand (identity multihash of the
    protobuf PublicKey {Type: Ed25519, Data: key})."""
    key = bytes(nacl.signing.SigningKey(seed).verify_key)
    peer_id_bytes = b"\x00\x24" + b"\x08\x01\x12\x20" + key
    h = b"p2pm-safety-number-v2" + key + peer_id_bytes
    for _ in range(5200):
        h = hashlib.sha512(h + key).digest()
    return "".join("%05d" % (int.from_bytes(h[i:i + 5], "big") % 100000)
                   for i in (0, 5, 10, 15, 20, 25))


def test_safety_number_matches_an_independent_computation() -> None:
    seed_a, seed_b = bytes(range(32)), bytes(range(32, 64))
    a = _peer(nacl.signing.SigningKey(seed_a))
    b = _peer(nacl.signing.SigningKey(seed_b))
    assert identity.peer_id_bytes(a)[:6] == b"\x00\x24\x08\x01\x12\x20"
    half_a, half_b = _signal_half(seed_a), _signal_half(seed_b)
    low, high = sorted((half_a, half_b))
    want = " ".join((low + high)[i:i + 5] for i in range(0, 60, 5))
    assert invite.safety_number(a, b) == want == invite.safety_number(b, a)
    # Pinned, so a change of the construction cannot pass unnoticed.
    assert want == VECTOR


VECTOR = "21748 01496 77095 78618 12667 38436 57634 47715 21508 83089 26694 15279"
