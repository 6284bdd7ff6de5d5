"""The pairwise key channel (`/p2pm/keys/1.0.0`) without I/O: the two frames, the
Olm sessions we hold with each peer, the payloads waiting for a peer's ACK, and the
ids of payloads already handed to us.

Theory of operation
-------------------
Two nodes exchange small secrets (a room's sender key, an admission) that only the
other may read. Each payload is encrypted with Olm (vodozemac, Matrix's audited
implementation) on a session between our account and the peer's; the stream itself is
authenticated by the transport, so the peer id a frame arrives from is who sent it.

One stream per exchange; the caller writes and reads one length-prefixed frame each way
and closes it:

    initiator                                        responder
    PUSH {v, items: [{id, m: {t, b}}], bundle?, want?}  ->
                                                     decrypts each item (Book),
                                                     hands new ones to the
                                                     application (Seen), answers
                                  <-  ACK {v, ok: [id], bad: {id: why}, bundle?}
    close                                            close

A PUSH with `want` asks for the responder's bundle in the ACK; it may carry no items
(a first contact: we need the peer's identity and one-time key before we can encrypt
anything for it). The stream is the transport's, so the bundle comes from the peer
itself; the actor still checks its signature against the peer id.

Sending: the application `Queue.put`s a payload for a peer (its id is a hash of the
plaintext, `payload_id`). When the peer is `due`, `prepare_push` takes up to MAX_ITEMS
payloads and encrypts each on the peer's current session, creating an outbound
session from the peer's identity key and one-time (or fallback) key when we have none.
A PUSH that starts a session should carry our own `bundle` (opaque here: the actor
builds and verifies it), so that the responder learns our identity key. `apply_ack`
then settles each item: `ok` is delivered, `refused` (the application there would not
take it) and `malformed` (it could not read what we sent: our bug) are dropped and
reported. `no-session` means the responder lost the session (restart, eviction, a new
account): we forget every session with it, keep the payloads and try again after a
backoff, from a fresh bundle of theirs. A stream that fails, or an ACK that breaks the
protocol, is `Queue.failed`: the same payloads go again after the backoff.

Receiving: `respond` decrypts each item with the `Book` (a PreKey message from an
unknown session creates an inbound session and consumes one of our one-time keys:
`Response.new_session` says the account must be stored again), checks that the id is
the hash of what it decrypted, hands the payload over unless `Seen` has it already,
and builds the ACK. A payload already seen is acknowledged again without being handed
over twice, so a sender whose ACK was lost can resend safely; an exact replay of a
frame (Olm refuses to decrypt a message twice) is acknowledged the same way. Delivery
is at least once: Seen is bounded and lives in memory, so the application must
tolerate an occasional duplicate (installing a sender key twice is harmless).

Which session we send on (the convergence rule)
-----------------------------------------------
Both sides may start at once: each creates an outbound session and sends a PreKey
message before it has read the other's, and each then holds two sessions. They must
settle on one, or every exchange keeps both alive. The rule, in `Book`:

1. Send on the session we last received on (the peer holds it: it just used it), and
   until we have received on any, on the newest one.
2. A PreKey message that creates a new inbound session always moves us onto it: the
   peer had no session with us (it starts one only then), so every older one is dead.
3. Tie-break: when we receive on an existing session other than the one we send on,
   and we have already received on both, we move to the one with the smaller session
   id. Olm gives both ends of a session the same id, so both sides pick the same one.

Without rule 3, "the last one received on" alone flips the two sides over each other
for as long as their PUSHes keep crossing: each moves onto the session the other has
just left. With it, the sides agree after at most one more message each way, however
the messages interleave (tested in test_channel.py).

Bounds and overflow
-------------------
Frames: a PUSH is at most MAX_FRAME bytes and MAX_ITEMS items, an ACK at most
MAX_ACK_FRAME; sizes are checked before parsing. A payload is at most MAX_PAYLOAD
bytes of plaintext, which keeps a full PUSH (with a bundle) under MAX_FRAME.
Book: MAX_SESSIONS_PER_PEER sessions per peer (the oldest one we do not send on is
dropped) and `max_peers` peers, least recently used evicted. Nothing is lost by
eviction if the actor follows the one rule of persistence: store the peer's record
(`pickle_peer`) after every `encrypt` or `decrypt`, before the frame goes out, because
every message moves the ratchet and a restored stale session would reuse message
keys. An evicted peer is reloaded with `unpickle_peer`.
Queue: MAX_QUEUED payloads per peer and `max_peers` peers; beyond that `put` raises
QueueFull to the caller, who keeps the payload or reports the failure. Nothing queued
is ever dropped silently: it leaves only by an ACK, or by `drop` which returns it.
Seen: the last MAX_SEEN_IDS (peer, id) pairs, oldest forgotten first.

Errors
------
`ChannelError` (a ValueError): the peer broke the protocol (a frame that does not
parse, is too large, has wrong types, an unknown kind, an ACK that answers other ids
than we sent). The caller closes the stream; decoding has changed nothing.
`LocalProtocolError`: we tried to send something the protocol does not allow (a bug).
`NoSession`: we cannot encrypt (no session and no key to start one) or decrypt (no
session of ours reads the message). `BadPickle`: a stored record that does not open
with the key given or is corrupt. `QueueFull`: see above.
"""

