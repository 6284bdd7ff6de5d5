"""Conversation keys v2, the key layer: Olm prekeys and Megolm room sessions, without I/O.

The cryptography is vodozemac's (Matrix's audited Olm and Megolm); this module decides
what we publish, what we keep, for how long, and when a key must change. Nothing here
sends, sleeps or reads a clock: time comes in as `now`, bytes go out as return values.

The objects:

- `Device` is this node's Olm account: a Curve25519 identity key, a supply of
  ONE_TIME_KEYS one-time keys (topped up by `replenish` when fewer than half are left)
  and a fallback key, used once the one-time keys run out. `Device.account` is what the
  pairwise channel (another module) builds Olm sessions with.
- `Bundle` is the prekey bundle a contact fetches while we are offline (from the DHT or
  inside an invite): those public keys, `ts` and `exp`, signed by our libp2p identity
  key in the PREKEY_DOMAIN. That signature is what binds the Olm keys to the peer ID, so
  a safety number, which covers the peer ID, covers them too. The module never holds
  the identity key: `Device.bundle` gives the payload, the keystore signs it,
  `Bundle.encode` joins the two. `Bundle.decode` checks everything (size, shape,
  version, the signature against the key inside the expected peer ID, the time window
  of common/invite.py) and raises BundleError with what is wrong. The account also
  signs "this Olm key belongs to this peer ID" with its own Ed25519 key (`olm_sig`), so
  nobody can republish another node's Olm keys under their own peer ID.
- `SenderKey` is our outbound Megolm session in one room. Each member gets its session
  key (`share`, sent over pairwise Olm) and decrypts what we `encrypt`.
- `RoomKeys` are the inbound Megolm sessions we hold for one room, one or more per
  sender, keyed by (sender peer ID, session id).

Forward secrecy (FS), inside a session: Megolm's ratchet only runs forward, so
`RoomKeys` keeps each session at the lowest index it has not yet received (re-imported
there after every decryption). A copy of our state taken later cannot decrypt a message
we had already moved past, even from a recording. The window this leaves: messages
received *after* a gap (a lost or late message) stay decryptable from our state until
the gap closes or is given up. A gap is given up once a message more than MAX_GAP
indices after it has been decrypted; the session then moves past it, and the missing
messages, if they come, fail with DecryptError. Megolm gives no FS across the messages
of one session for someone holding an earlier copy of it; rotation limits that.

Post-compromise security (PCS): a `SenderKey` must be replaced (`needs_rotation`)
after ROTATE_AFTER_MESSAGES messages, after ROTATE_AFTER_S seconds, and at once when a
member is removed or leaves (`force_rotation`, after which it refuses to encrypt).
Every session is fresh randomness, so whoever stole a member's keys, or is no longer a
member, cannot read the next session unless it is shared with them.

What is bounded, and why: a bundle (MAX_BUNDLE_BYTES, MAX_BUNDLE_ONE_TIME_KEYS) since it
comes from anyone; per sender at most MAX_SESSIONS_PER_SENDER sessions (the oldest is
dropped first: a rotated-away session's late messages then fail with
UnknownSessionError), so a sender rotating in a loop cannot grow our state; per session
the indices remembered above the floor (at most MAX_GAP) and the given-up indices (the
MAX_GAP most recent; an older one arriving late reads as a replay, which is harmless:
it was lost anyway). Senders are bounded by the room's membership: the caller closes a
removed member's sessions (`close`, `close_all_except`).

What it does NOT do: the pairwise Olm transport (building sessions from a Bundle,
carrying `share` output), deciding who is a member, signing, storage and the actor are
elsewhere. `RoomKeys.add` trusts its caller to name as sender the peer whose
authenticated pairwise channel delivered the key.

Errors all derive from SessionError: UnknownSessionError (a session we do not hold),
ReplayError (an index already decrypted: a redelivery, safe to drop silently),
DecryptError (cannot be decrypted: tampered, too early, or given up), KeyRefused (a room
key not taken), SessionStateError (a pickle that does not open, a retired sender key)
and BundleError (also a ValueError). Each message says what happened.

State is pickled (`pickle`/`unpickle`) under a 32-byte key of the caller's (an at-rest
subkey): one XSalsa20-Poly1305 box over all of it, vodozemac's own pickles inside under
a key derived from the same one. A wrong key or damaged data raises SessionStateError.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import nacl.exceptions
import nacl.secret
import orjson
import vodozemac

from p2pm.common import identity
from p2pm.common import invite as node_invites
from p2pm.services.gossip import conversations

PREKEY_DOMAIN = "p2pm-prekeys:"
BUNDLE_VERSION = 2
# What the account's own key signs, so its signature means nothing in any other protocol.
OLM_SELF_DOMAIN = b"p2pm-prekeys-olm:"
ONE_TIME_KEYS = 50  # vodozemac keeps at most 50; a larger supply would drop the oldest
DEFAULT_BUNDLE_TTL_S = node_invites.DEFAULT_TTL_S
MAX_BUNDLE_ONE_TIME_KEYS = 100
MAX_BUNDLE_BYTES = 8 * 1024
MAX_KEY_ID_CHARS = 16

ROTATE_AFTER_MESSAGES = 100
ROTATE_AFTER_S = 3600.0
MAX_GAP = 100
MAX_SESSIONS_PER_SENDER = 16
# A v2 message is what a v1 envelope sealed: the author's signature, then the plaintext.
MAX_PLAINTEXT = conversations.SIGNATURE_BYTES + conversations.MAX_PLAINTEXT
# Megolm adds a header, at most one AES block of padding, a MAC and a signature.
MAX_CIPHERTEXT = MAX_PLAINTEXT + 256
MAX_ROOM_KEY_BYTES = 1024  # a session key is 306 base64 characters, an export 220

PICKLE_KEY_BYTES = nacl.secret.SecretBox.KEY_SIZE
PICKLE_VERSION = 1

_BUNDLE_FIELDS = {"v", "peer", "curve25519", "ed25519", "olm_sig", "one_time_keys",
                  "fallback_key", "ts", "exp"}
_KEY_ID = re.compile(r"[A-Za-z0-9+/]{1,%d}" % MAX_KEY_ID_CHARS)


class SessionError(Exception):
    """Something this module refused or could not do; the message says what."""


class UnknownSessionError(SessionError):
    """A message of a session we do not hold: never shared with us, dropped as the
    sender's oldest, or closed because the sender left the room."""


