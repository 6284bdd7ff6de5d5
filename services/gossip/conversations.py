"""Conversations without I/O: what a conversation's secret derives, how a message is
sealed and opened, and invites.

Every conversation has a secret. From it, one-way, come its id, its GossipSub topic,
its DHT provider key and its content key, so a peer who has not got the secret can
neither find the topic nor read what travels on it. A room's secret is random and
travels in an invite; a direct chat's is derived from the X25519 shared secret of both
identities, so both sides arrive at the same conversation with nothing exchanged (the
keystore derives it, `direct_secret`, and hands out only that: identity.direct_secret).

An envelope is what travels and what storage keeps:

    envelope  = nonce(24) || SecretBox(content key).encrypt(signature(64) || plaintext)
    plaintext = canonical JSON {"v": 1, "k": "m", "c": conversation id, "a": author,
                                "s": seq, "t": ts, "b": text}
              | {"v": 1, "k": "r", "c": conversation id, "a": reader, "t": ts,
                 "ids": [message ids]}                                  (a receipt)

The author signs the plaintext (domain "p2pm-message:", receipts "p2pm-receipt:"), so
any member can relay any author's envelopes and every receiver checks the author. A
message id is a hash of the plaintext: the same message always has the same id, which
makes redelivery harmless, and an author who reuses a seq with other content is a
conflict storage refuses.

Signing needs the keystore (asynchronous, over the bus), so sealing is split: build
the plaintext, have it signed, then `seal`.

A room invite is one line, `p2pm-invite2:<base64url(payload)>.<base64url(signature)>`,
signed by the inviter (domain "p2pm-room-invite:"):

    payload = canonical JSON {"v": 2, "id": room id, "name": room name,
                              "secret": base64(room secret), "peer": inviter,
                              "addrs": [inviter's multiaddrs], "ts": issued, "exp": expiry}

It lives from 1 hour to 365 days (gossip.room_invite_ttl_s, 7 days unless changed);
past `exp`, or issued from the future, it is refused with the time rules of
common/invite.py. A version 1 invite (`p2pm-invite1:`, no expiry) comes from an older
p2pm and is refused with a message saying so.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.secret
import nacl.utils
import orjson

from p2pm.common import identity, validate
from p2pm.common import invite as node_invites

MESSAGE_DOMAIN = "p2pm-message:"
RECEIPT_DOMAIN = "p2pm-receipt:"
INVITE_DOMAIN = "p2pm-room-invite:"
INVITE_VERSION = 2
INVITE_PREFIX = f"p2pm-invite{INVITE_VERSION}:"
_INVITE_FIELDS = {"v", "id", "name", "secret", "peer", "addrs", "ts", "exp"}
DEFAULT_INVITE_TTL_S = node_invites.DEFAULT_TTL_S  # as gossip.room_invite_ttl_s
SECRET_BYTES = 32
MAX_TEXT = validate.MAX_TEXT_BYTES  # bytes of UTF-8
MAX_NAME = validate.MAX_NAME_CHARS
MAX_RECEIPT_IDS = 256
MAX_INVITE_ADDRS = 16
MAX_INVITE = 8 * 1024
MAX_PLAINTEXT = MAX_TEXT + 2048
MAX_ENVELOPE = MAX_PLAINTEXT + 64 + nacl.secret.SecretBox.NONCE_SIZE \
    + nacl.secret.SecretBox.MACBYTES
MAX_SEQ = 2**63 - 1
SIGNATURE_BYTES = 64
KINDS = ("direct", "room")


class EnvelopeError(ValueError):
    """An envelope that cannot be opened (wrong key), is malformed, or whose signature
    is not its author's. The message says which."""


class InviteError(ValueError):
    """A malformed or tampered invite."""


class InviteExpired(InviteError):
    """A genuine invite outside its time window; the message says when."""


# The clock skew taken from an author: a message's timestamp further ahead of the
# receiver's clock than this is kept as the receiver's time (receive.py).
MAX_FUTURE_S = 120.0

def _derive(secret: bytes, label: bytes, size: int) -> bytes:
    return hashlib.blake2b(label, key=secret, digest_size=size).digest()


@dataclass(frozen=True)
class Keys:
    """Everything one conversation's secret derives."""

    id: str
    kind: str
    topic: str
    dht_key: bytes
    content_key: bytes

    @classmethod
    def derive(cls, kind: str, secret: bytes) -> "Keys":
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        if not 16 <= len(secret) <= 64:
            raise ValueError("a conversation secret is 16-64 bytes")
        cid = kind[0] + _derive(secret, b"p2pm conversation id", 16).hex()
        topic = "/p2pm/conversation/" + _derive(secret, b"p2pm topic", 20).hex()
        # A sha2-256 multihash, the shape Kademlia provider keys have.
        dht_key = b"\x12\x20" + hashlib.sha256(
            _derive(secret, b"p2pm dht provider key", 32)).digest()
        return cls(cid, kind, topic, dht_key, _derive(secret, b"p2pm content key", 32))


    def request_proof(self, sender: str, recipient: str) -> bytes:
        """What a message request's sender shows that it holds the direct chat's
        secret (strangers.py), bound to both peers so it is good for no other pair;
        the stream it travels on is authenticated as the sender's."""
        data = f"p2pm request {self.id} {sender} {recipient}".encode()
        return hashlib.blake2b(data, key=self.content_key, digest_size=32).digest()