from __future__ import annotations

import enum
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import vodozemac

from p2pm.common import errors, wire

PROTOCOL = "/p2pm/keys/1.0.0"
VERSION = 1
MAX_FRAME = 128 * 1024  # a PUSH
MAX_ACK_FRAME = 16 * 1024  # an ACK: at most MAX_ITEMS ids and reasons, and a bundle
MAX_ITEMS = 32  # payloads per PUSH
MAX_PAYLOAD = 2048  # plaintext bytes of one payload (an ADMIT with 16 roster heads)
MAX_BODY = MAX_PAYLOAD + 256  # an Olm message: padding, MAC and PreKey header
MAX_BUNDLE = 8 * 1024  # a prekey bundle (sessions.MAX_BUNDLE_BYTES) in a PUSH or ACK
MAX_SESSIONS_PER_PEER = 4
MAX_PEERS = 1024  # Book and Queue default
MAX_QUEUED = 256  # payloads waiting for one peer's ACK
MAX_SEEN_IDS = 1024
RETRY_BASE_S = 2.0  # first backoff after a failed exchange; doubles each time
RETRY_MAX_S = 300.0
KINDS = frozenset({"sender_key", "join", "admit"})
ID_CHARS = 32  # a payload id: 16 bytes of BLAKE2b, lowercase hex

OLM_PREKEY = 0  # vodozemac's message types (AnyOlmMessage.to_parts)
OLM_NORMAL = 1


class ChannelError(ValueError):
    """The peer broke the protocol: a frame or payload it sent is not valid."""


class LocalProtocolError(RuntimeError):
    """We tried to send something the protocol does not allow (a bug here)."""


class NoSession(LookupError):
    """No Olm session to encrypt with (and no key to start one), or none of ours
    decrypts the message."""


class BadPickle(ValueError):
    """A stored peer record that does not open with this key, or is corrupt."""


class QueueFull(Exception):
    """A payload refused because the peer's queue (or the number of peers) is full."""

    def __init__(self, peer: str, message: str) -> None:
        super().__init__(message)
        self.peer = peer


class Bad(enum.Enum):
    """Why the responder did not take an item (the values are the wire strings)."""
    NO_SESSION = "no-session"  # no session of ours reads it: start afresh
    REFUSED = "refused"  # the application will not take it from this peer
    MALFORMED = "malformed"  # not an Olm message, or not a valid payload


_BAD = {b.value: b for b in Bad}


# -- payloads ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Payload:
    """What travels inside Olm: canonical JSON {"k": kind, "b": body}."""
    kind: str
    body: dict[str, Any]


def encode_payload(payload: Payload) -> bytes:
    """The plaintext of `payload`; LocalProtocolError if it may not be sent."""
    if payload.kind not in KINDS:
        raise LocalProtocolError(f"unknown payload kind {payload.kind!r}")
    if not isinstance(payload.body, dict):
        raise LocalProtocolError("a payload body is a JSON object")
    try:
        data = _canonical({"k": payload.kind, "b": payload.body})
    except TypeError as exc:
        raise LocalProtocolError(f"payload body is not JSON: {exc}") from None
    if len(data) > MAX_PAYLOAD:
        raise LocalProtocolError(f"payload of {len(data)} bytes > {MAX_PAYLOAD}")
    return data