class ReplayError(SessionError):
    """A message index already decrypted: a redelivered copy, safe to ignore."""


class DecryptError(SessionError):
    """A message that cannot be decrypted: malformed, tampered with, not of that
    session, sent before we got the key, or given up after a gap."""


class KeyRefused(SessionError):
    """A room key not taken: malformed, or for a session we already hold (a session
    never moves backwards, and a second copy adds nothing)."""


class SessionStateError(SessionError):
    """State that cannot be used: a pickle that does not open with this key or is
    damaged, or a sender key retired by `force_rotation`."""


class BundleError(SessionError, ValueError):
    """A prekey bundle that is malformed, tampered with, someone else's, or outside
    its time window; the message says which, for the person who sees it."""


# -- pickles -------------------------------------------------------------------------


def _subkey(key: bytes, person: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != PICKLE_KEY_BYTES:
        raise ValueError(f"a pickle key is {PICKLE_KEY_BYTES} bytes")
    return hashlib.blake2b(b"", key=bytes(key), digest_size=PICKLE_KEY_BYTES,
                           person=person).digest()


# Two keys from the caller's: the box and vodozemac's pickles use different ciphers,
# and one key should not serve two.
def _box(key: bytes) -> nacl.secret.SecretBox:
    return nacl.secret.SecretBox(_subkey(key, b"p2pm-sess-box"))


def _inner(key: bytes) -> bytes:
    return _subkey(key, b"p2pm-sess-olm")


def _seal(kind: str, doc: dict[str, Any], key: bytes) -> bytes:
    body = orjson.dumps({"v": PICKLE_VERSION, "kind": kind, **doc})
    return bytes(_box(key).encrypt(body))


def _open(kind: str, data: bytes, key: bytes) -> dict[str, Any]:
    try:
        body = _box(key).decrypt(bytes(data))
    except (nacl.exceptions.CryptoError, TypeError, ValueError):
        raise SessionStateError(f"the saved {kind} does not open with this key, or is "
                                "damaged") from None
    doc = orjson.loads(body)
    if doc.get("v") != PICKLE_VERSION or doc.get("kind") != kind:
        raise SessionStateError(f"this is not a saved {kind} of version {PICKLE_VERSION} "
                                f"(it is a {doc.get('kind')!r} of version {doc.get('v')!r})")
    return doc


def _unpickled(kind: str, build: Any) -> Any:
    """`build()`, with what a damaged but authentic pickle raises turned into
    SessionStateError (it was ours, so this is corruption, not an attack)."""
    try:
        return build()
    except (vodozemac.PickleException, KeyError, TypeError, ValueError) as exc:
        raise SessionStateError(f"the saved {kind} is damaged: {exc}") from None


# -- Device and Bundle ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bundle:
    """A peer's verified prekey bundle; keys are vodozemac's unpadded base64."""

    peer: str
    curve25519: str
    ed25519: str
    one_time_keys: tuple[tuple[str, str], ...]  # (key id, key), sorted by id
    fallback_key: tuple[str, str]  # (key id, key)
    ts: float
    exp: float

    @staticmethod
    def encode(payload: bytes, signature: bytes) -> bytes:
        """What travels: the 64-byte identity signature, then the payload it signs."""
        if len(signature) != identity.SIGNATURE_BYTES:
            raise ValueError(f"an Ed25519 signature is {identity.SIGNATURE_BYTES} bytes")
        return bytes(signature) + bytes(payload)

    @classmethod
    def decode(cls, raw: bytes, expected_peer: str, now: float) -> "Bundle":
        """The bundle `expected_peer` signed, good at `now`; BundleError otherwise."""
        if not isinstance(raw, (bytes, bytearray)) or len(raw) > MAX_BUNDLE_BYTES:
            raise BundleError(f"a key bundle is at most {MAX_BUNDLE_BYTES} bytes")
        signature, payload = bytes(raw[:identity.SIGNATURE_BYTES]), \
            bytes(raw[identity.SIGNATURE_BYTES:])
        try:
            public = identity.public_key_from_peer_id(expected_peer)
        except identity.IdentityError as exc:
            raise BundleError(str(exc)) from None
        # The signature before anything else: nothing in the payload is trusted first.
        if not identity.verify(public, PREKEY_DOMAIN, payload, signature):
            raise BundleError(f"this key bundle is not signed by {expected_peer}: it was "
                              "altered, truncated, or made by another peer")
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise BundleError("the key bundle is not JSON") from None
        bundle = _bundle_from_doc(doc)
        if bundle.peer != expected_peer:
            raise BundleError(f"this key bundle is {bundle.peer}'s, not {expected_peer}'s")
        try:
            vodozemac.Ed25519PublicKey.from_base64(bundle.ed25519).verify_signature(
                _olm_claim(bundle.peer, bundle.curve25519),
                vodozemac.Ed25519Signature.from_base64(doc["olm_sig"]))
        except (vodozemac.KeyException, vodozemac.SignatureException):
            raise BundleError("the key bundle's Olm keys do not confirm they belong to "
                              f"{expected_peer}") from None
        problem = node_invites.time_problem(bundle.ts, bundle.exp, now, "key bundle")
        if problem:
            raise BundleError(problem)
        return bundle


def _olm_claim(peer: str, curve25519: str) -> bytes:
    return OLM_SELF_DOMAIN + f"{peer} {curve25519}".encode()


def _curve_key(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) != 43:
        raise BundleError(f"the key bundle's {what} is not a Curve25519 key")
    try:
        vodozemac.Curve25519PublicKey.from_base64(value)
    except vodozemac.KeyException:
        raise BundleError(f"the key bundle's {what} is not a Curve25519 key") from None
    return value


def _key_pair(item: object, what: str) -> tuple[str, str]:
    if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str) \
            or not _KEY_ID.fullmatch(item[0]):
        raise BundleError(f"the key bundle's {what} is not a [key id, key] pair")
    return item[0], _curve_key(item[1], what)


