"""The identity: peer IDs and signatures as py-libp2p computes them, and the encrypted
identity file (passphrase, modes, tampering, no overwrite)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import multiaddr
import nacl.bindings
import nacl.public
import nacl.signing
import pytest
from libp2p.crypto.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from libp2p.crypto.x25519 import X25519PrivateKey
from libp2p.peer.envelope import Envelope, consume_envelope
from libp2p.peer.id import ID
from libp2p.peer.peer_record import PEER_RECORD_ENVELOPE_PAYLOAD_TYPE, PeerRecord
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import signature_validator
from libp2p.security.noise.messages import NoiseHandshakePayload, verify_handshake_payload_sig

from p2pm.common import identity as ident
from p2pm.common.identity import IdentityError, WrongPassphrase

SEED = bytes(range(32))
PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="p2pm-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def protected(folder: Path) -> Path:
    """One protected identity shared by the tests that only read it (Argon2id is slow
    on purpose)."""
    path = folder / "protected.key"
    ident.create_identity(path, PASSPHRASE, seed=SEED)
    return path


@pytest.fixture()
def copy_of(protected: Path, folder: Path) -> Iterator[Path]:
    path = folder / f"copy-{os.urandom(4).hex()}.key"
    shutil.copy(protected, path)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def signing_key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(SEED)


# -- peer IDs ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [SEED, bytes(32), b"\xff" * 32, os.urandom(32)])
def test_peer_id_equals_py_libp2p(seed: bytes) -> None:
    theirs = Ed25519PrivateKey.new(seed).get_public_key()
    ours = bytes(nacl.signing.SigningKey(seed).verify_key)
    peer_id = ident.peer_id_from_public_key(ours)
    assert peer_id == ID.from_pubkey(theirs).to_base58()
    assert peer_id.startswith("12D3KooW")
    assert ident.public_key_proto(ours) == theirs.serialize()
    assert ident.public_key_from_peer_id(peer_id) == ours


@pytest.mark.parametrize("garbage", [
    "", "not a peer id", "12D3KooW0OIl",  # not base58
    "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",  # sha256 peer ID: key not inside
    "12D3KooWAAAAAAAAAAA",  # identity multihash, truncated
    ident.peer_id_from_public_key(SEED)[:-1],  # one character short
])
def test_garbage_peer_id_is_a_clear_error(garbage: str) -> None:
    with pytest.raises(IdentityError, match="peer ID"):
        ident.public_key_from_peer_id(garbage)


# -- signatures as libp2p checks them -----------------------------------------------


def test_noise_handshake_signature_verifies_with_py_libp2p() -> None:
    sk = signing_key()
    noise_static = X25519PrivateKey.new().get_public_key()
    sig = ident.sign(sk, "noise-libp2p-static-key:", noise_static.to_bytes())
    payload = NoiseHandshakePayload(Ed25519PublicKey.from_bytes(bytes(sk.verify_key)), sig)
    assert verify_handshake_payload_sig(payload, noise_static)
    other_static = X25519PrivateKey.new().get_public_key()
    assert not verify_handshake_payload_sig(payload, other_static)


def test_pubsub_signature_verifies_with_py_libp2p() -> None:
    sk = signing_key()
    from_id = ID.from_base58(ident.peer_id_from_public_key(bytes(sk.verify_key))).to_bytes()
    msg = rpc_pb2.Message(data=b"hello", topicIDs=["room"], from_id=from_id, seqno=b"\0" * 8)
    msg.signature = ident.sign(sk, "libp2p-pubsub:", msg.SerializeToString())
    assert signature_validator(msg)
    msg.data = b"hellO"
    assert not signature_validator(msg)


def test_peer_record_envelope_verifies_with_py_libp2p() -> None:
    sk = signing_key()
    peer = ID.from_base58(ident.peer_id_from_public_key(bytes(sk.verify_key)))
    record = PeerRecord(peer, [multiaddr.Multiaddr("/ip4/192.0.2.7/tcp/4001")], seq=7)
    payload = record.marshal_record()
    sig = ident.sign(sk, "libp2p-peer-record", payload, PEER_RECORD_ENVELOPE_PAYLOAD_TYPE)
    env = Envelope(Ed25519PublicKey.from_bytes(bytes(sk.verify_key)),
                   PEER_RECORD_ENVELOPE_PAYLOAD_TYPE, payload, sig)
    _, decoded = consume_envelope(env.marshal_envelope(), "libp2p-peer-record")
    assert decoded.peer_id == peer and decoded.seq == 7
    assert ident.verify(bytes(sk.verify_key), "libp2p-peer-record", payload, sig,
                        PEER_RECORD_ENVELOPE_PAYLOAD_TYPE)


def test_signature_does_not_carry_over_to_another_domain() -> None:
    sk = signing_key()
    pk = bytes(sk.verify_key)
    sig = ident.sign(sk, "p2pm-message:", b"hi")
    assert ident.verify(pk, "p2pm-message:", b"hi", sig)
    assert not ident.verify(pk, "p2pm-receipt:", b"hi", sig)
    assert not ident.verify(pk, "p2pm-message:", b"hi!", sig)
    assert not ident.verify(pk[:31], "p2pm-message:", b"hi", sig)
    assert not ident.verify(pk, "p2pm-message:", b"hi", sig[:63])


def test_signing_domain_rules() -> None:
    assert ident.signed_bytes("p2pm-invite:", b"x") == b"p2pm-invite:x"
    env = ident.signed_bytes("libp2p-peer-record", b"abc", b"\x03\x01")
    assert env == b"\x12libp2p-peer-record" + b"\x02\x03\x01" + b"\x03abc"
    with pytest.raises(ident.SigningDomainError, match="not allowed; allowed: .*p2pm-message:"):
        ident.signed_bytes("ssh-auth:", b"x")
    with pytest.raises(ident.SigningDomainError, match="needs a payload_type"):
        ident.signed_bytes("libp2p-peer-record", b"x")
    with pytest.raises(ident.SigningDomainError, match="takes no payload_type"):
        ident.signed_bytes("libp2p-pubsub:", b"x", b"\x01")


# -- X25519 --------------------------------------------------------------------------


def test_dh_matches_the_other_side() -> None:
    sk = signing_key()
    theirs = nacl.public.PrivateKey.generate()
    shared = ident.x25519_shared(sk, bytes(theirs.public_key))
    our_x25519 = ident.x25519_public(bytes(sk.verify_key))
    assert shared == nacl.bindings.crypto_scalarmult(bytes(theirs), our_x25519)
    with pytest.raises(ValueError, match="32 bytes"):
        ident.x25519_shared(sk, b"\x01" * 31)
    with pytest.raises(ValueError, match="low order"):
        ident.x25519_shared(sk, bytes(32))
    with pytest.raises(ValueError, match="low order"):
        ident.x25519_shared(sk, b"\x01" + bytes(31))  # u=1: a point of order 4


# -- the identity file ---------------------------------------------------------------


def test_create_unlock_and_open(protected: Path) -> None:
    key = ident.derive_unlock_key(protected, PASSPHRASE)
    opened = ident.open_identity(protected, key)
    assert bytes(opened.verify_key) == bytes(signing_key().verify_key)
    assert ident.read_peer_id(protected) == ident.peer_id_from_public_key(
        bytes(signing_key().verify_key))
    assert ident.is_protected(protected)
    assert stat.S_IMODE(protected.stat().st_mode) == 0o600
    assert PASSPHRASE not in protected.read_text()
    assert SEED.hex() not in protected.read_text()


def test_wrong_passphrase(protected: Path) -> None:
    with pytest.raises(WrongPassphrase, match=f"wrong passphrase for identity {protected}"):
        ident.derive_unlock_key(protected, "guess")
    with pytest.raises(WrongPassphrase):
        ident.open_identity(protected, bytes(32))
    with pytest.raises(WrongPassphrase):
        ident.open_identity(protected, b"short")


def test_unprotected_identity_opens_with_empty_passphrase(folder: Path) -> None:
    path = folder / "open.key"
    peer_id = ident.create_identity(path, None)
    assert not ident.is_protected(path)
    key = ident.derive_unlock_key(path, "")
    assert ident.peer_id_from_public_key(
        bytes(ident.open_identity(path, key).verify_key)) == peer_id


def test_refuses_to_overwrite(protected: Path) -> None:
    before = protected.read_bytes()
    with pytest.raises(IdentityError, match="already exists"):
        ident.create_identity(protected, "another")
    assert protected.read_bytes() == before
    assert [p.name for p in protected.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_missing_folder_and_file(folder: Path) -> None:
    with pytest.raises(IdentityError, match="no identity at .*run p2pm init"):
        ident.read_peer_id(folder / "absent.key")
    with pytest.raises(IdentityError, match="does not exist"):
        ident.create_identity(folder / "nowhere" / "identity.key", None)


def _edit(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _reseal(doc: dict) -> None:  # type: ignore[type-arg]
    doc["check"] = ident._check_digest(doc)


def test_flipped_ciphertext_is_reported_as_damage(copy_of: Path) -> None:
    def flip(doc: dict) -> None:  # type: ignore[type-arg]
        ct = doc["cipher"]["ciphertext"]
        doc["cipher"]["ciphertext"] = ("B" if ct[0] == "A" else "A") + ct[1:]

    _edit(copy_of, flip)
    with pytest.raises(IdentityError, match="damaged or tampered"):
        ident.derive_unlock_key(copy_of, PASSPHRASE)


def test_tampering_that_fixes_the_check_still_fails(copy_of: Path) -> None:
    other = ident.peer_id_from_public_key(bytes(nacl.signing.SigningKey(bytes(32)).verify_key))
    _edit(copy_of, lambda d: (d.update(peer_id=other), _reseal(d)))
    with pytest.raises(IdentityError, match="peer ID does not match"):
        ident.derive_unlock_key(copy_of, PASSPHRASE)


def test_resealed_ciphertext_change_cannot_open(copy_of: Path) -> None:
    def flip(doc: dict) -> None:  # type: ignore[type-arg]
        ct = doc["cipher"]["ciphertext"]
        doc["cipher"]["ciphertext"] = ("B" if ct[0] == "A" else "A") + ct[1:]
        _reseal(doc)

    _edit(copy_of, flip)
    with pytest.raises(WrongPassphrase):
        ident.derive_unlock_key(copy_of, PASSPHRASE)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(version=2), "has version 2; this p2pm reads version 1"),
    (lambda d: d["kdf"].update(memlimit=1 << 40), "unsupported Argon2id parameters"),
    (lambda d: d["cipher"].update(nonce="AAAA"), "bad nonce"),
    (lambda d: d.update(protected="yes"), "unexpected format"),
])
def test_bad_file_content(copy_of: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    _edit(copy_of, lambda d: (change(d), _reseal(d)))
    with pytest.raises(IdentityError, match=message):
        ident.derive_unlock_key(copy_of, PASSPHRASE)


@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]", b"\xff\xfe", b" " * 70_000])
def test_unreadable_file(copy_of: Path, content: bytes) -> None:
    copy_of.write_bytes(content)
    with pytest.raises(IdentityError):
        ident.read_peer_id(copy_of)
