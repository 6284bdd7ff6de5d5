"""The node identity: an Ed25519 key, its libp2p peer ID, and the encrypted file it lives in.

Pure functions, no event loop: the keystore actor uses them to hold and use the key, the
CLI to create the file and derive the unlock key that `p2pm up` hands to the keystore,
and every other actor to verify signatures (`verify`) and to recover a peer's public key
from its peer ID (`public_key_from_peer_id`).

Peer IDs follow the libp2p spec: the public key is encoded as the protobuf
`PublicKey{Type=Ed25519, Data=<32 bytes>}` (36 bytes); encodings of at most 42 bytes are
wrapped in an *identity* multihash instead of being hashed, and the result is written in
base58btc, which gives the familiar "12D3KooW..." strings. Since the key is inside the
ID, a peer ID alone is enough to check a signature.

The identity file (JSON, version 1) holds the 32-byte seed encrypted with
XSalsa20-Poly1305 (SecretBox) under a key derived from the passphrase by Argon2id. An
unprotected identity (`--no-passphrase`) uses the empty passphrase, so there is a single
format. The peer ID is kept in clear for display and checked against the key on open. A
`check` digest over the other fields tells accidental corruption apart from a wrong
passphrase; it is not a security measure (the ciphertext is authenticated on its own).

Argon2id cost: opslimit=3, memlimit=128 MiB. Measured on the 2-core development machine:
about 0.19 s to derive (2/64 MiB, libsodium's "interactive": 0.07 s; 3/256 MiB,
"moderate": 0.43-0.72 s). Unlocking stays well under a second while each guess costs an
attacker 128 MiB of memory. The parameters are stored in the file, so they can be raised
later without breaking existing identities.

Signatures are domain-separated (see SIGNING_DOMAINS): the keystore signs only for
domains on that list, and `signed_bytes` gives the exact bytes signed for each, so a
signature made for one protocol can never be replayed in another. Likewise the keystore
hands out keys only through `derive_subkey`, one per purpose on SUBKEY_PURPOSES (the
storage actor's at-rest key), never the seed itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.pwhash.argon2id as argon2id
import nacl.secret
import nacl.signing
import nacl.utils

from .protobuf import DecodeError, decode_uvarint, encode_uvarint

# The hex unlock key (`derive_unlock_key(...).hex()`) that `p2pm up` puts into the
# keystore's environment under supervisord, so a restarted keystore comes back unlocked
# while the passphrase itself is never written anywhere.
UNLOCK_KEY_ENV = "P2PM_KEYSTORE_KEY"

FORMAT_VERSION = 1
FILE_KIND = "p2pm-identity"
OPSLIMIT = 3
MEMLIMIT = 128 * 1024 * 1024
# A file asking for more than this is refused rather than trusted: a crafted identity
# file must not make the keystore allocate gigabytes or spin for minutes.
MAX_OPSLIMIT = 10
MAX_MEMLIMIT = 1024 * 1024 * 1024
MAX_FILE_BYTES = 64 * 1024

SEED_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
X25519_BYTES = 32

# libp2p crypto.proto: KeyType.Ed25519 = 1; PublicKey{1: Type (varint), 2: Data (bytes)}.
_ED25519_PROTO_PREFIX = bytes([0x08, 0x01, 0x12, PUBLIC_KEY_BYTES])
_IDENTITY_MULTIHASH = 0x00
_MAX_INLINE_KEY = 42  # libp2p: keys encoding to at most 42 bytes are not hashed

# Signing domains. The first group are libp2p's own (noise spec, pubsub spec, RFC 0002
# signed envelopes); the second are p2pm's. A "prefix" domain signs `domain + data`; an
# "envelope" domain signs the RFC 0002 layout, which also binds a payload type.
ENVELOPE_DOMAINS = frozenset({"libp2p-peer-record"})
PREFIX_DOMAINS = frozenset({
    "noise-libp2p-static-key:",
    "libp2p-pubsub:",
    "p2pm-record:",
    "p2pm-message:",
    "p2pm-invite:",
    "p2pm-room-invite:",
    "p2pm-receipt:",
    "p2pm-prekeys:",
    "p2pm-roster:",
})
SIGNING_DOMAINS = ENVELOPE_DOMAINS | PREFIX_DOMAINS

# Purposes the keystore derives a subkey for (`derive_subkey`); each is versioned, so a
# later format gets a new key instead of reusing this one.
SUBKEY_PURPOSES = frozenset({"storage-at-rest-v1", "gossip-sessions-v1"})
SUBKEY_BYTES = 32
_SUBKEY_PERSON = b"p2pm-subkey"  # BLAKE2b personalisation: no other hash of the seed matches


class IdentityError(Exception):
    """The identity file is missing, unreadable, tampered with or of another version,
    or an identity value (peer ID, key) is malformed. The message says which."""


class PeerIdError(IdentityError, ValueError):
    """Text or bytes that are not a peer ID (a ValueError too, for parsers of peer
    input that catch that)."""


class WrongPassphrase(IdentityError):
    """The passphrase (or unlock key) does not open this identity."""


class SigningDomainError(ValueError):
    """A signing domain that is not on the allow-list, or parameters that do not fit it."""


# -- keys and peer IDs ---------------------------------------------------------------

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}


def _b58encode(data: bytes) -> str:
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    return "1" * zeros + "".join(reversed(out))


def _b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        digit = _B58_INDEX.get(c)
        if digit is None:
            raise ValueError(f"{c!r} is not a base58 character")
        n = n * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


def is_multihash(raw: bytes) -> bool:
    """Whether `raw` is <code varint><length varint><digest of that length>: the shape of
    peer IDs (and of DHT provider keys)."""
    try:
        _, pos = decode_uvarint(raw, 0)
        length, pos = decode_uvarint(raw, pos)
    except DecodeError:
        return False
    return 0 < length == len(raw) - pos


# Peer IDs as text are base58 multihashes: 46 characters for sha2-256 ("Qm..."), 52
# for an inlined Ed25519 key ("12D3KooW..."); anything outside this is not one.
PEER_ID_MIN_CHARS = 32
PEER_ID_MAX_CHARS = 128


def peer_id_bytes(peer_id: str) -> bytes:
    """The binary peer ID (its multihash) of a base58 peer ID, any key type. The one
    rule for a peer ID from outside: base58 that decodes to a well-formed multihash;
    PeerIdError if not."""
    if not isinstance(peer_id, str) or \
            not PEER_ID_MIN_CHARS <= len(peer_id) <= PEER_ID_MAX_CHARS:
        raise PeerIdError(f"not a peer ID: {peer_id!r}")
    try:
        raw = _b58decode(peer_id)
    except ValueError as exc:
        raise PeerIdError(f"not a peer ID ({exc}): {peer_id!r}") from None
    if not is_multihash(raw):
        raise PeerIdError(f"not a peer ID (not a multihash): {peer_id!r}")
    return raw


def peer_id_text(raw: bytes) -> str:
    """The base58 text of a binary peer ID; PeerIdError if `raw` is not a multihash."""
    if not is_multihash(bytes(raw)):
        raise PeerIdError(f"not a binary peer ID: {bytes(raw)[:8].hex()}...")
    return _b58encode(bytes(raw))


def public_key_proto(public_key: bytes) -> bytes:
    """The libp2p protobuf encoding of an Ed25519 public key (36 bytes)."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise IdentityError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, "
                            f"not {len(public_key)}")
    return _ED25519_PROTO_PREFIX + public_key


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer ID ("12D3KooW...") of an Ed25519 public key."""
    proto = public_key_proto(public_key)
    assert len(proto) <= _MAX_INLINE_KEY
    return _b58encode(bytes([_IDENTITY_MULTIHASH, len(proto)]) + proto)


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The raw Ed25519 public key inside a peer ID; IdentityError if it has none."""
    raw = peer_id_bytes(peer_id)
    if raw[0] != _IDENTITY_MULTIHASH:
        raise IdentityError(
            f"peer ID {peer_id!r} does not embed its public key (only Ed25519 peer IDs, "
            f"12D3KooW..., are supported)")
    proto = raw[2:]
    if raw[1] != len(proto) or not proto.startswith(_ED25519_PROTO_PREFIX) \
            or len(proto) != len(_ED25519_PROTO_PREFIX) + PUBLIC_KEY_BYTES:
        raise IdentityError(f"peer ID {peer_id!r} does not hold an Ed25519 public key")
    return proto[len(_ED25519_PROTO_PREFIX):]