def _bundle_from_doc(doc: object) -> Bundle:
    if not isinstance(doc, dict):
        raise BundleError("the key bundle is not an object")
    if doc.get("v") != BUNDLE_VERSION or isinstance(doc.get("v"), bool):
        raise BundleError(f"unsupported key bundle version {doc.get('v')!r}; this p2pm "
                          f"reads version {BUNDLE_VERSION}")
    if set(doc) != _BUNDLE_FIELDS:
        raise BundleError("the key bundle has missing or unknown fields: "
                          + ", ".join(sorted(set(doc) ^ _BUNDLE_FIELDS)))
    ed, sig, otks = doc["ed25519"], doc["olm_sig"], doc["one_time_keys"]
    if not isinstance(doc["peer"], str):
        raise BundleError("the key bundle names no peer")
    if not isinstance(ed, str) or len(ed) != 43 or not isinstance(sig, str) \
            or len(sig) != 86:
        raise BundleError("the key bundle's Ed25519 key or signature is malformed")
    if not isinstance(otks, list) or len(otks) > MAX_BUNDLE_ONE_TIME_KEYS:
        raise BundleError(f"a key bundle has at most {MAX_BUNDLE_ONE_TIME_KEYS} "
                          "one-time keys")
    pairs = tuple(sorted(_key_pair(item, "one-time key") for item in otks))
    if len({key_id for key_id, _ in pairs}) != len(pairs):
        raise BundleError("the key bundle repeats a one-time key id")
    ts, exp = doc["ts"], doc["exp"]
    if not node_invites.valid_window(ts, exp):
        longest = node_invites.format_duration(node_invites.MAX_TTL_S)
        raise BundleError("the key bundle's time or expiry is not valid (it must expire "
                          f"after it was made, within {longest})")
    return Bundle(doc["peer"], _curve_key(doc["curve25519"], "identity key"), ed, pairs,
                  _key_pair(doc["fallback_key"], "fallback key"), float(ts), float(exp))


