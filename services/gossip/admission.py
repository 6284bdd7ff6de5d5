"""Room invites as capabilities (conversation keys v2), without I/O: an invite carries
no key, only an expiring token that lets its holder ask an admin to admit it.

    token   = {"p": base64(payload), "s": base64(signature)}
    payload = canonical JSON {"v": 3, "t": "token", "room": room id, "issuer": peer id,
                              "ts": issued, "exp": expiry, "nonce": base64(16 bytes)}
    invite  = "p2pm-invite3:" base64url(outer) "." base64url(signature of outer)
    outer   = canonical JSON {"v": 3, "t": "invite", "name": room name, "token": token,
                              "addrs": [issuer's multiaddrs], "bundle": base64(the
                              issuer's signed prekey bundle, sessions.py)}

Both are signed by the issuer in INVITE_DOMAIN (the "t" field keeps a token from being
taken for an invite and the reverse). The outer signature covers what the joiner reads
before it reaches anyone (the room's name, where to dial, the Olm keys to write to);
the token is what travels on: the joiner sends it in a JOIN payload over the pairwise
channel (pairing.py) to the issuer, or to any admin it reaches, since any admin can
check it on its own: its signature, that its issuer is an admin of the room *now*
(an invite dies with its issuer's rights: removing or demoting an admin revokes every
invite it gave), its time window, and that the joiner is not a member already.

An admin that admits adds the joiner to the roster (a signed ADD event, roster.py) and
sends it an ADMIT payload over the same channel with what a member needs and an
invite must not carry: the room's secret (its topic and sync proofs; content keys are
the members' sender keys, roomcrypto.py) and the roster's heads, from which the joiner
asks for the events it lacks. It reads what is posted from then on; nothing earlier.

A version 1 or 2 invite (`p2pm-invite1:`/`p2pm-invite2:`, which carried the room's
secret) comes from an older p2pm and is refused saying so. Everything a peer or a
pasted line brings is checked here once: AdmissionRefused says, in words for the person
concerned, why.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from typing import Any

import orjson

from p2pm.common import identity
from p2pm.common import invite as node_invites

from . import conversations as cv
from .roster import Roster

VERSION = 3
PREFIX = f"p2pm-invite{VERSION}:"
DOMAIN = cv.INVITE_DOMAIN
NONCE_BYTES = 16
MAX_TOKEN = 1024  # bytes of a token as JSON: it rides in a JOIN payload
MAX_INVITE = 16 * 1024  # characters of an invite line (the bundle is most of it)
MAX_BUNDLE = 8 * 1024
MAX_ADDRS = cv.MAX_INVITE_ADDRS
MAX_SECRET_B64 = 88
_TOKEN_FIELDS = {"v", "t", "room", "issuer", "ts", "exp", "nonce"}
_OUTER_FIELDS = {"v", "t", "name", "token", "addrs", "bundle"}
OLDER = cv.OLDER


class AdmissionRefused(ValueError):
    """An invite, token, JOIN or ADMIT we will not act on; the message says why."""


@dataclass(frozen=True, slots=True)
class Token:
    room: str
    issuer: str
    ts: float
    exp: float
    payload: bytes
    signature: bytes

    def to_wire(self) -> dict[str, str]:
        return {"p": _b64(self.payload), "s": _b64(self.signature)}


@dataclass(frozen=True, slots=True)
class RoomInvite:
    name: str
    token: Token
    addrs: tuple[str, ...]
    bundle: bytes  # the issuer's signed prekey bundle, checked by sessions.Bundle


@dataclass(frozen=True, slots=True)
class Admit:
    room: str
    name: str
    secret: bytes
    heads: tuple[str, ...]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any, what: str, limit: int) -> bytes:
    if not isinstance(value, str) or len(value) > limit * 4 // 3 + 4:
        raise AdmissionRefused(f"malformed {what}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise AdmissionRefused(f"malformed {what}") from None


def _canonical(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def _check_window(ts: Any, exp: Any, now: float | None, what: str) -> None:
    if not node_invites.valid_window(ts, exp):
        raise AdmissionRefused(f"the {what}'s time or expiry is not valid")
    problem = None if now is None else node_invites.time_problem(ts, exp, now, what)
    if problem:
        raise AdmissionRefused(problem)


# -- tokens ------------------------------------------------------------------------


def token_payload(room: str, issuer: str, now: float, ttl_s: float) -> bytes:
    """What the issuer signs (DOMAIN) for a token good from `now` for `ttl_s`."""
    try:
        exp = now + node_invites.check_ttl(ttl_s)
    except node_invites.InviteError as exc:
        raise AdmissionRefused(str(exc)) from None
    return _canonical({"v": VERSION, "t": "token", "room": room, "issuer": issuer,
                       "ts": now, "exp": exp, "nonce": _b64(os.urandom(NONCE_BYTES))})


def decode_token(doc: Any, now: float | None) -> Token:
    """A token as a JOIN or an invite carries it, its issuer's signature checked."""
    if not isinstance(doc, dict) or set(doc) != {"p", "s"}:
        raise AdmissionRefused("malformed invite token")
    payload = _unb64(doc["p"], "invite token", MAX_TOKEN)
    signature = _unb64(doc["s"], "invite token signature", 64)
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise AdmissionRefused("malformed invite token") from None
    if not isinstance(body, dict) or body.get("t") != "token" or set(body) != _TOKEN_FIELDS:
        raise AdmissionRefused("malformed invite token")
    if body["v"] != VERSION or isinstance(body["v"], bool):
        raise AdmissionRefused(f"unknown invite token version {body['v']!r}")
    room, issuer = body["room"], body["issuer"]
    if not isinstance(room, str) or not 0 < len(room) <= 64 or not isinstance(issuer, str):
        raise AdmissionRefused("malformed invite token")
    try:
        public = identity.public_key_from_peer_id(issuer)
    except identity.IdentityError:
        raise AdmissionRefused("the invite token names no valid issuer") from None
    if len(signature) != cv.SIGNATURE_BYTES or not identity.verify(
            public, DOMAIN, payload, signature):
        raise AdmissionRefused("the invite token's signature does not match (tampered "
                               "with, or not made by its issuer)")
    if payload != _canonical(body):
        raise AdmissionRefused("malformed invite token")
    _check_window(body["ts"], body["exp"], now, "room invite")
    return Token(room, issuer, float(body["ts"]), float(body["exp"]), payload, signature)