def decode_payload(data: bytes) -> Payload:
    """A payload the peer sent; ChannelError says what is wrong with it. It must be in
    canonical form, so that one payload has one id."""
    if len(data) > MAX_PAYLOAD:
        raise ChannelError(f"payload larger than {MAX_PAYLOAD} bytes")
    doc = _loads(data, "payload")
    if not isinstance(doc, dict) or set(doc) != {"k", "b"}:
        raise ChannelError('a payload is an object {"k": kind, "b": body}')
    kind, body = doc["k"], doc["b"]
    if not isinstance(kind, str) or kind not in KINDS:
        raise ChannelError(f"unknown payload kind {str(kind)[:32]!r}")
    if not isinstance(body, dict):
        raise ChannelError("a payload body is a JSON object")
    if _canonical(doc) != data:
        raise ChannelError("payload is not canonical JSON")
    return Payload(kind, body)


def payload_id(plaintext: bytes) -> str:
    """The id a payload travels under: a hash of its plaintext, so a resent payload
    (encrypted afresh each time) is recognised."""
    return hashlib.blake2b(plaintext, digest_size=ID_CHARS // 2,
                           person=b"p2pm keys/1 id").hexdigest()


def _canonical(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def _loads(data: bytes, what: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ChannelError(f"{what} is not JSON") from None


# -- frames ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OlmMessage:
    """One Olm message as it travels: vodozemac's type and bytes."""
    type: int  # OLM_PREKEY or OLM_NORMAL
    body: bytes


@dataclass(frozen=True, slots=True)
class PushItem:
    id: str
    message: OlmMessage


@dataclass(frozen=True, slots=True)
class Push:
    items: tuple[PushItem, ...]
    bundle: bytes | None = None  # the initiator's prekey bundle, opaque here
    want_bundle: bool = False  # asks the responder for its bundle in the ACK


@dataclass(frozen=True, slots=True)
class Ack:
    ok: tuple[str, ...] = ()
    bad: Mapping[str, Bad] = field(default_factory=dict)
    bundle: bytes | None = None  # the responder's bundle, when the PUSH asked for it

    def ids(self) -> set[str]:
        return set(self.ok) | set(self.bad)


def _valid_id(value: Any) -> bool:
    return (isinstance(value, str) and len(value) == ID_CHARS
            and all(c in "0123456789abcdef" for c in value))


def _unb64(value: Any, what: str) -> bytes:
    try:
        return wire.b64d(value, what)  # the one strict base64 rule
    except errors.BusError as exc:
        raise ChannelError(exc.message) from None


def _frame(data: bytes, limit: int, frame: str, keys: set[str]) -> dict[str, Any]:
    """The JSON object of one frame, its size checked before parsing, its fields
    limited to `keys`, of our version."""
    if len(data) > limit:
        raise ChannelError(f"{frame} larger than {limit} bytes")
    doc = _loads(data, frame)
    if not isinstance(doc, dict):
        raise ChannelError(f"{frame} must be a JSON object")
    if not set(doc) <= keys:
        extra = sorted(set(doc) - keys)[:4]
        raise ChannelError(f"{frame} has unknown fields {extra}")
    v = doc.get("v")
    if not isinstance(v, int) or isinstance(v, bool) or v != VERSION:
        raise ChannelError(f"{frame} needs \"v\": {VERSION}")
    return doc


def encode_push(push: Push) -> bytes:
    """The PUSH frame; LocalProtocolError if it breaks a bound (a bug in the caller)."""
    least = 0 if push.want_bundle else 1
    if not least <= len(push.items) <= MAX_ITEMS:
        raise LocalProtocolError(f"a PUSH carries {least} to {MAX_ITEMS} items")
    if len({item.id for item in push.items}) != len(push.items):
        raise LocalProtocolError("a PUSH names each id once")
    for item in push.items:
        if not _valid_id(item.id):
            raise LocalProtocolError(f"invalid payload id {item.id!r}")
        if item.message.type not in (OLM_PREKEY, OLM_NORMAL):
            raise LocalProtocolError(f"invalid Olm message type {item.message.type!r}")
        if not 0 < len(item.message.body) <= MAX_BODY:
            raise LocalProtocolError(f"an Olm message is 1 to {MAX_BODY} bytes")
    doc: dict[str, Any] = {"v": VERSION, "items": [
        {"id": item.id, "m": {"t": item.message.type, "b": wire.b64e(item.message.body)}}
        for item in push.items]}
    _put_bundle(doc, push.bundle)
    if push.want_bundle:
        doc["want"] = True
    data = _canonical(doc)
    if len(data) > MAX_FRAME:  # cannot happen within the bounds above; kept as a guard
        raise LocalProtocolError(f"PUSH of {len(data)} bytes > {MAX_FRAME}")
    return data


def decode_push(data: bytes) -> Push:
    """A PUSH from the peer; ChannelError says what is wrong with it. The size is
    checked before anything is parsed."""
    doc = _frame(data, MAX_FRAME, "PUSH", {"v", "items", "bundle", "want"})
    want = doc.get("want", False)
    if want is not True and "want" in doc:
        raise ChannelError('PUSH "want" is true or absent')
    raw = doc.get("items")
    least = 0 if want else 1
    if not isinstance(raw, list) or not least <= len(raw) <= MAX_ITEMS:
        raise ChannelError(f"PUSH items must be a list of {least} to {MAX_ITEMS}")
    items = []
    for entry in raw:
        if not isinstance(entry, dict) or set(entry) != {"id", "m"}:
            raise ChannelError('an item is {"id": id, "m": message}')
        if not _valid_id(entry["id"]):
            raise ChannelError(f"an item id is {ID_CHARS} lowercase hex characters")
        m = entry["m"]
        if not isinstance(m, dict) or set(m) != {"t", "b"}:
            raise ChannelError('an item message is {"t": type, "b": body}')
        kind = m["t"]
        if (not isinstance(kind, int) or isinstance(kind, bool)
                or kind not in (OLM_PREKEY, OLM_NORMAL)):
            raise ChannelError(f"an Olm message type is {OLM_PREKEY} or {OLM_NORMAL}")
        body = _unb64(m["b"], "an Olm message")
        if not 0 < len(body) <= MAX_BODY:
            raise ChannelError(f"an Olm message is 1 to {MAX_BODY} bytes")
        items.append(PushItem(entry["id"], OlmMessage(kind, body)))
    if len({item.id for item in items}) != len(items):
        raise ChannelError("a PUSH names each id once")
    return Push(tuple(items), _get_bundle(doc), want)


def _put_bundle(doc: dict[str, Any], bundle: bytes | None) -> None:
    if bundle is not None:
        if not 0 < len(bundle) <= MAX_BUNDLE:
            raise LocalProtocolError(f"a bundle is 1 to {MAX_BUNDLE} bytes")
        doc["bundle"] = wire.b64e(bundle)


def _get_bundle(doc: dict[str, Any]) -> bytes | None:
    if "bundle" not in doc:
        return None
    bundle = _unb64(doc["bundle"], "bundle")
    if not 0 < len(bundle) <= MAX_BUNDLE:
        raise ChannelError(f"a bundle is 1 to {MAX_BUNDLE} bytes")
    return bundle


def encode_ack(ack: Ack) -> bytes:
    """The ACK frame; LocalProtocolError if it breaks a bound (a bug in the caller)."""
    ids = list(ack.ok) + list(ack.bad)
    if len(ids) > MAX_ITEMS or len(set(ids)) != len(ids):
        raise LocalProtocolError(f"an ACK answers at most {MAX_ITEMS} ids, each once")
    if not all(_valid_id(i) for i in ids):
        raise LocalProtocolError("an ACK names only valid payload ids")
    doc = {"v": VERSION, "ok": list(ack.ok),
           "bad": {i: Bad(why).value for i, why in ack.bad.items()}}
    _put_bundle(doc, ack.bundle)
    return _canonical(doc)


def decode_ack(data: bytes) -> Ack:
    """An ACK from the peer; ChannelError says what is wrong with it. Whether it
    answers the PUSH we sent is `apply_ack`'s check."""
    doc = _frame(data, MAX_ACK_FRAME, "ACK", {"v", "ok", "bad", "bundle"})
    ok, bad = doc.get("ok", []), doc.get("bad", {})
    if not isinstance(ok, list) or not isinstance(bad, dict):
        raise ChannelError('an ACK has "ok": [ids] and "bad": {id: reason}')
    if len(ok) + len(bad) > MAX_ITEMS:
        raise ChannelError(f"an ACK answers at most {MAX_ITEMS} ids")
    if not all(_valid_id(i) for i in ok) or not all(_valid_id(i) for i in bad):
        raise ChannelError(f"an ACK id is {ID_CHARS} lowercase hex characters")
    if len(set(ok)) != len(ok) or set(ok) & set(bad):
        raise ChannelError("an ACK answers each id once")
    reasons = {}
    for i, why in bad.items():
        if not isinstance(why, str) or why not in _BAD:
            raise ChannelError(f"unknown reason {str(why)[:32]!r} (known: {sorted(_BAD)})")
        reasons[i] = _BAD[why]
    return Ack(tuple(ok), reasons, _get_bundle(doc))


# -- sessions ----------------------------------------------------------------------


@dataclass(eq=False)
class _Held:
    session: vodozemac.Session
    confirmed: bool = False  # we have decrypted a message on it: the peer holds it


@dataclass(eq=False)
class _Peer:
    identity_key: str  # base64 Curve25519 key of the account the sessions are with
    held: list[_Held] = field(default_factory=list)  # oldest first
    current: _Held | None = None  # the one we send on (the module docstring's rule)


class Book:
    """Our Olm sessions with each peer, and which one we send on.

    `account` is our vodozemac Account, owned (and stored) by the caller: creating an
    inbound session consumes one of its one-time keys (`decrypt` says when)."""

    def __init__(self, account: vodozemac.Account, max_peers: int = MAX_PEERS) -> None:
        if max_peers < 1:
            raise ValueError("max_peers must be at least 1")
        self._account = account
        self._max_peers = max_peers
        self._peers: OrderedDict[str, _Peer] = OrderedDict()  # least recently used first

    def __contains__(self, peer: str) -> bool:
        return peer in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def session_ids(self, peer: str) -> list[str]:
        """The ids of our sessions with `peer`, oldest first."""
        state = self._peers.get(peer)
        return [h.session.session_id for h in state.held] if state else []

    def current_session_id(self, peer: str) -> str | None:
        """The id of the session we would send on to `peer` now."""
        state = self._peers.get(peer)
        return state.current.session.session_id if state and state.current else None

    def has_session(self, peer: str, identity_key: vodozemac.Curve25519PublicKey) -> bool:
        """Whether `encrypt` can go without a one-time key."""
        state = self._peers.get(peer)
        return (state is not None and state.current is not None
                and state.identity_key == identity_key.to_base64())

    def encrypt(self, peer: str, identity_key: vodozemac.Curve25519PublicKey,
                one_time_key: vodozemac.Curve25519PublicKey | None,
                plaintext: bytes) -> OlmMessage:
        """`plaintext` encrypted for `peer`, on the session we send on; a new outbound
        session from `identity_key` and `one_time_key` (a one-time or fallback key of
        theirs) when we have none with that identity. NoSession if we have none and
        no key is given; ChannelError if their keys do not make a session."""
        ik = identity_key.to_base64()
        state = self._peers.get(peer)
        if state is not None and state.identity_key != ik:
            state = None  # the peer has a new account: its old sessions are dead
        if state is None or state.current is None:
            if one_time_key is None:
                raise NoSession(f"no session with {peer} and no one-time key to start one")
            try:
                session = self._account.create_outbound_session(identity_key, one_time_key)
            except (vodozemac.SessionCreationException, vodozemac.KeyException) as exc:
                raise ChannelError(f"the peer's keys do not start a session: {exc}") from None
            if state is None:
                state = _Peer(ik)
                self._put(peer, state)
            held = _Held(session)
            self._add(state, held)
            state.current = held
        self._touch(peer)
        kind, body = state.current.session.encrypt(plaintext).to_parts()
        return OlmMessage(kind, body)

    def decrypt(self, peer: str, identity_key: vodozemac.Curve25519PublicKey | None,
                message: OlmMessage) -> tuple[bytes, bool]:
        """(plaintext, whether a new inbound session was created). Known sessions are
        tried first; a PreKey message none of them matches starts a new session, which
        needs the peer's `identity_key` (None: only known sessions are tried).
        ChannelError if it is not an Olm message; NoSession if nothing decrypts it
        (nothing then changes)."""
        try:
            olm = vodozemac.AnyOlmMessage.from_parts(message.type, message.body)
        except (vodozemac.DecodeException, OverflowError, ValueError) as exc:
            raise ChannelError(f"not an Olm message: {exc}") from None
        ik = identity_key.to_base64() if identity_key is not None else None
        state = self._peers.get(peer)
        known = state if state is not None and ik in (None, state.identity_key) else None
        prekey = olm.to_pre_key()
        for held in self._candidates(known, prekey):
            try:
                plaintext = held.session.decrypt(olm)
            except vodozemac.OlmDecryptionException:
                continue  # not this session; a failed attempt leaves it unchanged
            assert known is not None  # candidates come from it
            self._received(known, held, new=False)
            self._touch(peer)
            return plaintext, False
        if prekey is None:
            raise NoSession(f"no session with {peer} decrypts the message")
        if identity_key is None:
            raise NoSession(f"no identity key of {peer} to start a session with")
        try:
            session, plaintext = self._account.create_inbound_session(identity_key, prekey)
        except (vodozemac.SessionCreationException, vodozemac.OlmDecryptionException,
                vodozemac.KeyException) as exc:
            # An unknown (used, or never ours) one-time key, another identity, or a
            # message that does not decrypt: either way the sender must start afresh.
            raise NoSession(f"cannot start a session with {peer}: {exc}") from None
        if known is None:
            known = _Peer(identity_key.to_base64())
            self._put(peer, known)
        held = _Held(session)
        self._add(known, held)
        self._received(known, held, new=True)
        self._touch(peer)
        return plaintext, True

    def forget(self, peer: str) -> None:
        """Drop every session with `peer` (it lost its own: they cannot be used)."""
        self._peers.pop(peer, None)

    def pickle_peer(self, peer: str, key: bytes) -> bytes | None:
        """`peer`'s sessions sealed with `key` (32 bytes), for the caller to store;
        None if we have none."""
        state = self._peers.get(peer)
        if state is None:
            return None
        _check_key(key)
        sessions = [{"p": h.session.pickle(key), "c": h.confirmed} for h in state.held]
        current = state.held.index(state.current) if state.current is not None else None
        return _canonical({"v": VERSION, "peer": peer, "ik": state.identity_key,
                           "sessions": sessions, "current": current})

    def unpickle_peer(self, peer: str, data: bytes, key: bytes) -> None:
        """Load `peer`'s sessions from `pickle_peer`'s output, replacing what we hold;
        BadPickle (and nothing changes) if `key` is wrong or the record is corrupt."""
        _check_key(key)
        try:
            doc = orjson.loads(data)
            if doc.get("v") != VERSION or doc.get("peer") != peer:
                raise BadPickle(f"not a version {VERSION} record of {peer}")
            vodozemac.Curve25519PublicKey.from_base64(doc["ik"])
            held = [_Held(vodozemac.Session.from_pickle(s["p"], key), s["c"] is True)
                    for s in doc["sessions"][:MAX_SESSIONS_PER_PEER]]
            current = doc["current"]
            state = _Peer(doc["ik"], held,
                          held[current] if isinstance(current, int) else None)
        except vodozemac.PickleException as exc:
            raise BadPickle(f"stored sessions of {peer} do not open with this key "
                            f"(wrong key or corrupt): {exc}") from None
        except BadPickle:
            raise
        except (orjson.JSONDecodeError, vodozemac.KeyException, AttributeError,
                KeyError, IndexError, TypeError) as exc:
            raise BadPickle(f"stored sessions of {peer} are corrupt: {exc!r}") from None
        self._put(peer, state)

    def _candidates(self, state: _Peer | None,
                    prekey: vodozemac.PreKeyMessage | None) -> list[_Held]:
        if state is None:
            return []
        if prekey is not None:  # a PreKey message names its session
            return [h for h in state.held if h.session.session_matches(prekey)]
        rest = [h for h in reversed(state.held) if h is not state.current]
        return ([state.current] if state.current is not None else []) + rest

    @staticmethod
    def _received(state: _Peer, held: _Held, new: bool) -> None:
        current = state.current
        if new or current is None or not current.confirmed:
            state.current = held  # rules 1 and 2
        elif held is not current:  # rule 3: both confirmed, both sides pick the same
            state.current = min(current, held, key=lambda h: h.session.session_id)
        held.confirmed = True

    @staticmethod
    def _add(state: _Peer, held: _Held) -> None:
        state.held.append(held)
        while len(state.held) > MAX_SESSIONS_PER_PEER:
            # The oldest we do not send on; a newly added session becomes current
            # right after, so the one we are about to send on is never dropped.
            oldest = next(h for h in state.held if h is not state.current)
            state.held.remove(oldest)

    def _put(self, peer: str, state: _Peer) -> None:
        self._peers[peer] = state
        self._touch(peer)
        while len(self._peers) > self._max_peers:
            self._peers.popitem(last=False)

    def _touch(self, peer: str) -> None:
        self._peers.move_to_end(peer)


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != 32:
        raise ValueError("a pickle key is 32 bytes")


# -- the outgoing queue ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Queued:
    id: str
    plaintext: bytes
    since: float  # when it was queued


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an ACK settled, by payload id."""
    delivered: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()
    malformed: tuple[str, ...] = ()
    no_session: tuple[str, ...] = ()  # still queued: start a new session and retry


@dataclass
class _Line:
    items: OrderedDict[str, Queued] = field(default_factory=OrderedDict)
    failures: int = 0
    next_at: float = 0.0
    in_flight: bool = False


class Queue:
    """Payloads waiting for each peer's ACK, in the order they were queued, and when
    to try each peer again."""

    def __init__(self, max_peers: int = MAX_PEERS) -> None:
        self._max_peers = max_peers
        self._lines: dict[str, _Line] = {}

    def __len__(self) -> int:
        return sum(len(line.items) for line in self._lines.values())

    def peers(self) -> list[str]:
        """The peers with payloads waiting."""
        return [peer for peer, line in self._lines.items() if line.items]

    def pending(self, peer: str) -> tuple[Queued, ...]:
        line = self._lines.get(peer)
        return tuple(line.items.values()) if line else ()

    def put(self, peer: str, plaintext: bytes, now: float) -> str:
        """Queue `plaintext` for `peer`; returns its id. Queuing it again while it waits
        changes nothing. QueueFull if the peer has MAX_QUEUED waiting, or `max_peers`
        other peers have payloads waiting: the caller keeps it or reports it."""
        if not 0 < len(plaintext) <= MAX_PAYLOAD:
            raise ValueError(f"a payload is 1 to {MAX_PAYLOAD} bytes")
        pid = payload_id(plaintext)
        line = self._lines.get(peer)
        if line is None:
            if len(self._lines) >= self._max_peers:
                raise QueueFull(peer, f"payloads wait for {self._max_peers} peers already")
            line = self._lines[peer] = _Line(next_at=now)
        if pid in line.items:
            return pid
        if len(line.items) >= MAX_QUEUED:
            raise QueueFull(peer, f"{MAX_QUEUED} payloads already wait for {peer}")
        line.items[pid] = Queued(pid, plaintext, now)
        return pid

    def due(self, now: float) -> list[str]:
        """Peers with payloads waiting, no exchange under way, and no backoff left."""
        return [peer for peer, line in self._lines.items()
                if line.items and not line.in_flight and line.next_at <= now]

    def next_due(self) -> float | None:
        """When the next peer becomes due (for the caller's timer)."""
        times = [line.next_at for line in self._lines.values()
                 if line.items and not line.in_flight]
        return min(times) if times else None

    def take(self, peer: str, n: int = MAX_ITEMS) -> tuple[Queued, ...]:
        """The oldest `n` payloads for the next PUSH to `peer`. They stay queued, and
        the peer is not due again, until `acked` or `failed`."""
        line = self._lines.get(peer)
        if line is None or not line.items:
            return ()
        line.in_flight = True
        return tuple(line.items.values())[:min(n, MAX_ITEMS)]

    def acked(self, peer: str, ok: Iterable[str], bad: Mapping[str, Bad],
              now: float) -> Outcome:
        """Settle an ACK. Delivered, refused and malformed payloads leave the queue;
        no-session ones stay, and the peer backs off as after a failure (a stale
        bundle must not make us loop). Ids we do not hold are ignored."""
        line = self._lines.get(peer)
        if line is None:
            return Outcome()
        line.in_flight = False
        delivered = tuple(i for i in ok if line.items.pop(i, None) is not None)
        by_reason: dict[Bad, list[str]] = {b: [] for b in Bad}
        for i, why in bad.items():
            if i in line.items:
                by_reason[why].append(i)
                if why is not Bad.NO_SESSION:
                    del line.items[i]
        outcome = Outcome(delivered, tuple(by_reason[Bad.REFUSED]),
                          tuple(by_reason[Bad.MALFORMED]), tuple(by_reason[Bad.NO_SESSION]))
        if outcome.no_session:
            self.failed(peer, now)
        else:
            line.failures, line.next_at = 0, now
        self._prune(peer)
        return outcome

    def failed(self, peer: str, now: float) -> float | None:
        """The exchange with `peer` failed (no stream, no ACK, a broken ACK): try again
        after a backoff that doubles each time, up to RETRY_MAX_S. Returns when."""
        line = self._lines.get(peer)
        if line is None:
            return None
        line.in_flight = False
        line.failures += 1
        line.next_at = now + min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (line.failures - 1))
        return line.next_at

    def drop(self, peer: str) -> tuple[Queued, ...]:
        """Stop sending to `peer`; returns what was waiting, for the caller to report."""
        line = self._lines.pop(peer, None)
        return tuple(line.items.values()) if line else ()

    def _prune(self, peer: str) -> None:
        line = self._lines.get(peer)
        if line is not None and not line.items and not line.in_flight:
            del self._lines[peer]


# -- payloads already delivered to us ----------------------------------------------


class Seen:
    """The (peer, id) of payloads already handed to the application, the last
    `max_ids` of them (FIFO: a resend comes soon after the original, or not at all)."""

    def __init__(self, max_ids: int = MAX_SEEN_IDS) -> None:
        self._max = max_ids
        self._ids: OrderedDict[tuple[str, str], None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def has(self, peer: str, pid: str) -> bool:
        return (peer, pid) in self._ids

    def add(self, peer: str, pid: str) -> bool:
        """Record it; False if it was already there."""
        if (peer, pid) in self._ids:
            return False
        self._ids[(peer, pid)] = None
        while len(self._ids) > self._max:
            self._ids.popitem(last=False)
        return True


# -- one exchange, both sides -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Response:
    ack: Ack
    delivered: tuple[Payload, ...]  # new payloads, in PUSH order, for the application
    new_session: bool  # a one-time key of ours was used: store the account again


def respond(book: Book, seen: Seen, peer: str,
            identity_key: vodozemac.Curve25519PublicKey | None, push: Push,
            accept: Callable[[str, Payload], bool] = lambda peer, payload: True,
            ) -> Response:
    """The responder's side of one exchange: decrypt each item of `push` from `peer`,
    hand over the new payloads `accept` takes, and answer each item in the ACK.
    `identity_key` is the peer's, from its bundle (None if we have none)."""
    ok: list[str] = []
    bad: dict[str, Bad] = {}
    delivered: list[Payload] = []
    new_session = False
    for item in push.items:
        try:
            plaintext, began = book.decrypt(peer, identity_key, item.message)
        except (NoSession, ChannelError) as exc:
            if seen.has(peer, item.id):
                ok.append(item.id)  # a replayed frame: Olm will not decrypt it twice
            else:
                bad[item.id] = Bad.NO_SESSION if isinstance(exc, NoSession) else Bad.MALFORMED
            continue
        new_session = new_session or began
        if payload_id(plaintext) != item.id:
            bad[item.id] = Bad.MALFORMED
            continue
        if seen.has(peer, item.id):
            ok.append(item.id)  # a resend after a lost ACK: handed over already
            continue
        try:
            payload = decode_payload(plaintext)
        except ChannelError:
            bad[item.id] = Bad.MALFORMED
            continue
        if not accept(peer, payload):
            bad[item.id] = Bad.REFUSED
            continue
        seen.add(peer, item.id)
        delivered.append(payload)
        ok.append(item.id)
    return Response(Ack(tuple(ok), bad), tuple(delivered), new_session)


def prepare_push(book: Book, queue: Queue, peer: str,
                 identity_key: vodozemac.Curve25519PublicKey,
                 one_time_key: vodozemac.Curve25519PublicKey | None, now: float,
                 bundle: bytes | None = None) -> Push | None:
    """The initiator's PUSH to `peer`: the next queued payloads, each encrypted (see
    `Book.encrypt` for the keys). None if nothing waits. NoSession if we have no
    session and no one-time key (the queue is untouched: fetch their bundle); on a
    ChannelError (their keys are bad) the peer backs off."""
    if not queue.pending(peer):
        return None
    if one_time_key is None and not book.has_session(peer, identity_key):
        raise NoSession(f"no session with {peer}: its bundle is needed")
    taken = queue.take(peer)
    try:
        items = tuple(PushItem(q.id, book.encrypt(peer, identity_key, one_time_key,
                                                  q.plaintext)) for q in taken)
    except ChannelError:
        queue.failed(peer, now)
        raise
    return Push(items, bundle)


def apply_ack(book: Book, queue: Queue, peer: str, sent: Push, ack: Ack,
              now: float) -> Outcome:
    """The initiator settles `peer`'s ACK to `sent`. ChannelError (nothing changes;
    the caller counts it as `Queue.failed`) unless it answers exactly the ids sent.
    A no-session answer forgets every session with the peer."""
    sent_ids = {item.id for item in sent.items}
    if ack.ids() != sent_ids:
        raise ChannelError("the ACK does not answer the items of our PUSH")
    outcome = queue.acked(peer, ack.ok, ack.bad, now)
    if outcome.no_session:
        book.forget(peer)
    return outcome