class Device:
    """This node's Olm account. Its one-time keys are never marked as published:
    every bundle lists the whole current set, so vodozemac's "unpublished" keys are
    exactly the ones not used yet, which is what a bundle should offer."""

    __slots__ = ("account",)

    def __init__(self, account: vodozemac.Account) -> None:
        self.account = account

    @classmethod
    def new(cls) -> "Device":
        device = cls(vodozemac.Account())
        device.account.generate_one_time_keys(ONE_TIME_KEYS)
        device.account.generate_fallback_key()
        return device

    @property
    def one_time_key_count(self) -> int:
        return len(self.account.one_time_keys)

    def replenish(self) -> bool:
        """Top the one-time keys up to ONE_TIME_KEYS once fewer than half are left,
        and turn the fallback key over then (contacts may have used it meanwhile;
        vodozemac still accepts the previous one, so a contact holding our last bundle
        gets through). True when the bundle changed and should be published again."""
        count = self.one_time_key_count
        if count >= ONE_TIME_KEYS // 2:
            return False
        self.account.generate_one_time_keys(ONE_TIME_KEYS - count)
        self.account.generate_fallback_key()
        return True

    def bundle(self, peer_id: str, now: float, ttl_s: float = DEFAULT_BUNDLE_TTL_S) -> bytes:
        """The payload of our bundle made at `now`, living `ttl_s`, for the keystore
        to sign in PREKEY_DOMAIN (then `Bundle.encode`)."""
        identity.public_key_from_peer_id(peer_id)  # ours must be an Ed25519 peer ID
        if not node_invites.valid_window(now, now + ttl_s):
            raise ValueError(f"a key bundle lives up to "
                             f"{node_invites.format_duration(node_invites.MAX_TTL_S)}")
        curve = self.account.curve25519_key.to_base64()
        fallback = [[key_id, key.to_base64()]
                    for key_id, key in self.account.fallback_key.items()]
        return orjson.dumps({
            "v": BUNDLE_VERSION, "peer": peer_id, "curve25519": curve,
            "ed25519": self.account.ed25519_key.to_base64(),
            "olm_sig": self.account.sign(_olm_claim(peer_id, curve)).to_base64(),
            "one_time_keys": sorted([key_id, key.to_base64()]
                                    for key_id, key in self.account.one_time_keys.items()),
            "fallback_key": fallback[0], "ts": now, "exp": now + ttl_s,
        }, option=orjson.OPT_SORT_KEYS)

    def pickle(self, key: bytes) -> bytes:
        return _seal("device", {"account": self.account.pickle(_inner(key))}, key)

    @classmethod
    def unpickle(cls, data: bytes, key: bytes) -> "Device":
        doc = _open("device", data, key)
        return _unpickled("device", lambda: cls(
            vodozemac.Account.from_pickle(doc["account"], _inner(key))))


