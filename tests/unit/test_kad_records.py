"""Strict record validation (/pk/, signed /p2pm/ records) and the record and provider
stores: what is refused leaves the store exactly as it was."""

from __future__ import annotations

import nacl.exceptions
import nacl.signing
import pytest

from p2pm.common import protobuf as pb
from p2pm.services.dht.messages import Peer
from p2pm.services.dht.records import (MAX_RECORD_BYTES, RECORD_DOMAIN, ProviderStore,
                                       PublicKey, PublicKeyValidator, RecordError,
                                       RecordStore, SignedRecordValidator, SignedValue,
                                       Validators, p2pm_record_key, peer_id_of_public_key,
                                       signed_bytes)

NOW = 1_700_000_000.0


def nacl_verify(public_key: bytes, domain: str, data: bytes, signature: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(public_key).verify(domain.encode() + data, signature)
    except (nacl.exceptions.BadSignatureError, ValueError):
        return False
    return True


class Owner:
    def __init__(self, seed: int) -> None:
        self.key = nacl.signing.SigningKey(bytes([seed]) * 32)
        self.key_proto = pb.encode(PublicKey(1, bytes(self.key.verify_key)))
        self.peer_id = peer_id_of_public_key(self.key_proto)

    def record(self, label: str, value: bytes, seq: int = 1, expires: float = NOW + 3600,
               key: bytes | None = None, signer: "Owner | None" = None) -> tuple[bytes, bytes]:
        key = key or p2pm_record_key(label, self.peer_id)
        body = signed_bytes(key, self.peer_id, seq, int(expires), value)
        sig = (signer or self).key.sign(RECORD_DOMAIN.encode() + body).signature
        return key, pb.encode(SignedValue(self.peer_id, seq, int(expires), value, sig))


@pytest.fixture
def validators() -> Validators:
    return Validators(PublicKeyValidator(), SignedRecordValidator(nacl_verify))


def test_pk_record_must_be_the_key_of_the_peer_id(validators: Validators) -> None:
    alice, bob = Owner(1), Owner(2)
    validators.validate(b"/pk/" + alice.peer_id, alice.key_proto, NOW)
    with pytest.raises(RecordError, match="not the key of the peer ID"):
        validators.validate(b"/pk/" + alice.peer_id, bob.key_proto, NOW)
    with pytest.raises(RecordError, match="not a public key"):
        validators.validate(b"/pk/" + alice.peer_id, b"\xff\xff", NOW)


def test_signed_record_accepted_and_best_version_selected(validators: Validators) -> None:
    alice = Owner(1)
    key, v1 = alice.record("profile", b"one", seq=1)
    _, v2 = alice.record("profile", b"two", seq=2)
    validators.validate(key, v1, NOW)
    validators.validate(key, v2, NOW)
    assert validators.select(key, [v1, v2]) == 1
    assert validators.select(key, [v2, v1]) == 0


HOSTILE_RECORDS = [
    ("unknown namespace", "no validator"),
    ("plain key", "no validator"),
    ("bad signature", "bad signature"),
    ("signed by someone else", "bad signature"),
    ("owner not in key", "not the peer ID in the key"),
    ("expired", "expired"),
    ("expiry too far", "expiry more than"),
    ("oversized", "exceeds"),
    ("garbage envelope", "not a signed envelope"),
    ("bad label", "<label>"),
]


def hostile_record(case: str) -> tuple[bytes, bytes]:
    """A (key, value) that a strict node must refuse, for each case of HOSTILE_RECORDS."""
    alice, mallory = Owner(1), Owner(3)
    key, value = alice.record("profile", b"hello")
    if case == "unknown namespace":
        key = b"/ipns/" + alice.peer_id
    elif case == "plain key":
        key = b"just-a-key"
    elif case == "bad signature":
        env = pb.decode(SignedValue, value)
        value = pb.encode(SignedValue(env.owner, env.seq, env.expires, b"HELLO", env.signature))
    elif case == "signed by someone else":
        key, value = alice.record("profile", b"hello", signer=mallory)
    elif case == "owner not in key":
        key = p2pm_record_key("profile", mallory.peer_id)
        _, value = alice.record("profile", b"x", key=key)
    elif case == "expired":
        key, value = alice.record("profile", b"hello", expires=NOW - 1)
    elif case == "expiry too far":
        key, value = alice.record("profile", b"hello", expires=NOW + 30 * 86400)
    elif case == "oversized":
        key, value = alice.record("profile", b"x" * MAX_RECORD_BYTES)
    elif case == "garbage envelope":
        value = b"\x0a\xff"
    elif case == "bad label":
        key = b"/p2pm/Bad Label/" + alice.peer_id
    return key, value


@pytest.mark.parametrize("case,why", HOSTILE_RECORDS)
def test_invalid_records_are_refused_and_not_stored(validators: Validators, case: str,
                                                    why: str) -> None:
    key, value = hostile_record(case)
    store = RecordStore(validators)
    with pytest.raises(RecordError, match=why):
        store.put(key, value, NOW)
    assert len(store) == 0 and store.get(key, NOW) is None


def test_store_keeps_the_better_record_and_expires_it(validators: Validators) -> None:
    alice = Owner(1)
    key, v1 = alice.record("profile", b"one", seq=1, expires=NOW + 100)
    _, v2 = alice.record("profile", b"two", seq=2, expires=NOW + 200)
    store = RecordStore(validators)
    assert store.put(key, v2, NOW)
    assert not store.put(key, v1, NOW)  # an older version does not replace a newer one
    assert store.get(key, NOW) == v2
    assert store.get(key, NOW + 201) is None  # served only until its own expiry
    assert len(store) == 0


def test_store_is_bounded(validators: Validators) -> None:
    owners = [Owner(i) for i in range(1, 4)]
    store = RecordStore(validators, max_records=2)
    for owner in owners[:2]:
        store.put(*owner.record("profile", b"v"), NOW)
    with pytest.raises(RecordError, match="full"):
        store.put(*owners[2].record("profile", b"v"), NOW)
    assert len(store) == 2


def test_providers_are_deduplicated_and_expire_after_48h() -> None:
    store = ProviderStore()
    p, q = Peer(b"p", (b"/a",)), Peer(b"q")
    for t in range(5):
        store.add(b"key", p, NOW + t)
    store.add(b"key", q, NOW)
    assert store.get(b"key", NOW + 10) == [p, q]
    assert store.get(b"key", NOW + 48 * 3600 + 1) == [p]  # q expired, p was re-announced later
    assert store.get(b"key", NOW + 48 * 3600 + 5) == []
    assert store.key_count() == 0


def test_provider_store_refuses_beyond_its_limits() -> None:
    store = ProviderStore(max_keys=1, max_per_key=2)
    assert store.add(b"k1", Peer(b"a"), NOW) and store.add(b"k1", Peer(b"b"), NOW)
    assert not store.add(b"k1", Peer(b"c"), NOW)
    assert not store.add(b"k2", Peer(b"a"), NOW)
    assert store.get(b"k1", NOW) == [Peer(b"a"), Peer(b"b")] and store.get(b"k2", NOW) == []


def test_records_signed_by_the_node_identity_verify_with_it() -> None:
    from p2pm.common import identity
    signer = nacl.signing.SigningKey(bytes([7]) * 32)
    raw = bytes(signer.verify_key)
    assert pb.encode(PublicKey(1, raw)) == identity.public_key_proto(raw)
    owner = peer_id_of_public_key(identity.public_key_proto(raw))
    key = p2pm_record_key("profile", owner)
    body = signed_bytes(key, owner, 1, int(NOW + 60), b"v")
    value = pb.encode(SignedValue(owner, 1, int(NOW + 60), b"v",
                                  identity.sign(signer, RECORD_DOMAIN, body)))
    strict = Validators(SignedRecordValidator(identity.verify))
    strict.validate(key, value, NOW)
    forged = pb.encode(SignedValue(owner, 2, int(NOW + 60), b"v",
                                   identity.sign(signer, RECORD_DOMAIN, body)))
    with pytest.raises(RecordError, match="bad signature"):
        strict.validate(key, forged, NOW)


def test_pk_key_in_py_libp2p_hex_form_is_validated_the_same(validators: Validators) -> None:
    alice, bob = Owner(1), Owner(2)
    hex_key = b"/pk/" + alice.peer_id.hex().encode()
    validators.validate(hex_key, alice.key_proto, NOW)
    with pytest.raises(RecordError, match="not the key of the peer ID"):
        validators.validate(hex_key, bob.key_proto, NOW)
    with pytest.raises(RecordError):
        validators.validate(b"/pk/" + alice.peer_id.hex().upper().encode(), alice.key_proto, NOW)


def test_an_owner_whose_peer_id_holds_a_slash_byte_owns_its_records(
        validators: Validators) -> None:
    # Peer IDs are binary in keys: about one in eight holds b"/" (0x2f).
    owner = next(o for o in map(Owner, range(1, 256)) if b"/" in o.peer_id)
    key, value = owner.record("profile", b"mine")
    assert SignedRecordValidator.owner_of(key) == owner.peer_id
    validators.validate(key, value, NOW)
    with pytest.raises(RecordError, match="<label>/<owner peer id>"):
        SignedRecordValidator.owner_of(b"/p2pm/profile")
