"""StrictSign helpers for Ed25519 peers: the verifier the router is given, and a
signer over a local key (tests, simulations). The node's own messages are signed by
the keystore instead, over `"libp2p-pubsub:" + messages.signing_data(msg)`.

An Ed25519 peer id inlines its public key (identity multihash), so a message's `key`
field is redundant; when present it must be that same key.
"""

from __future__ import annotations

import nacl.signing

from p2pm.common import identity

from .messages import SIGNING_DOMAIN

_INLINE_PREFIX = bytes([0x00, 0x24])  # identity multihash of a 36-byte key protobuf


def peer_id_bytes(public_key: bytes) -> bytes:
    """The binary peer id (as in `Message.from`) of an Ed25519 public key."""
    return _INLINE_PREFIX + identity.public_key_proto(public_key)


def public_key_of(peer_id: bytes) -> bytes | None:
    """The Ed25519 public key inlined in a binary peer id, or None."""
    prefix = _INLINE_PREFIX + identity.public_key_proto(bytes(32))[:4]
    if len(peer_id) != len(prefix) + 32 or not peer_id.startswith(prefix):
        return None
    return peer_id[len(prefix):]


def verify_ed25519(author: bytes, key: bytes | None, data: bytes, signature: bytes) -> bool:
    """A `Verifier` for the router: the signature must be the author's, by the key
    its peer id inlines."""
    public_key = public_key_of(author)
    if public_key is None:
        return False
    if key is not None and key != identity.public_key_proto(public_key):
        return False
    return identity.verify(public_key, SIGNING_DOMAIN, data, signature)


def ed25519_signer(signing_key: nacl.signing.SigningKey):  # type: ignore[no-untyped-def]
    """A `Signer` with a local key: signs `"libp2p-pubsub:" + data`."""
    def sign(data: bytes) -> bytes:
        return identity.sign(signing_key, SIGNING_DOMAIN, data)
    return sign