# -- SenderKey -----------------------------------------------------------------------


class Encrypted(NamedTuple):
    session_id: str
    index: int
    ciphertext: bytes


class SenderKey:
    """Our outbound Megolm session in one room, and when it must be replaced.

    The caller checks `needs_rotation(now)` before each message; when true it makes a
    `SenderKey.new(now)` and shares it with the current members before using it."""

    __slots__ = ("_group", "created_at", "_retired")

    def __init__(self, group: vodozemac.GroupSession, created_at: float,
                 retired: bool = False) -> None:
        self._group = group
        self.created_at = created_at
        self._retired = retired

    @classmethod
    def new(cls, now: float) -> "SenderKey":
        return cls(vodozemac.GroupSession(), now)

    @property
    def session_id(self) -> str:
        return self._group.session_id

    @property
    def message_index(self) -> int:
        """The index the next message gets (the count sent so far)."""
        return self._group.message_index

    def needs_rotation(self, now: float) -> bool:
        return (self._retired or self._group.message_index >= ROTATE_AFTER_MESSAGES
                or now - self.created_at >= ROTATE_AFTER_S)

    @property
    def retired(self) -> bool:
        return self._retired

    def force_rotation(self) -> None:
        """Retire this session (a member was removed or left): it encrypts nothing
        more, since whoever left holds its key."""
        self._retired = True

    def encrypt(self, plaintext: bytes) -> Encrypted:
        if self._retired:
            raise SessionStateError(f"sender key {self.session_id} was retired (a member "
                                    "left); make a new one and share it first")
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValueError(f"a message is at most {MAX_PLAINTEXT} bytes")
        index = self._group.message_index
        message = self._group.encrypt(bytes(plaintext))
        return Encrypted(self.session_id, index, message.to_bytes())

    def share(self) -> bytes:
        """The session key from the next message on, for a member (over pairwise
        Olm): they can read what we send from now, nothing sent before."""
        return self._group.session_key.to_base64().encode("ascii")

    def pickle(self, key: bytes) -> bytes:
        return _seal("sender key", {"group": self._group.pickle(_inner(key)),
                                    "created_at": self.created_at,
                                    "retired": self._retired}, key)

    @classmethod
    def unpickle(cls, data: bytes, key: bytes) -> "SenderKey":
        doc = _open("sender key", data, key)
        return _unpickled("sender key", lambda: cls(
            vodozemac.GroupSession.from_pickle(doc["group"], _inner(key)),
            float(doc["created_at"]), bool(doc["retired"])))


# -- RoomKeys ------------------------------------------------------------------------


class Decrypted(NamedTuple):
    plaintext: bytes
    index: int