def new_room_secret() -> bytes:
    return nacl.utils.random(SECRET_BYTES)


def check_text(text: str) -> str:
    """A message body as signed: the rule of common/validate, without normalising
    (validate.Invalid is a ValueError)."""
    return validate.check_message_text(text)


# -- messages and receipts ---------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    """A verified envelope. `seq`/`text` are set for a message, `ids` for a receipt."""

    kind: str  # "m" message, "r" receipt
    id: str
    conversation: str
    author: str
    ts: float
    seq: int = 0
    text: str = ""
    ids: tuple[str, ...] = ()


def message_plaintext(conversation: str, author: str, seq: int, ts: float,
                      text: str) -> bytes:
    return orjson.dumps({"v": 1, "k": "m", "c": conversation, "a": author, "s": seq,
                         "t": ts, "b": text}, option=orjson.OPT_SORT_KEYS)


def receipt_plaintext(conversation: str, reader: str, ts: float,
                      ids: list[str]) -> bytes:
    return orjson.dumps({"v": 1, "k": "r", "c": conversation, "a": reader, "t": ts,
                         "ids": list(ids)}, option=orjson.OPT_SORT_KEYS)


def message_id(plaintext: bytes) -> str:
    return hashlib.blake2b(plaintext, digest_size=16, person=b"p2pm-msg-id").hexdigest()


def seal(content_key: bytes, signature: bytes, plaintext: bytes) -> bytes:
    if len(signature) != SIGNATURE_BYTES:
        raise ValueError("an Ed25519 signature is 64 bytes")
    return bytes(nacl.secret.SecretBox(content_key).encrypt(signature + plaintext))


def open_envelope(keys: Keys, envelope: bytes) -> Opened:
    """Decrypt, parse and verify an envelope of this conversation. EnvelopeError says
    what is wrong; nothing here trusts a field before the author's signature."""
    if not isinstance(envelope, (bytes, bytearray)) or len(envelope) > MAX_ENVELOPE:
        raise EnvelopeError("envelope missing or too large")
    try:
        inner = nacl.secret.SecretBox(keys.content_key).decrypt(bytes(envelope))
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise EnvelopeError("cannot decrypt: not this conversation's key") from None
    signature, plaintext = inner[:SIGNATURE_BYTES], inner[SIGNATURE_BYTES:]
    if len(signature) != SIGNATURE_BYTES or len(plaintext) > MAX_PLAINTEXT:
        raise EnvelopeError("malformed envelope")
    try:
        doc = orjson.loads(plaintext)
    except orjson.JSONDecodeError:
        raise EnvelopeError("plaintext is not JSON") from None
    opened = _parse(doc)
    if opened.conversation != keys.id:
        raise EnvelopeError("envelope belongs to another conversation")
    try:
        public = identity.public_key_from_peer_id(opened.author)
    except identity.IdentityError:
        raise EnvelopeError("author is not an Ed25519 peer id") from None
    domain = MESSAGE_DOMAIN if opened.kind == "m" else RECEIPT_DOMAIN
    if not identity.verify(public, domain, plaintext, signature):
        raise EnvelopeError("signature is not the author's")
    return Opened(**{**opened.__dict__, "id": message_id(plaintext)})


def _parse(doc: Any) -> Opened:
    if not isinstance(doc, dict) or doc.get("v") != 1:
        raise EnvelopeError("unknown envelope version")
    kind, conv, author, ts = doc.get("k"), doc.get("c"), doc.get("a"), doc.get("t")
    if not isinstance(conv, str) or not isinstance(author, str) or not conv or not author:
        raise EnvelopeError("conversation and author must be strings")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) \
            or ts < 0:
        raise EnvelopeError("ts must be a non-negative number")
    if kind == "m":
        if set(doc) != {"v", "k", "c", "a", "s", "t", "b"}:
            raise EnvelopeError("unexpected message fields")
        seq, text = doc["s"], doc["b"]
        if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_SEQ:
            raise EnvelopeError("seq must be an integer >= 1")
        try:
            check_text(text)
        except ValueError as exc:
            raise EnvelopeError(str(exc)) from None
        return Opened("m", "", conv, author, float(ts), seq=seq, text=text)
    if kind == "r":
        if set(doc) != {"v", "k", "c", "a", "t", "ids"}:
            raise EnvelopeError("unexpected receipt fields")
        ids = doc["ids"]
        if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_RECEIPT_IDS or not all(
                isinstance(i, str) and 0 < len(i) <= 64 for i in ids):
            raise EnvelopeError(f"a receipt names 1-{MAX_RECEIPT_IDS} message ids")
        return Opened("r", "", conv, author, float(ts), ids=tuple(ids))
    raise EnvelopeError("unknown envelope kind")