def x25519_public(public_key: bytes) -> bytes:
    """The X25519 (Curve25519) public key matching an Ed25519 public key."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise IdentityError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes")
    try:
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public_key)
    except nacl.exceptions.CryptoError:
        raise IdentityError("not a valid Ed25519 public key") from None


def x25519_shared(signing_key: nacl.signing.SigningKey, their_public: bytes) -> bytes:
    """X25519 between our identity (as Curve25519) and their X25519 public key.

    ValueError for a key of the wrong length or a low-order key (all-zero result),
    which would give a shared secret an attacker knows.
    """
    if len(their_public) != X25519_BYTES:
        raise ValueError(f"an X25519 public key is {X25519_BYTES} bytes, not {len(their_public)}")
    ours = bytes(signing_key.to_curve25519_private_key())
    try:
        shared = nacl.bindings.crypto_scalarmult(ours, their_public)
    except nacl.exceptions.RuntimeError:
        shared = bytes(X25519_BYTES)  # libsodium refuses an all-zero result
    if shared == bytes(X25519_BYTES):
        raise ValueError("X25519 public key has low order (shared secret would be zero)")
    return shared


# A direct chat's secret is the only thing the keystore derives from X25519 (the raw
# shared secret never leaves it): blake2b keyed by the shared secret, personalised, over
# both peer IDs in a fixed order, so both sides (and every existing conversation id,
# which is derived from it) get the same value.
DIRECT_PERSON = b"p2pm-direct"
DIRECT_SECRET_BYTES = 32


def direct_secret(shared: bytes, a: str, b: str) -> bytes:
    """A direct chat's secret from the X25519 secret both sides compute and both peer
    IDs (in either order)."""
    first, second = sorted((a, b))
    return hashlib.blake2b(f"{first} {second}".encode(), key=shared,
                           digest_size=DIRECT_SECRET_BYTES, person=DIRECT_PERSON).digest()


def direct_chat_secret(signing_key: nacl.signing.SigningKey, peer_id: str) -> bytes:
    """Our direct chat's secret with `peer_id`: X25519 of our identity with the key
    inside their peer ID, then `direct_secret`. IdentityError for a peer ID without an
    Ed25519 key, ours, or a low-order key."""
    me = peer_id_from_public_key(bytes(signing_key.verify_key))
    if peer_id == me:
        raise IdentityError("a direct chat needs another peer, not this node")
    try:
        shared = x25519_shared(signing_key, x25519_public(public_key_from_peer_id(peer_id)))
    except (ValueError, nacl.exceptions.RuntimeError) as exc:
        raise IdentityError(f"no direct chat with {peer_id}: {exc}") from None
    return direct_secret(shared, me, peer_id)


# -- signing domains -----------------------------------------------------------------


def derive_subkey(signing_key: nacl.signing.SigningKey, purpose: str) -> bytes:
    """A 32-byte key for `purpose`, derived one-way from the identity's secret seed.

    BLAKE2b keyed with the seed over the purpose, personalised for p2pm: knowing a
    subkey gives neither the seed nor the subkey of another purpose, and the seed is
    only readable from the identity file with its passphrase. Raises SigningDomainError
    for a purpose not on SUBKEY_PURPOSES.
    """
    if purpose not in SUBKEY_PURPOSES:
        raise SigningDomainError(
            f"no subkey for purpose {purpose!r}; known: {', '.join(sorted(SUBKEY_PURPOSES))}")
    return hashlib.blake2b(purpose.encode(), key=bytes(signing_key), digest_size=SUBKEY_BYTES,
                           person=_SUBKEY_PERSON).digest()


def signed_bytes(domain: str, data: bytes, payload_type: bytes | None = None) -> bytes:
    """The exact bytes signed for `data` in `domain`.

    Prefix domains: `domain || data` (noise and pubsub specs). Envelope domains (RFC
    0002): `uvarint(len) || domain || uvarint(len) || payload_type || uvarint(len) ||
    data`, and `payload_type` is required. SigningDomainError otherwise.
    """
    if domain in PREFIX_DOMAINS:
        if payload_type is not None:
            raise SigningDomainError(f"signing domain {domain!r} takes no payload_type")
        return domain.encode() + data
    if domain in ENVELOPE_DOMAINS:
        if not payload_type:
            raise SigningDomainError(
                f"signing domain {domain!r} is a signed envelope and needs a payload_type")
        out = bytearray()
        for part in (domain.encode(), payload_type, data):
            out += encode_uvarint(len(part))
            out += part
        return bytes(out)
    raise SigningDomainError(
        f"signing domain {domain!r} is not allowed; allowed: {', '.join(sorted(SIGNING_DOMAINS))}")


def sign(signing_key: nacl.signing.SigningKey, domain: str, data: bytes,
         payload_type: bytes | None = None) -> bytes:
    """The 64-byte Ed25519 signature of `data` in `domain`."""
    return signing_key.sign(signed_bytes(domain, data, payload_type)).signature


def verify(public_key_raw: bytes, domain: str, data: bytes, signature: bytes,
           payload_type: bytes | None = None) -> bool:
    """Whether `signature` is the signature of `data` in `domain` by this key.

    False for a bad signature or a malformed key or signature (peer input);
    SigningDomainError for a domain not on the list (a caller's mistake).
    """
    message = signed_bytes(domain, data, payload_type)
    if len(public_key_raw) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        nacl.signing.VerifyKey(public_key_raw).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
        return False
    return True


# -- the identity file ---------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_digest(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "check"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def _derive(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return argon2id.kdf(nacl.secret.SecretBox.KEY_SIZE, passphrase.encode("utf-8"), salt,
                        opslimit=opslimit, memlimit=memlimit)


def create_identity(path: str | os.PathLike[str], passphrase: str | None, *,
                    seed: bytes | None = None) -> str:
    """Create a new identity file at `path`; return its peer ID.

    `passphrase` None or "" makes an unprotected identity (empty passphrase). `seed`
    (32 bytes) imports an existing key instead of generating one. Written atomically
    with mode 0600; IdentityError if a file already exists there.
    """
    path = Path(path)
    if seed is None:
        seed = nacl.utils.random(SEED_BYTES)
    if len(seed) != SEED_BYTES:
        raise IdentityError(f"an Ed25519 seed is {SEED_BYTES} bytes, not {len(seed)}")
    if path.exists():
        raise IdentityError(f"an identity already exists at {path}; refusing to overwrite it")
    if not path.parent.is_dir():
        raise IdentityError(f"cannot create identity {path}: folder {path.parent} does not exist")
    signing_key = nacl.signing.SigningKey(seed)
    peer_id = peer_id_from_public_key(bytes(signing_key.verify_key))
    salt = nacl.utils.random(argon2id.SALTBYTES)
    key = _derive(passphrase or "", salt, OPSLIMIT, MEMLIMIT)
    nonce = nacl.utils.random(nacl.secret.SecretBox.NONCE_SIZE)
    ciphertext = nacl.secret.SecretBox(key).encrypt(seed, nonce).ciphertext
    doc: dict[str, Any] = {
        "kind": FILE_KIND,
        "version": FORMAT_VERSION,
        "key_type": "ed25519",
        "peer_id": peer_id,
        "protected": bool(passphrase),
        "kdf": {"name": "argon2id", "opslimit": OPSLIMIT, "memlimit": MEMLIMIT,
                "salt": _b64(salt)},
        "cipher": {"name": "xsalsa20-poly1305", "nonce": _b64(nonce),
                   "ciphertext": _b64(ciphertext)},
    }
    doc["check"] = _check_digest(doc)
    _write_new(path, (json.dumps(doc, indent=2) + "\n").encode())
    return peer_id


def _write_new(path: Path, content: bytes) -> None:
    """Write `content` to a new file at `path`, atomically, never replacing one.

    A crash leaves either no identity or the whole one. The final step is a hard link,
    which fails if the name exists (a rename would silently replace a concurrent
    `p2pm init`'s identity); filesystems without hard links fall back to a rename.
    """
    folder = path.parent
    tmp = folder / f".{path.name}.{os.getpid()}.{nacl.utils.random(4).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise IdentityError(
                f"an identity already exists at {path}; refusing to overwrite it") from None
        except OSError:
            if path.exists():
                raise IdentityError(
                    f"an identity already exists at {path}; refusing to overwrite it"
                ) from None
            os.rename(tmp, path)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise IdentityError(f"cannot write identity {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


class _Sealed:
    """The validated content of an identity file (nothing decrypted yet)."""

    def __init__(self, path: Path, doc: dict[str, Any]) -> None:
        self.path = path
        self.peer_id: str = doc["peer_id"]
        self.protected: bool = doc["protected"]
        kdf, cipher = doc["kdf"], doc["cipher"]
        self.opslimit: int = kdf["opslimit"]
        self.memlimit: int = kdf["memlimit"]
        self.salt = _field_bytes(path, kdf, "salt", argon2id.SALTBYTES)
        self.nonce = _field_bytes(path, cipher, "nonce", nacl.secret.SecretBox.NONCE_SIZE)
        self.ciphertext = _field_bytes(path, cipher, "ciphertext",
                                       SEED_BYTES + nacl.secret.SecretBox.MACBYTES)

    def open(self, key: bytes) -> nacl.signing.SigningKey:
        try:
            seed = nacl.secret.SecretBox(key).decrypt(self.ciphertext, self.nonce)
        except nacl.exceptions.CryptoError:
            raise WrongPassphrase(f"wrong passphrase for identity {self.path}") from None
        signing_key = nacl.signing.SigningKey(seed)
        if peer_id_from_public_key(bytes(signing_key.verify_key)) != self.peer_id:
            raise IdentityError(
                f"identity {self.path} is tampered with: its peer ID does not match its key")
        return signing_key


def _field_bytes(path: Path, table: dict[str, Any], name: str, size: int) -> bytes:
    try:
        value = base64.b64decode(table[name], validate=True)
    except (KeyError, TypeError, binascii.Error, ValueError):
        value = b""
    if len(value) != size:
        raise IdentityError(f"identity {path} is damaged: bad {name}")
    return value


def _load(path: str | os.PathLike[str]) -> _Sealed:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise IdentityError(f"no identity at {path}: run p2pm init") from None
    except OSError as exc:
        raise IdentityError(f"cannot read identity {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise IdentityError(f"identity {path} is damaged: larger than {MAX_FILE_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise IdentityError(f"identity {path} is damaged: not JSON") from None
    if not isinstance(doc, dict) or doc.get("kind") != FILE_KIND:
        raise IdentityError(f"{path} is not a p2pm identity file")
    if doc.get("version") != FORMAT_VERSION:
        raise IdentityError(f"identity {path} has version {doc.get('version')!r}; this p2pm "
                            f"reads version {FORMAT_VERSION}")
    if doc.get("check") != _check_digest(doc):
        raise IdentityError(f"identity {path} is damaged or tampered with (check mismatch)")
    kdf, cipher = doc.get("kdf"), doc.get("cipher")
    if doc.get("key_type") != "ed25519" or not isinstance(doc.get("protected"), bool) \
            or not isinstance(kdf, dict) or not isinstance(cipher, dict) \
            or kdf.get("name") != "argon2id" or cipher.get("name") != "xsalsa20-poly1305":
        raise IdentityError(f"identity {path} is damaged: unexpected format")
    ops, mem = kdf.get("opslimit"), kdf.get("memlimit")
    if not (isinstance(ops, int) and isinstance(mem, int)
            and argon2id.OPSLIMIT_MIN <= ops <= MAX_OPSLIMIT
            and argon2id.MEMLIMIT_MIN <= mem <= MAX_MEMLIMIT):
        raise IdentityError(f"identity {path} asks for unsupported Argon2id parameters")
    try:
        public_key_from_peer_id(doc.get("peer_id"))  # type: ignore[arg-type]
    except IdentityError:
        raise IdentityError(f"identity {path} is damaged: bad peer ID") from None
    return _Sealed(path, doc)


def derive_unlock_key(path: str | os.PathLike[str], passphrase: str) -> bytes:
    """The Argon2id key that opens the identity at `path`, checked by decrypting.

    WrongPassphrase if it does not open it; IdentityError for a missing, unreadable,
    tampered or wrong-version file. Takes about 0.2 s (run it off the event loop).
    """
    sealed = _load(path)
    key = _derive(passphrase, sealed.salt, sealed.opslimit, sealed.memlimit)
    sealed.open(key)
    return key


def open_identity(path: str | os.PathLike[str], unlock_key: bytes) -> nacl.signing.SigningKey:
    """The signing key of the identity at `path`, opened with a key from
    `derive_unlock_key`. WrongPassphrase if the key does not open it."""
    sealed = _load(path)
    if len(unlock_key) != nacl.secret.SecretBox.KEY_SIZE:
        raise WrongPassphrase(f"wrong unlock key for identity {path}: "
                              f"{len(unlock_key)} bytes, not {nacl.secret.SecretBox.KEY_SIZE}")
    return sealed.open(unlock_key)


def is_protected(path: str | os.PathLike[str]) -> bool:
    """Whether the identity at `path` needs a passphrase."""
    return _load(path).protected


def read_peer_id(path: str | os.PathLike[str]) -> str:
    """The peer ID of the identity at `path`, without unlocking it."""
    return _load(path).peer_id
