"""Node invites and safety numbers: how two people become contacts.

A node invite says "this peer ID, under this name, is reachable at these addresses",
signed by that peer's identity key in the keystore's `p2pm-invite:` domain. Since an
Ed25519 peer ID embeds its public key, an invite verifies on its own: no server, no
prior contact. It travels as one copy-pasteable line:

    p2pm-node:<base64url(JSON payload)>.<base64url(64-byte signature)>

    payload = {"v": 1, "peer_id": "12D3KooW...", "name": "alice",
               "addrs": ["/ip4/.../tcp/4001/p2p/12D3KooW..."], "ts": 1700000000.0}

`decode` checks everything (shape, sizes, signature) and raises InviteError with what
is wrong, so a tampered or truncated invite never becomes a contact.

A safety number is what two contacts read to each other to rule out a man in the
middle: 60 digits derived from both public keys, the same on both sides.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
from dataclasses import dataclass

import orjson

from . import identity, validate

PREFIX = "p2pm-node:"
DOMAIN = "p2pm-invite:"
VERSION = 1
MAX_INVITE_CHARS = 4096
MAX_NAME_CHARS = validate.MAX_NAME_CHARS
MAX_ADDRS = 16
MAX_ADDR_CHARS = 256
SAFETY_DOMAIN = b"p2pm-safety-number-v1"
SAFETY_GROUPS = 12  # of 5 digits each


class InviteError(ValueError):
    """The text is not a valid, untampered node invite; the message says why."""


@dataclass(frozen=True, slots=True)
class NodeInvite:
    peer_id: str
    name: str
    addrs: tuple[str, ...]
    ts: float

    def payload(self) -> bytes:
        """The exact bytes that are signed (and carried) for this invite."""
        return orjson.dumps({"v": VERSION, "peer_id": self.peer_id, "name": self.name,
                             "addrs": list(self.addrs), "ts": self.ts})


def check_name(name: str) -> str:
    """A display name, by the one name rule of common/validate."""
    try:
        return validate.check_name(name)
    except validate.Invalid as exc:
        raise InviteError(str(exc)) from None


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _b64d(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_",
                                validate=True)
    except (binascii.Error, ValueError):
        raise InviteError(f"the invite's {what} is not valid base64") from None


def encode(invite: NodeInvite, signature: bytes) -> str:
    return f"{PREFIX}{_b64e(invite.payload())}.{_b64e(signature)}"


def looks_like_invite(text: str) -> bool:
    return isinstance(text, str) and text.strip().startswith(PREFIX)


def decode(text: str) -> NodeInvite:
    """Parse and verify an invite; InviteError says what is wrong with it."""
    if not isinstance(text, str):
        raise InviteError("an invite is a string")
    text = "".join(text.split())  # a pasted invite may have been wrapped
    if len(text) > MAX_INVITE_CHARS:
        raise InviteError(f"an invite is at most {MAX_INVITE_CHARS} characters")
    if not text.startswith(PREFIX):
        raise InviteError(f"not a node invite (it should start with {PREFIX!r})")
    body, dot, sig_text = text[len(PREFIX):].partition(".")
    if not dot or not body or not sig_text:
        raise InviteError("the invite is truncated (no signature)")
    payload, signature = _b64d(body, "payload"), _b64d(sig_text, "signature")
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InviteError("the invite's payload is not JSON") from None
    invite = _from_doc(doc)
    try:
        public = identity.public_key_from_peer_id(invite.peer_id)
    except identity.IdentityError as exc:
        raise InviteError(str(exc)) from None
    if not identity.verify(public, DOMAIN, payload, signature):
        raise InviteError("the invite's signature does not match: it was altered or "
                          "not made by that peer")
    return invite


def _from_doc(doc: object) -> NodeInvite:
    if not isinstance(doc, dict):
        raise InviteError("the invite's payload is not an object")
    if doc.get("v") != VERSION:
        raise InviteError(f"unsupported invite version {doc.get('v')!r}")
    unknown = set(doc) - {"v", "peer_id", "name", "addrs", "ts"}
    if unknown:
        raise InviteError(f"the invite has unknown fields: {', '.join(sorted(unknown))}")
    peer_id, name, addrs, ts = doc.get("peer_id"), doc.get("name"), doc.get("addrs"), \
        doc.get("ts")
    if not isinstance(peer_id, str):
        raise InviteError("the invite has no peer ID")
    check_name(name)  # type: ignore[arg-type]
    if not isinstance(addrs, list) or len(addrs) > MAX_ADDRS or not all(
            isinstance(a, str) and a.startswith("/") and 0 < len(a) <= MAX_ADDR_CHARS
            and a.isprintable() and " " not in a for a in addrs):
        raise InviteError(f"the invite's addresses must be up to {MAX_ADDRS} multiaddrs")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts) \
            or ts < 0:
        raise InviteError("the invite's time is not a valid timestamp")
    return NodeInvite(peer_id, name, tuple(addrs), float(ts))  # type: ignore[arg-type]


def safety_number(peer_a: str, peer_b: str) -> str:
    """60 digits in 12 groups of 5, from both peers' public keys; symmetric."""
    keys = sorted(identity.public_key_from_peer_id(p) for p in (peer_a, peer_b))
    digest = hashlib.sha512(SAFETY_DOMAIN + keys[0] + keys[1]).digest()
    groups = [int.from_bytes(digest[i * 5:i * 5 + 5], "big") % 100_000
              for i in range(SAFETY_GROUPS)]
    return " ".join(f"{g:05d}" for g in groups)
