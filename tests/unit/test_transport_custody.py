"""Key custody: the transport's PrivateKey signs only what the keystore signed."""

from __future__ import annotations

import nacl.signing
import pytest
from libp2p.peer.envelope import make_unsigned

from p2pm.common import identity
from p2pm.services.transport.custody import CustodyError, KeystoreBackedKey
from p2pm.services.transport.host import connection_config, parse_unsigned_envelope


def keystore() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey.generate()


def test_serves_the_noise_signature_and_refuses_anything_else() -> None:
    sk = keystore()
    key = KeystoreBackedKey(bytes(sk.verify_key))
    noise_public = bytes(range(32))
    sig = identity.sign(sk, "noise-libp2p-static-key:", noise_public)
    key.add_noise_signature(noise_public, sig)
    assert key.sign(b"noise-libp2p-static-key:" + noise_public) == sig
    with pytest.raises(CustodyError):
        key.sign(b"noise-libp2p-static-key:" + bytes(32))
    with pytest.raises(CustodyError):
        key.to_bytes()  # there is no secret to export


def test_a_signature_not_made_by_our_identity_is_refused() -> None:
    key = KeystoreBackedKey(bytes(keystore().verify_key))
    forged = identity.sign(keystore(), "noise-libp2p-static-key:", bytes(32))
    with pytest.raises(CustodyError):
        key.add_noise_signature(bytes(32), forged)


def test_peer_record_signatures_match_the_keystore_envelope_format() -> None:
    sk = keystore()
    key = KeystoreBackedKey(bytes(sk.verify_key))
    payload_type, payload = b"\x03\x01", b"record bytes"
    unsigned = make_unsigned("libp2p-peer-record", payload_type, payload)
    assert parse_unsigned_envelope(unsigned) == ("libp2p-peer-record", payload_type, payload)
    sig = identity.sign(sk, "libp2p-peer-record", payload, payload_type)
    key.add_record_signature(unsigned, sig)
    assert key.sign(unsigned) == sig
    with pytest.raises(CustodyError):
        parse_unsigned_envelope(unsigned + b"x")


def test_old_record_signatures_are_forgotten() -> None:
    sk = keystore()
    key = KeystoreBackedKey(bytes(sk.verify_key))
    messages = [make_unsigned("libp2p-peer-record", b"\x03\x01", b"r%d" % i) for i in range(20)]
    for i, m in enumerate(messages):
        key.add_record_signature(m, identity.sign(sk, "libp2p-peer-record", b"r%d" % i,
                                                  b"\x03\x01"))
    assert key.sign(messages[-1])
    with pytest.raises(CustodyError):
        key.sign(messages[0])


def test_one_connection_per_peer_within_the_configured_limit() -> None:
    cc = connection_config(10)
    assert (cc.max_connections, cc.max_connections_per_peer, cc.min_connections) == (10, 1, 0)
