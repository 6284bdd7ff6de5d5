"""A fixed identity for unit tests that build an actor with fakes: its key, peer ID
and addresses, and a keystore fake that signs with it for real (so what it signs
verifies as the keystore's signature would)."""

from __future__ import annotations

import nacl.signing

from p2pm.common import identity
from p2pm.common.clients import Identity, KeystoreClient, fake

KEY = nacl.signing.SigningKey(bytes(range(32)))
ME = identity.peer_id_from_public_key(bytes(KEY.verify_key))
BOB = identity.peer_id_from_public_key(bytes(nacl.signing.SigningKey(bytes(32)).verify_key))
ADDRS = ("/ip4/192.0.2.1/tcp/4001/p2p/" + ME,)


def signing_keystore() -> KeystoreClient:
    async def sign(domain: str, data: bytes, payload_type: bytes | None = None) -> bytes:
        return identity.sign(KEY, domain, data, payload_type)

    return fake(KeystoreClient, sign=sign, identity=Identity(
        ME, bytes(KEY.verify_key), identity.x25519_public(bytes(KEY.verify_key))))