class _Held:
    """One inbound session: kept at `floor`, the lowest index not yet received.

    `start` is where the key we were given began; `received` the indices above the
    floor already decrypted (at most MAX_GAP); `lost` the most recent indices given
    up after a gap (at most MAX_GAP), so a late one is told apart from a replay."""

    __slots__ = ("session", "start", "floor", "received", "lost")

    def __init__(self, session: vodozemac.InboundGroupSession, start: int, floor: int,
                 received: set[int], lost: set[int]) -> None:
        self.session, self.start, self.floor = session, start, floor
        self.received, self.lost = received, lost

    def check_new(self, index: int, where: str) -> None:
        if index < self.start:
            raise DecryptError(f"message {index} of {where} was sent before we were "
                               f"given its key (from message {self.start})")
        if index in self.lost:
            raise DecryptError(f"message {index} of {where} came after more than "
                               f"{MAX_GAP} later ones; it was given up and can no longer "
                               "be decrypted")
        if index < self.floor or index in self.received:
            raise ReplayError(f"message {index} of {where} was already decrypted")

    def mark(self, index: int) -> None:
        """Record `index` as decrypted and move the session past all it can drop."""
        self.received.add(index)
        floor = self._advance(self.floor)
        top = max(self.received, default=floor - 1)
        if top - floor > MAX_GAP:  # the gap at `floor` is given up
            new_floor = top - MAX_GAP
            given_up = []
            for i in range(new_floor - 1, floor - 1, -1):  # the nearest first
                if i not in self.received:
                    given_up.append(i)
                    if len(given_up) == MAX_GAP:
                        break
            self.lost = set(sorted(self.lost | set(given_up))[-MAX_GAP:])
            self.received = {i for i in self.received if i >= new_floor}
            floor = self._advance(new_floor)
        if floor != self.floor:
            # Re-import at the new floor: the ratchet values before it are gone from
            # our state, which is what makes old recorded messages unreadable.
            exported = self.session.export_at(floor)
            self.session = vodozemac.InboundGroupSession.import_session(exported)
            self.floor = floor

    def _advance(self, floor: int) -> int:
        while floor in self.received:
            self.received.discard(floor)
            floor += 1
        return floor

    def doc(self, inner: bytes) -> dict[str, Any]:
        return {"session": self.session.pickle(inner), "start": self.start,
                "floor": self.floor, "received": sorted(self.received),
                "lost": sorted(self.lost)}

    @classmethod
    def from_doc(cls, doc: dict[str, Any], inner: bytes) -> "_Held":
        return cls(vodozemac.InboundGroupSession.from_pickle(doc["session"], inner),
                   int(doc["start"]), int(doc["floor"]), set(map(int, doc["received"])),
                   set(map(int, doc["lost"])))


def _parse_room_key(key: bytes) -> vodozemac.InboundGroupSession:
    """A session from a shared key (`SenderKey.share`) or an export (`export`)."""
    if not isinstance(key, (bytes, bytearray)) or len(key) > MAX_ROOM_KEY_BYTES:
        raise KeyRefused(f"a room key is at most {MAX_ROOM_KEY_BYTES} bytes")
    try:
        text = bytes(key).decode("ascii")
    except UnicodeDecodeError:
        raise KeyRefused("a room key is base64 text") from None
    try:
        return vodozemac.InboundGroupSession(vodozemac.SessionKey(text))
    except vodozemac.SessionKeyDecodeException:
        pass
    try:
        return vodozemac.InboundGroupSession.import_session(
            vodozemac.ExportedSessionKey(text))
    except vodozemac.SessionKeyDecodeException as exc:
        raise KeyRefused(f"not a room key: {exc}") from None


