"""DHT records and providers: strict validation and bounded, expiring stores.

Only namespaces with a registered validator are stored; everything else (plain keys,
unknown namespaces) is refused, unlike py-libp2p's permissive default. Two namespaces:

* `/pk/<peer id>`: the value is a libp2p PublicKey protobuf whose multihash is the peer
  ID in the key (self-certifying, nothing to sign). The peer ID is the raw multihash
  (spec) or its hex (py-libp2p's form).
* `/p2pm/<label>/<owner peer id>`: a `SignedValue` envelope (owner, seq, expiry, value,
  signature) signed by the owner's Ed25519 key in the "p2pm-record:" domain over the
  record's key and every envelope field. The owner in the key must be the signer, so
  nobody can write into another peer's records; among valid versions the highest
  `seq` wins (ties: the later expiry, then the larger bytes, so every node agrees).

The signature check is injected (`VerifyFn`, the shape of common.identity.verify) so this
module never touches keys. Provider records are deduplicated per (key, provider),
expire after 48 h and are republished every 22 h (spec values); the stores only keep
state and say what is due, the core's caller drives the clock.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from p2pm.common import protobuf as pb
from p2pm.common.protobuf import DecodeError, field, message

from .messages import Peer

VerifyFn = Callable[[bytes, str, bytes, bytes], bool]

RECORD_DOMAIN = "p2pm-record:"
MAX_RECORD_BYTES = 10 * 1024
MAX_RECORD_TTL = 7 * 24 * 3600.0  # a signed record cannot claim to live longer than this
PROVIDER_TTL = 48 * 3600.0
PROVIDER_REPUBLISH = 22 * 3600.0
MAX_PROVIDERS_PER_KEY = 64

_ED25519_KEY_TYPE = 1
_IDENTITY_MULTIHASH = 0x00
_SHA256_MULTIHASH = 0x12
_MAX_INLINE_KEY = 42


class RecordError(ValueError):
    """A record that must not be stored or returned; the message says why."""


# -- libp2p keys and peer IDs ------------------------------------------------------------

@message
@dataclasses.dataclass(frozen=True, slots=True)
class PublicKey:
    """libp2p crypto.proto PublicKey (proto2, both fields required)."""
    type: int | None = field(1, "enum", optional=True)
    data: bytes | None = field(2, "bytes", optional=True)


def peer_id_of_public_key(key_proto: bytes) -> bytes:
    """The peer ID multihash of a PublicKey protobuf (inlined when short, as libp2p does)."""
    if len(key_proto) <= _MAX_INLINE_KEY:
        return bytes([_IDENTITY_MULTIHASH, len(key_proto)]) + key_proto
    return bytes([_SHA256_MULTIHASH, 32]) + hashlib.sha256(key_proto).digest()


def ed25519_key_of_peer_id(peer_id: bytes) -> bytes:
    """The raw 32-byte Ed25519 key inlined in a peer ID; RecordError if there is none."""
    if len(peer_id) < 2 or peer_id[0] != _IDENTITY_MULTIHASH or peer_id[1] != len(peer_id) - 2:
        raise RecordError("owner is not an identity-multihash peer ID")
    try:
        key = pb.decode(PublicKey, peer_id[2:])
    except DecodeError as exc:
        raise RecordError(f"owner peer ID holds no public key: {exc}") from None
    if key.type != _ED25519_KEY_TYPE or key.data is None or len(key.data) != 32:
        raise RecordError("owner peer ID does not hold an Ed25519 key")
    return key.data


# -- validators ---------------------------------------------------------------------------

class RecordValidator(Protocol):
    namespace: bytes  # the key prefix it answers for, e.g. b"/pk/"

    def validate(self, key: bytes, value: bytes, now: float) -> None:
        """Raise RecordError unless `value` may be stored under `key` at time `now`."""

    def select(self, key: bytes, values: list[bytes]) -> int:
        """The index of the best of several valid values (stable: same input, same pick)."""


_HEX = frozenset(b"0123456789abcdef")


def pk_key_peer_id(key: bytes) -> bytes:
    """The peer ID multihash a /pk/ key names. The spec (and go-libp2p) puts the raw
    multihash after "/pk/"; py-libp2p puts its lowercase hex (its keys are text). A raw
    peer ID starts with byte 0x00 or 0x12, never a hex digit, so both forms are read."""
    rest = key[len(PublicKeyValidator.namespace):]
    if not rest:
        raise RecordError("/pk/ key without a peer ID")
    if len(rest) % 2 == 0 and set(rest) <= _HEX:
        return bytes.fromhex(rest.decode("ascii"))
    return rest


class PublicKeyValidator:
    namespace = b"/pk/"

    def validate(self, key: bytes, value: bytes, now: float) -> None:
        peer_id = pk_key_peer_id(key)
        try:
            decoded = pb.decode(PublicKey, value)
        except DecodeError as exc:
            raise RecordError(f"/pk/ value is not a public key: {exc}") from None
        if decoded.type is None or decoded.data is None:
            raise RecordError("/pk/ value lacks the key type or data")
        if pb.encode(decoded) != value:
            raise RecordError("/pk/ value is not canonically encoded")
        if peer_id_of_public_key(value) != peer_id:
            raise RecordError("/pk/ value is not the key of the peer ID in the record key")

    def select(self, key: bytes, values: list[bytes]) -> int:
        return 0  # every valid value is the same key


@message
@dataclasses.dataclass(frozen=True, slots=True)
class SignedValue:
    """The envelope of a /p2pm/ record value."""
    owner: bytes = field(1, "bytes")
    seq: int = field(2, "uint64")
    expires: int = field(3, "uint64")  # unix seconds
    value: bytes = field(4, "bytes")
    signature: bytes = field(5, "bytes")


@message
@dataclasses.dataclass(frozen=True, slots=True)
class _SignedPart:
    """What the signature covers: the record key and every envelope field but itself."""
    key: bytes = field(1, "bytes")
    owner: bytes = field(2, "bytes")
    seq: int = field(3, "uint64")
    expires: int = field(4, "uint64")
    value: bytes = field(5, "bytes")


def signed_bytes(key: bytes, owner: bytes, seq: int, expires: int, value: bytes) -> bytes:
    """The bytes an owner signs (in the "p2pm-record:" domain) to publish a record."""
    return pb.encode(_SignedPart(key, owner, seq, expires, value))


def p2pm_record_key(label: str, owner: bytes) -> bytes:
    if not _valid_label(label.encode("ascii", "replace")):
        raise ValueError(f"bad record label {label!r}: use [a-z0-9-], 1-32 chars")
    return SignedRecordValidator.namespace + label.encode("ascii") + b"/" + owner


def _valid_label(label: bytes) -> bool:
    return 1 <= len(label) <= 32 and all(c in b"abcdefghijklmnopqrstuvwxyz0123456789-"
                                         for c in label)


class SignedRecordValidator:
    namespace = b"/p2pm/"

    def __init__(self, verify: VerifyFn, max_ttl: float = MAX_RECORD_TTL) -> None:
        self.verify = verify
        self.max_ttl = max_ttl

    @classmethod
    def owner_of(cls, key: bytes) -> bytes:
        """The owner's peer ID bytes in /p2pm/<label>/<owner>. The owner is binary and
        may itself hold b"/": it is everything after the label."""
        label, slash, owner = key[len(cls.namespace):].partition(b"/")
        if not key.startswith(cls.namespace) or not slash or not _valid_label(label) \
                or not owner:
            raise RecordError("a /p2pm/ key is /p2pm/<label>/<owner peer id>")
        return owner

    def parse(self, key: bytes, value: bytes) -> SignedValue:
        owner = self.owner_of(key)
        try:
            envelope = pb.decode(SignedValue, value)
        except DecodeError as exc:
            raise RecordError(f"/p2pm/ value is not a signed envelope: {exc}") from None
        if envelope.owner != owner:
            raise RecordError("the envelope's owner is not the peer ID in the key")
        return envelope

    def validate(self, key: bytes, value: bytes, now: float) -> None:
        envelope = self.parse(key, value)
        if envelope.expires <= now:
            raise RecordError("record expired")
        if envelope.expires > now + self.max_ttl:
            raise RecordError(f"record expiry more than {self.max_ttl:.0f}s ahead")
        public_key = ed25519_key_of_peer_id(envelope.owner)
        data = signed_bytes(key, envelope.owner, envelope.seq, envelope.expires, envelope.value)
        if not self.verify(public_key, RECORD_DOMAIN, data, envelope.signature):
            raise RecordError("bad signature")

    def select(self, key: bytes, values: list[bytes]) -> int:
        def rank(i: int) -> tuple[int, int, bytes]:
            env = self.parse(key, values[i])
            return env.seq, env.expires, values[i]
        return max(range(len(values)), key=rank)


class Validators:
    """The registry: a record is judged by the validator of its namespace, or refused."""

    def __init__(self, *validators: RecordValidator, max_bytes: int = MAX_RECORD_BYTES) -> None:
        self._by_ns = {v.namespace: v for v in validators}
        self.max_bytes = max_bytes

    def validator_for(self, key: bytes) -> RecordValidator:
        if key.startswith(b"/"):
            second = key.find(b"/", 1)
            if second > 0:
                found = self._by_ns.get(key[:second + 1])
                if found is not None:
                    return found
        raise RecordError(f"no validator for key namespace {key[:16]!r}")

    def validate(self, key: bytes, value: bytes, now: float) -> None:
        if len(key) + len(value) > self.max_bytes:
            raise RecordError(f"record of {len(key) + len(value)} bytes exceeds {self.max_bytes}")
        self.validator_for(key).validate(key, value, now)

    def select(self, key: bytes, values: list[bytes]) -> int:
        return self.validator_for(key).select(key, values)

    def expiry(self, key: bytes, value: bytes, now: float, default_ttl: float) -> float:
        """When a stored value stops being served: its own expiry if it carries one."""
        validator = self.validator_for(key)
        if isinstance(validator, SignedRecordValidator):
            return float(validator.parse(key, value).expires)
        return now + default_ttl


# -- stores -------------------------------------------------------------------------------

@dataclasses.dataclass(slots=True)
class StoredRecord:
    value: bytes
    received: float
    expires: float


class RecordStore:
    """Validated values by key, bounded; a put keeps the better of old and new."""

    def __init__(self, validators: Validators, max_records: int = 100_000,
                 default_ttl: float = 36 * 3600.0) -> None:
        self.validators = validators
        self.max_records = max_records
        self.default_ttl = default_ttl
        self._records: OrderedDict[bytes, StoredRecord] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def put(self, key: bytes, value: bytes, now: float) -> bool:
        """Store `value` if valid and better than what is held; RecordError if invalid.

        Returns False (and changes nothing) when the held value is the better one.
        """
        self.validators.validate(key, value, now)
        held = self.get(key, now)
        if held is not None and held != value:
            if self.validators.select(key, [held, value]) == 0:
                return False
        if held is None and key not in self._records and len(self._records) >= self.max_records:
            self.expire(now)
            if len(self._records) >= self.max_records:
                raise RecordError("record store full")
        expires = self.validators.expiry(key, value, now, self.default_ttl)
        self._records[key] = StoredRecord(value, now, expires)
        return True

    def get(self, key: bytes, now: float) -> bytes | None:
        stored = self._records.get(key)
        if stored is None:
            return None
        if stored.expires <= now:
            del self._records[key]
            return None
        return stored.value

    def expire(self, now: float) -> int:
        dead = [k for k, r in self._records.items() if r.expires <= now]
        for key in dead:
            del self._records[key]
        return len(dead)


class ProviderStore:
    """Who provides what: one entry per (key, provider), refreshed by re-announcement."""

    def __init__(self, ttl: float = PROVIDER_TTL, max_keys: int = 100_000,
                 max_per_key: int = MAX_PROVIDERS_PER_KEY) -> None:
        self.ttl = ttl
        self.max_keys = max_keys
        self.max_per_key = max_per_key
        self._by_key: dict[bytes, OrderedDict[bytes, tuple[Peer, float]]] = {}

    def add(self, key: bytes, provider: Peer, now: float) -> bool:
        """Record (or refresh) `provider` for `key`; False if refused for space."""
        entries = self._by_key.get(key)
        if entries is None:
            if len(self._by_key) >= self.max_keys:
                self.expire(now)
                if len(self._by_key) >= self.max_keys:
                    return False
            entries = self._by_key[key] = OrderedDict()
        if provider.id not in entries and len(entries) >= self.max_per_key:
            self._expire_key(key, now)
            if len(entries) >= self.max_per_key:
                return False
        entries[provider.id] = (provider, now + self.ttl)
        entries.move_to_end(provider.id)
        return True

    def get(self, key: bytes, now: float) -> list[Peer]:
        self._expire_key(key, now)
        entries = self._by_key.get(key)
        return [peer for peer, _ in entries.values()] if entries else []

    def _expire_key(self, key: bytes, now: float) -> None:
        entries = self._by_key.get(key)
        if entries is None:
            return
        for pid in [p for p, (_, exp) in entries.items() if exp <= now]:
            del entries[pid]
        if not entries:
            del self._by_key[key]

    def expire(self, now: float) -> None:
        for key in list(self._by_key):
            self._expire_key(key, now)

    def key_count(self) -> int:
        return len(self._by_key)