# -- invites -----------------------------------------------------------------------


@dataclass(frozen=True)
class Invite:
    id: str
    name: str
    secret: bytes
    inviter: str
    addrs: tuple[str, ...]
    ts: float
    exp: float


def invite_payload(name: str, secret: bytes, inviter: str, addrs: list[str], now: float,
                   ttl_s: float) -> bytes:
    """The signed part of an invite made at `now`, good for `ttl_s` (InviteError
    when that is outside 1 hour..365 days)."""
    keys = Keys.derive("room", secret)
    try:
        exp = now + node_invites.check_ttl(ttl_s)
    except node_invites.InviteError as exc:
        raise InviteError(str(exc)) from None
    return orjson.dumps({"v": INVITE_VERSION, "id": keys.id, "name": name,
                         "secret": base64.b64encode(secret).decode(), "peer": inviter,
                         "addrs": list(addrs)[:MAX_INVITE_ADDRS], "ts": now, "exp": exp},
                        option=orjson.OPT_SORT_KEYS)


def encode_invite(payload: bytes, signature: bytes) -> str:
    """One copy-pasteable line: prefix, payload and signature in URL-safe base64."""
    return (INVITE_PREFIX + base64.urlsafe_b64encode(payload).decode().rstrip("=") + "."
            + base64.urlsafe_b64encode(signature).decode().rstrip("="))


def b64url_decode(text: str) -> bytes:
    """Unpadded URL-safe base64, as invite lines carry it (binascii.Error/ValueError)."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


OLDER = ("this room invite comes from an older p2pm (invite version {v}), which this "
         "one no longer accepts; ask for a new invite")


def older_invite_version(text: str, current: int = INVITE_VERSION) -> int | None:
    """The version of a `p2pm-inviteN:` line older than `current`, else None."""
    head, colon, _ = text.partition(":")
    number = head.removeprefix("p2pm-invite")
    if colon and number != head and number.isdigit() and len(number) < 4 \
            and int(number) < current:
        return int(number)
    return None


def decode_invite(text: str, now: float | None = None) -> Invite:
    """Parse and verify an invite; InviteError says what is wrong. With `now`, one
    outside its time window raises InviteExpired."""
    if not isinstance(text, str):
        raise InviteError("an invite is a string")
    text = text.strip()
    older = older_invite_version(text)
    if older is not None:
        raise InviteError(OLDER.format(v=older))
    if len(text) > MAX_INVITE or not text.startswith(INVITE_PREFIX):
        raise InviteError(f"not an invite (it starts with {INVITE_PREFIX!r})")
    body, dot, sig_text = text[len(INVITE_PREFIX):].partition(".")
    try:
        if not dot:
            raise ValueError
        payload, signature = b64url_decode(body), b64url_decode(sig_text)
        doc = orjson.loads(payload)
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        raise InviteError("the invite is garbled (copied incompletely?)") from None
    version = doc.get("v") if isinstance(doc, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) \
            and 1 <= version < INVITE_VERSION:
        raise InviteError(OLDER.format(v=version))
    if version != INVITE_VERSION or set(doc) != _INVITE_FIELDS:
        raise InviteError("unknown invite version or fields")
    inviter, name, addrs = doc["peer"], doc["name"], doc["addrs"]
    if not isinstance(inviter, str) or not isinstance(name, str) or len(name) > MAX_NAME:
        raise InviteError("malformed inviter or name")
    if not isinstance(addrs, list) or len(addrs) > MAX_INVITE_ADDRS or not all(
            isinstance(a, str) and 0 < len(a) <= 512 for a in addrs):
        raise InviteError("malformed addresses")
    try:
        public = identity.public_key_from_peer_id(inviter)
        secret = base64.b64decode(doc["secret"], validate=True)
    except (identity.IdentityError, binascii.Error, ValueError, TypeError):
        raise InviteError("malformed inviter or secret") from None
    if len(signature) != SIGNATURE_BYTES or not identity.verify(
            public, INVITE_DOMAIN, payload, signature):
        raise InviteError("the invite's signature does not match (tampered with?)")
    try:
        keys = Keys.derive("room", secret)
    except ValueError as exc:
        raise InviteError(str(exc)) from None
    if keys.id != doc["id"]:
        raise InviteError("the invite's room id does not match its secret")
    ts, exp = doc["ts"], doc["exp"]
    if not node_invites.valid_window(ts, exp):
        raise InviteError("the invite's time or expiry is not valid")
    problem = None if now is None else node_invites.time_problem(ts, exp, now,
                                                                 "room invite")
    if problem:
        raise InviteExpired(problem)
    return Invite(keys.id, name, secret, inviter, tuple(addrs), float(ts), float(exp))
