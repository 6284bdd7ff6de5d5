"""Conversation keys v2 per message, next to today's SecretBox in the same run.

    python -m tests.bench.bench_sessions

* Room: seal with our Megolm sender key and open with a member's RoomKeys
  (roomcrypto.py: envelope header, Megolm encrypt, decrypt, and the re-import that
  moves the member's session past each message for forward secrecy), against
  conversations.seal + open_envelope (v1: SecretBox under the room secret, plus the
  author's signature check that v1's open does and v2's leaves to its caller).
* Direct: one Olm message each way on an established pairwise session
  (channel.Book, double ratchet), against SecretBox seal + open of the same size.
* Sender-key rotation: making a new Megolm session and installing it at a member.

Each figure is the median of ROUNDS rounds of N messages (µs per message); the
signature (Ed25519, done once per message in both versions) is made outside the loop.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import nacl.secret
import nacl.signing
import vodozemac

from p2pm.common import identity
from p2pm.services.gossip import channel as ch
from p2pm.services.gossip import conversations as cv
from p2pm.services.gossip import roomcrypto as rc
from p2pm.services.gossip import roster as rs
from p2pm.services.gossip import sessions as ss

N = 500
ROUNDS = 5
TEXT = "a message of ordinary length, with ünïcode and an emoji 🌿 " * 3


def _us(fn: Any, n: int = N) -> float:
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        fn(n)
        times.append((time.perf_counter() - start) / n * 1e6)
    return round(statistics.median(times), 1)


def _member() -> tuple[nacl.signing.SigningKey, str]:
    key = nacl.signing.SigningKey.generate()
    return key, identity.peer_id_from_public_key(bytes(key.verify_key))


def _room() -> tuple[rc.RoomCrypto, rc.RoomCrypto, bytes, bytes]:
    (akey, alice), (_bkey, bob) = _member(), _member()
    rosters = rs.Roster.new("bench"), rs.Roster.new("bench")
    for kind, target in ((rs.CREATE, None), (rs.ADD, bob)):
        payload = rosters[0].propose(kind, alice, target, 0.0)
        applied = rosters[0].add_signed(payload, identity.sign(akey, rs.ROSTER_DOMAIN,
                                                                payload))
        rosters[1].apply(applied.event.encode())
    plaintext = cv.message_plaintext("bench", alice, 1, 0.0, TEXT)
    inner = identity.sign(akey, cv.MESSAGE_DOMAIN, plaintext) + plaintext
    return (rc.RoomCrypto("bench", alice, rosters[0]), rc.RoomCrypto("bench", bob, rosters[1]),
            inner, plaintext)


def room_v2_us() -> float:
    sender, reader, inner, _ = _room()

    def loop(n: int) -> None:
        for _ in range(n):
            # a sender key lives ROTATE_AFTER_MESSAGES messages: rotation is in here too
            sealed = sender.seal(inner, 0.0)
            if sealed.share:
                reader.take_key(sender.me, sealed.share, sealed.to)
            reader.open(sealed.envelope)
    return _us(loop)


def room_v1_us() -> float:
    key, me = _member()
    keys = cv.Keys.derive("room", cv.new_room_secret())
    plaintext = cv.message_plaintext(keys.id, me, 1, 0.0, TEXT)
    sig = identity.sign(key, cv.MESSAGE_DOMAIN, plaintext)

    def loop(n: int) -> None:
        for _ in range(n):
            cv.open_envelope(keys, cv.seal(keys.content_key, sig, plaintext))
    return _us(loop)


def verify_us() -> float:
    """The author-signature check v1's open includes (v2's caller does it once too)."""
    key, _ = _member()
    public = bytes(key.verify_key)
    data = TEXT.encode()
    sig = identity.sign(key, cv.MESSAGE_DOMAIN, data)

    def loop(n: int) -> None:
        for _ in range(n):
            identity.verify(public, cv.MESSAGE_DOMAIN, data, sig)
    return _us(loop)


def direct_olm_us() -> float:
    a, b = vodozemac.Account(), vodozemac.Account()
    b.generate_one_time_keys(1)
    (otk,) = b.one_time_keys.values()
    alice, bob = ch.Book(a), ch.Book(b)
    data = TEXT.encode() * 2
    first = alice.encrypt("bob", b.curve25519_key, otk, data)
    bob.decrypt("alice", a.curve25519_key, first)
    # bob answers once, so both sides send on the established session from here on
    alice.decrypt("bob", b.curve25519_key, bob.encrypt("alice", a.curve25519_key, None, data))

    def loop(n: int) -> None:
        for _ in range(n // 2):  # both ways, so each side's ratchet turns
            bob.decrypt("alice", a.curve25519_key,
                        alice.encrypt("bob", b.curve25519_key, None, data))
            alice.decrypt("bob", b.curve25519_key,
                          bob.encrypt("alice", a.curve25519_key, None, data))
    return _us(loop)


def direct_secretbox_us() -> float:
    box = nacl.secret.SecretBox(bytes(32))
    data = TEXT.encode() * 2

    def loop(n: int) -> None:
        for _ in range(n):
            box.decrypt(box.encrypt(data))
    return _us(loop)


def rotation_us() -> float:
    _, bob = _member()
    keys = ss.RoomKeys()

    def loop(n: int) -> None:
        for _ in range(n):
            keys.add(bob, ss.SenderKey.new(0.0).share())
    return _us(loop, 200)


def run() -> list[dict[str, Any]]:
    v1, verify = room_v1_us(), verify_us()
    return [
        {"name": "room message seal + open, keys v2 (Megolm, FS re-import)",
         "value": room_v2_us(), "unit": "µs/message",
         "baseline": "v1 SecretBox seal + open, less its signature check",
         "baseline_value": round(max(v1 - verify, 0.1), 1)},
        {"name": "room message open's signature check (both versions)", "value": verify,
         "unit": "µs/message"},
        {"name": "direct message encrypt + decrypt, keys v2 (Olm double ratchet)",
         "value": direct_olm_us(), "unit": "µs/message",
         "baseline": "SecretBox encrypt + decrypt", "baseline_value": direct_secretbox_us()},
        {"name": "sender key rotation (new Megolm session, installed at a member)",
         "value": rotation_us(), "unit": "µs"},
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
