"""Node invites and safety numbers: how two people become contacts.

A node invite says "this peer ID, under this name, is reachable at these addresses",
signed by that peer's identity key in the keystore's `p2pm-invite:` domain. Since an
Ed25519 peer ID embeds its public key, an invite verifies on its own: no server, no
prior contact. It travels as one copy-pasteable line:

    p2pm-node:<base64url(JSON payload)>.<base64url(64-byte signature)>

    payload = {"v": 2, "peer_id": "12D3KooW...", "name": "alice",
               "addrs": ["/ip4/.../tcp/4001/p2p/12D3KooW..."], "ts": 1700000000.0,
               "exp": 1700604800.0}

`decode` checks everything (shape, sizes, signature) and raises InviteError with what
is wrong, so a tampered or truncated invite never becomes a contact. Given `now`, it
also refuses an invite past its `exp` or issued from the future (InviteExpired, which
says when and to ask for a new one): an invite pasted in a chat long ago should not
add a contact today. An invite lives from MIN_TTL_S to MAX_TTL_S (its issuer's
`gateway.invite_ttl_s`, 7 days unless changed); a version 1 invite, which has no
`exp`, is taken as expiring LEGACY_TTL_S after its `ts`. Room invites
(services/gossip/conversations.py) follow the same time rules through `time_problem`.

A safety number is what two contacts read to each other to rule out a man in the
middle. It is built like Signal's NumericFingerprint: for each party, SHA-512 iterated
SAFETY_ITERATIONS times over version || Ed25519 public key || peer ID bytes (each round
hashing the previous digest with the key again), whose first 30 bytes give six 5-digit
chunks; the 60 digits shown are both halves, the lower first, so both sides read the
same. The iterations make searching for a key whose half collides with a given one
cost 5200 hashes per try.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import time
from dataclasses import dataclass

import orjson

from . import identity, validate
from .settings import INVITE_TTL

PREFIX = "p2pm-node:"
DOMAIN = "p2pm-invite:"
VERSION = 2
LEGACY_VERSION = 1  # no `exp`: expires LEGACY_TTL_S after `ts`
MAX_INVITE_CHARS = 4096
MAX_NAME_CHARS = validate.MAX_NAME_CHARS
MAX_ADDRS = 16
MAX_ADDR_CHARS = 256
HOUR = 3600.0
DAY = 86400.0
DEFAULT_TTL_S = 7 * DAY
LEGACY_TTL_S = 7 * DAY
MIN_TTL_S, MAX_TTL_S = INVITE_TTL  # the settings' bounds (gateway.invite_ttl_s)
# Clock skew allowed to an issuer: an invite whose `ts` is further ahead of our clock
# than this was made on a wrong clock (or forged to outlive its window) and is refused.
MAX_FUTURE_S = 600.0
# Signal's NumericFingerprint with a p2pm version of its own, so these numbers can
# never be confused with the v1 ones (one SHA-512 over both keys).
SAFETY_VERSION = b"p2pm-safety-number-v2"
SAFETY_ITERATIONS = 5200
SAFETY_HALF_CHUNKS = 6  # of 5 digits each, per party


class InviteError(ValueError):
    """The text is not a valid, untampered node invite; the message says why."""


class InviteExpired(InviteError):
    """A genuine invite outside its time window (expired, or from the future); the
    message says when and to ask for a new one."""


@dataclass(frozen=True, slots=True)
class NodeInvite:
    peer_id: str
    name: str
    addrs: tuple[str, ...]
    ts: float
    exp: float

    @classmethod
    def issue(cls, peer_id: str, name: str, addrs: tuple[str, ...], now: float,
              ttl_s: float = DEFAULT_TTL_S) -> "NodeInvite":
        """An invite made at `now` that lives `ttl_s` (checked by `check_ttl`)."""
        return cls(peer_id, name, addrs, now, now + check_ttl(ttl_s))

    def payload(self) -> bytes:
        """The exact bytes that are signed (and carried) for this invite."""
        return orjson.dumps({"v": VERSION, "peer_id": self.peer_id, "name": self.name,
                             "addrs": list(self.addrs), "ts": self.ts, "exp": self.exp})


# -- time --------------------------------------------------------------------------


def check_ttl(ttl_s: object) -> float:
    """How long an invite lives, in seconds, within MIN_TTL_S..MAX_TTL_S."""
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) \
            or not math.isfinite(ttl_s) or not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
        shown = format_duration(ttl_s) if isinstance(ttl_s, (int, float)) and \
            not isinstance(ttl_s, bool) and math.isfinite(ttl_s) else repr(ttl_s)
        raise InviteError(f"an invite lives from {format_duration(MIN_TTL_S)} to "
                          f"{format_duration(MAX_TTL_S)}, not {shown}")
    return float(ttl_s)


_UNITS = {"s": 1.0, "m": 60.0, "h": HOUR, "d": DAY, "w": 7 * DAY}


def parse_duration(text: str) -> float:
    """`90m`, `12h`, `2d`, `1w` or plain seconds, as seconds (an invite's lifetime
    as typed on a command line); InviteError says what is wrong."""
    raw = text.strip().lower() if isinstance(text, str) else ""
    unit = _UNITS.get(raw[-1:], None) if raw[-1:].isalpha() else 1.0
    number = raw[:-1] if raw[-1:].isalpha() else raw
    if unit is None or not number.isdigit() or len(number) > 9:
        raise InviteError(f"{text!r} is not a duration (write e.g. 12h, 2d or 1w)")
    return check_ttl(int(number) * unit)


def format_duration(seconds: float) -> str:
    """The largest whole unit that fits: 7d, 36h, 90m (for messages)."""
    for name, size in (("d", DAY), ("h", HOUR), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{name}"
    return f"{seconds:g}s"


def format_time(ts: float) -> str:
    """A moment as people read it in a message: `2026-12-09 10:00 UTC`."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(min(ts, 253402300799.0)))


