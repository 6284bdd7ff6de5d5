"""Node invites: a signed invite round-trips; anything altered, truncated or forged is
refused with a message; safety numbers agree on both sides and differ between pairs."""

from __future__ import annotations

import base64

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
    inv = invite.NodeInvite(_peer(key), name, addrs, 1_700_000_000.5)
    return invite.encode(inv, identity.sign(key, invite.DOMAIN, inv.payload()))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def test_round_trip_gives_back_what_was_signed() -> None:
    key = _key()
    text = _make(key, "Alice B.", ("/ip4/10.0.0.1/tcp/1", "/ip6/::1/tcp/2"))
    got = invite.decode(text)
    assert got.peer_id == _peer(key)
    assert got.name == "Alice B."
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
    inv = invite.NodeInvite(_peer(alice), "alice", (), 1.0)
    sig = identity.sign(mallory, invite.DOMAIN, inv.payload())
    with pytest.raises(invite.InviteError, match="signature"):
        invite.decode(invite.encode(inv, sig))


def test_signature_from_another_domain_is_refused() -> None:
    key = _key()
    inv = invite.NodeInvite(_peer(key), "alice", (), 1.0)
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
    ("p2pm-node:" + _b64(b'{"v": 2}') + "." + _b64(b"x" * 64), "version"),
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
])
def test_bad_fields_are_refused_even_when_signed(change: dict, why: str) -> None:
    key = _key()
    doc = {"v": 1, "peer_id": _peer(key), "name": "alice", "addrs": [], "ts": 1.0, **change}
    payload = orjson.dumps(doc)
    text = f"{invite.PREFIX}{_b64(payload)}.{_b64(identity.sign(key, invite.DOMAIN, payload))}"
    with pytest.raises(invite.InviteError, match=why):
        invite.decode(text)


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
    assert ab != invite.safety_number(a, c)
    groups = ab.split(" ")
    assert len(groups) == 12 and all(len(g) == 5 and g.isdigit() for g in groups)