def check_join(token: Token, roster: Roster, joiner: str) -> None:
    """May `joiner` be admitted to the roster's room on `token` (already decoded, so
    signed and current)? AdmissionRefused says why not."""
    if token.room != roster.room:
        raise AdmissionRefused("this invite is for another room")
    if not roster.is_admin(token.issuer):
        raise AdmissionRefused("whoever gave this invite is no longer an admin of the "
                               "room, so it no longer admits anyone; ask for a new one")
    if roster.is_member(joiner):
        raise AdmissionRefused("already a member of this room")


# -- invites -----------------------------------------------------------------------


def invite_outer(name: str, token: Token, addrs: list[str], bundle: bytes) -> bytes:
    """What the issuer signs (DOMAIN) around its token."""
    if len(bundle) > MAX_BUNDLE:
        raise AdmissionRefused(f"a prekey bundle in an invite is at most {MAX_BUNDLE} bytes")
    return _canonical({"v": VERSION, "t": "invite", "name": name, "token": token.to_wire(),
                       "addrs": list(addrs)[:MAX_ADDRS], "bundle": _b64(bundle)})


def encode_invite(outer: bytes, signature: bytes) -> str:
    def b64url(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")
    return PREFIX + b64url(outer) + "." + b64url(signature)


def decode_invite(text: str, now: float | None = None) -> RoomInvite:
    """A pasted room invite, both signatures checked; AdmissionRefused says what is
    wrong (an older version, garbled, tampered, expired)."""
    if not isinstance(text, str):
        raise AdmissionRefused("an invite is a string")
    text = text.strip()
    older = cv.older_invite_version(text, VERSION)
    if older is not None:
        raise AdmissionRefused(OLDER.format(v=older))
    if len(text) > MAX_INVITE or not text.startswith(PREFIX):
        raise AdmissionRefused(f"not a room invite (it starts with {PREFIX!r})")
    body, dot, sig_text = text[len(PREFIX):].partition(".")
    try:
        if not dot:
            raise ValueError
        outer, signature = cv.b64url_decode(body), cv.b64url_decode(sig_text)
        doc = orjson.loads(outer)
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        raise AdmissionRefused("the invite is garbled (copied incompletely?)") from None
    if not isinstance(doc, dict) or doc.get("t") != "invite" or set(doc) != _OUTER_FIELDS \
            or doc.get("v") != VERSION:
        raise AdmissionRefused("unknown invite version or fields")
    token = decode_token(doc["token"], now)
    public = identity.public_key_from_peer_id(token.issuer)
    if len(signature) != cv.SIGNATURE_BYTES or not identity.verify(
            public, DOMAIN, outer, signature):
        raise AdmissionRefused("the invite's signature does not match (tampered with?)")
    name, addrs = doc["name"], doc["addrs"]
    if not isinstance(name, str) or len(name) > cv.MAX_NAME:
        raise AdmissionRefused("malformed room name")
    if not isinstance(addrs, list) or len(addrs) > MAX_ADDRS or not all(
            isinstance(a, str) and 0 < len(a) <= 512 for a in addrs):
        raise AdmissionRefused("malformed addresses")
    bundle = _unb64(doc["bundle"], "prekey bundle", MAX_BUNDLE)
    return RoomInvite(name, token, tuple(addrs), bundle)


# -- the two payloads over the pairwise channel ------------------------------------


def join_body(token: Token) -> dict[str, Any]:
    return {"token": token.to_wire()}


def decode_join(body: Any, now: float) -> Token:
    if not isinstance(body, dict) or set(body) != {"token"}:
        raise AdmissionRefused("malformed JOIN")
    return decode_token(body["token"], now)


def admit_body(room: str, name: str, secret: bytes, heads: list[str]) -> dict[str, Any]:
    return {"room": room, "name": name, "secret": _b64(secret), "heads": list(heads)}


def decode_admit(body: Any) -> Admit:
    if not isinstance(body, dict) or set(body) != {"room", "name", "secret", "heads"}:
        raise AdmissionRefused("malformed ADMIT")
    room, name, heads = body["room"], body["name"], body["heads"]
    if not isinstance(room, str) or not 0 < len(room) <= 64 or not isinstance(name, str) \
            or len(name) > cv.MAX_NAME:
        raise AdmissionRefused("malformed ADMIT")
    if not isinstance(heads, list) or not 0 < len(heads) <= 16 or not all(
            isinstance(h, str) and len(h) == 64 for h in heads):
        raise AdmissionRefused("malformed ADMIT heads")
    secret = _unb64(body["secret"], "room secret", MAX_SECRET_B64)
    try:
        keys = cv.Keys.derive("room", secret)
    except ValueError as exc:
        raise AdmissionRefused(str(exc)) from None
    if keys.id != room:
        raise AdmissionRefused("the ADMIT's secret is not this room's")
    return Admit(room, name, secret, tuple(heads))