class RoomKeys:
    """The inbound Megolm sessions we hold for one room, by (sender, session id)."""

    __slots__ = ("_senders",)

    def __init__(self) -> None:
        # Per sender, sessions in the order they were added: the first is the oldest.
        self._senders: dict[str, dict[str, _Held]] = {}

    def add(self, sender: str, key: bytes) -> str:
        """Hold the session in `key` for `sender`; its session id. KeyRefused for a
        malformed key or a session already held (whatever index the copy starts at:
        an earlier one would undo forward secrecy, a later one adds nothing); a
        PeerIdError (a ValueError) when `sender` is not a peer ID."""
        identity.peer_id_bytes(sender)
        session = _parse_room_key(key)
        sessions = self._senders.setdefault(sender, {})
        held = sessions.get(session.session_id)
        if held is not None:
            raise KeyRefused(f"we already hold session {session.session_id} of {sender} "
                             f"(from message {held.floor}); a second copy (from message "
                             f"{session.first_known_index}) is not taken")
        start = session.first_known_index
        sessions[session.session_id] = _Held(session, start, start, set(), set())
        while len(sessions) > MAX_SESSIONS_PER_SENDER:
            del sessions[next(iter(sessions))]
        return session.session_id

    def has(self, sender: str, session_id: str) -> bool:
        return session_id in self._senders.get(sender, {})

    def _held(self, sender: str, session_id: str) -> _Held:
        held = self._senders.get(sender, {}).get(session_id)
        if held is None:
            raise UnknownSessionError(f"we hold no session {session_id} of {sender} in "
                                      "this room (never shared with us, rotated away, "
                                      "or the sender left)")
        return held

    def decrypt(self, sender: str, session_id: str, ciphertext: bytes) -> Decrypted:
        """The plaintext and index of a message of `sender`'s session. Each index
        decrypts once (ReplayError after); DecryptError for what cannot be decrypted,
        UnknownSessionError for a session we do not hold."""
        held = self._held(sender, session_id)
        where = f"session {session_id} of {sender}"
        if not isinstance(ciphertext, (bytes, bytearray)) or \
                len(ciphertext) > MAX_CIPHERTEXT:
            raise DecryptError(f"a message of {where} is missing or larger than "
                               f"{MAX_CIPHERTEXT} bytes")
        try:
            message = vodozemac.MegolmMessage.from_bytes(bytes(ciphertext))
        except vodozemac.DecodeException as exc:
            raise DecryptError(f"a message of {where} is malformed: {exc}") from None
        index = message.message_index()
        held.check_new(index, where)
        try:
            result = held.session.decrypt(message)
        except vodozemac.MegolmDecryptionException as exc:
            raise DecryptError(f"message {index} of {where} does not decrypt (tampered "
                               f"with, or not of this session): {exc}") from None
        # Only a message the sender really signed moves the session: a forged index
        # must not make us give anything up.
        held.mark(index)
        return Decrypted(bytes(result.plaintext), index)

    def export(self, sender: str, session_id: str) -> bytes:
        """The session as we hold it, from the lowest index we can still decrypt
        (for `add` on another of our devices or a backup): nothing we have moved
        past can be read with it."""
        held = self._held(sender, session_id)
        exported = held.session.export_at(held.floor)
        return exported.to_base64().encode("ascii")

    def close(self, sender: str) -> int:
        """Drop every session of `sender` (removed from the room, or left); how many."""
        return len(self._senders.pop(sender, {}))

    def close_session(self, sender: str, session_id: str) -> bool:
        """Drop one session of `sender` (someone who has left holds it); whether we
        held it."""
        return self._senders.get(sender, {}).pop(session_id, None) is not None

    def close_all_except(self, members: Iterable[str]) -> tuple[str, ...]:
        """Drop the sessions of every sender not in `members`; the senders dropped."""
        keep = set(members)
        gone = tuple(sorted(s for s in self._senders if s not in keep))
        for sender in gone:
            del self._senders[sender]
        return gone

    def pickle(self, key: bytes) -> bytes:
        inner = _inner(key)
        return _seal("room keys", {"senders": {
            sender: [held.doc(inner) for held in sessions.values()]
            for sender, sessions in self._senders.items()}}, key)

    @classmethod
    def unpickle(cls, data: bytes, key: bytes) -> "RoomKeys":
        doc = _open("room keys", data, key)
        inner = _inner(key)

        def build() -> RoomKeys:
            keys = cls()
            for sender, held_docs in doc["senders"].items():
                held = [_Held.from_doc(d, inner) for d in held_docs]
                keys._senders[sender] = {h.session.session_id: h for h in held}
            return keys

        return _unpickled("room keys", build)
