"""The Kademlia keyspace: every key, peer IDs included, is placed at sha256(key).

The spec defines distance as XOR(sha256(a), sha256(b)); peer IDs are hashed from their
multihash bytes like any other key. Keyspace points are Python ints, so XOR and
comparisons are single operations.
"""

from __future__ import annotations

import hashlib
import random

KEY_BITS = 256


def kad_key(raw: bytes) -> int:
    """The keyspace point of a key or a peer ID's multihash bytes."""
    return int.from_bytes(hashlib.sha256(raw).digest(), "big")


def distance(a: int, b: int) -> int:
    return a ^ b


def common_prefix_length(a: int, b: int) -> int:
    """How many leading bits a and b share (256 for equal points)."""
    return KEY_BITS - (a ^ b).bit_length()


# Refresh targets must be keys (the remote hashes what we send), so a key for bucket
# `cpl` is found by trying random ones: about 2**(cpl+1) tries. Deeper buckets are
# covered by the lookup of our own ID, which walks through all of them.
MAX_REFRESH_CPL = 12


def random_key_in_bucket(local: int, cpl: int, rng: random.Random) -> bytes:
    """A random peer-ID-shaped key (sha256 multihash) whose point shares exactly `cpl`
    leading bits with `local`, for refreshing that bucket."""
    if not 0 <= cpl <= MAX_REFRESH_CPL:
        raise ValueError(f"refresh bucket out of range: {cpl}")
    while True:
        key = b"\x12\x20" + rng.randbytes(32)
        if common_prefix_length(local, kad_key(key)) == cpl:
            return key