def _moment(t: object) -> bool:
    return isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) \
        and t >= 0


def valid_window(ts: object, exp: object) -> bool:
    """The one shape rule for an invite's times (node and room invites alike): both
    real moments, and it expires after it was issued, within MAX_TTL_S."""
    return _moment(ts) and _moment(exp) and ts < exp <= ts + MAX_TTL_S  # type: ignore[operator]


def time_problem(ts: float, exp: float, now: float, what: str = "invite") -> str | None:
    """Why an invite made at `ts`, expiring at `exp`, is not good at `now` (one
    line, for the person who pasted it), or None while it is."""
    if ts > now + MAX_FUTURE_S:
        return (f"this {what} was issued in the future ({format_time(ts)}, more than "
                f"{format_duration(MAX_FUTURE_S)} ahead of this computer's clock); check "
                "both clocks, then ask for a new invite")
    if now >= exp:
        return f"this {what} expired on {format_time(exp)}; ask for a new one"
    return None


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


def decode(text: str, now: float | None = None) -> NodeInvite:
    """Parse and verify an invite; InviteError says what is wrong with it. With
    `now`, an invite outside its time window raises InviteExpired."""
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
    problem = None if now is None else time_problem(invite.ts, invite.exp, now)
    if problem:
        raise InviteExpired(problem)
    return invite


def _from_doc(doc: object) -> NodeInvite:
    if not isinstance(doc, dict):
        raise InviteError("the invite's payload is not an object")
    version = doc.get("v")
    if version not in (VERSION, LEGACY_VERSION) or isinstance(version, bool):
        raise InviteError(f"unsupported invite version {version!r}")
    unknown = set(doc) - {"v", "peer_id", "name", "addrs", "ts"} - (
        {"exp"} if version == VERSION else set())
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
    exp = doc.get("exp") if version == VERSION else ts + LEGACY_TTL_S
    if not valid_window(ts, exp):
        raise InviteError("the invite's expiry is missing or not within "
                          f"{format_duration(MAX_TTL_S)} after its time")
    return NodeInvite(peer_id, name, tuple(addrs), float(ts),  # type: ignore[arg-type]
                      float(exp))


# -- safety numbers ----------------------------------------------------------------


def safety_half(peer_id: str) -> str:
    """One party's 30 digits: SHA-512 iterated over version || key || peer ID bytes,
    each round over the last digest and the key (as Signal's NumericFingerprint)."""
    key = identity.public_key_from_peer_id(peer_id)
    digest = SAFETY_VERSION + key + identity.peer_id_bytes(peer_id)
    for _ in range(SAFETY_ITERATIONS):
        digest = hashlib.sha512(digest + key).digest()
    return "".join(f"{int.from_bytes(digest[i:i + 5], 'big') % 100_000:05d}"
                   for i in range(0, SAFETY_HALF_CHUNKS * 5, 5))


def safety_number(peer_a: str, peer_b: str) -> str:
    """60 digits in 12 groups of 5: both parties' halves, the lower first, so it
    reads the same on either side."""
    digits = "".join(sorted((safety_half(peer_a), safety_half(peer_b))))
    return " ".join(digits[i:i + 5] for i in range(0, len(digits), 5))
