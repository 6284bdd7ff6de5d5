"""Catch-up sync (`/p2pm/sync/2.0.0`) without I/O: the frames, the session state
machine that orders them, and the range arithmetic that decides what each side is
missing.

Theory of operation
-------------------
GossipSub only reaches members who are online when a message goes out. Whatever a
member missed, it gets from any other member it meets, by reconciling per-author
sequence ranges (storage's `author_ranges`): a message is identified by (author, seq),
and every author numbers their messages 1, 2, 3... in each conversation.

One stream per conversation and pair of peers; every frame is one uvarint-delimited
JSON object:

    initiator                                   responder
    OPEN {nonce}                        ->
                                        <-      OPEN {nonce}
    PROOF {proof}                       ->                      (responder checks it)
                                        <-      PROOF {proof}
    (initiator checks it)
    HELLO {ranges, addrs}               ->  <-  HELLO {ranges, addrs}
    ENVS {envs: [...]} * n              ->  <-  ENVS {envs: [...]} * n
    DONE                                ->  <-  DONE
    HAVE {ranges}                       ->  <-  HAVE {ranges}      (after their DONE)
    close                                       close

Membership is proven both ways before anything about the conversation is sent. Each
side contributes a fresh random nonce; a proof is a keyed hash (the conversation's
content key) over the role, the conversation id, both peer ids and both nonces, so it
is worth nothing to anyone else, on another stream, or in the other direction. The
initiator's proof also names the conversation to a member without naming it to
anyone else: the responder finds the conversation whose key it verifies under. Until
a side has proven itself, its frames are small (PRE_PROOF_FRAME, checked before any
parsing) and carry only random-looking bytes: a peer without the secret learns
nothing, and costs us a length check and one hash per conversation.

After the HELLOs each side sends, in ENVS batches, the envelopes it holds and the
other lacks (`missing(mine, theirs)`), then DONE. Envelopes are the encrypted,
author-signed ones storage keeps, so any member relays any author's messages and the
receiver verifies each one as if it came over gossip. HAVE carries the ranges after
storing what arrived: for an author, the other side's ranges are a receipt for every
message they cover (the stream is authenticated by the transport, so a peer vouches
only for itself). `addrs` shares the addresses known for the conversation's members,
which is how a member who joined through one inviter finds the others; a listed peer
is a hint to dial, never a member (membership comes only from a proof or a verified
author signature).

The session's ordering rules are the table `TRANSITIONS` below: for each side, the
state a frame moves it from and to, and the state the other side must have reached
first. Breaking it is `SyncError` when the peer did it and `LocalProtocolError` when
we did. Peer ids from the wire pass `valid_peer_id`; an invalid one is dropped and
counted (`Hello.dropped`), never kept.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from p2pm.common import identity

PROTOCOL = "/p2pm/sync/2.0.0"
MAX_FRAME = 1024 * 1024
PRE_PROOF_FRAME = 256  # OPEN and PROOF: a nonce or a hash in a small JSON object
NONCE_BYTES = 16
PROOF_BYTES = 32
ENVS_PER_FRAME = 64
MAX_AUTHORS = 1024
MAX_RANGES = 1024  # per author; a peer with more holes sends the first ones
MAX_PEERS_ADDRS = 64
MAX_ADDRS = 8
MAX_SEQ = 2**63 - 1

Ranges = dict[str, list[tuple[int, int]]]


class SyncError(ValueError):
    """A frame that breaks the protocol (the peer did)."""


class FrameTooLarge(SyncError):
    """A frame above what the peer may send in its state (checked before parsing)."""


class NotAMember(SyncError):
    """The peer's proof does not verify: it does not hold the conversation's secret."""


class LocalProtocolError(RuntimeError):
    """We tried to send a frame the protocol does not allow now (a bug here)."""


def valid_peer_id(value: Any) -> bool:
    """The one check for a peer id that came from the wire: a canonical base58 libp2p
    Ed25519 peer id."""
    return isinstance(value, str) and 0 < len(value) <= 128 and _valid_peer_id(value)


@functools.lru_cache(maxsize=4096)  # bounded: the same few ids recur, strangers' do not
def _valid_peer_id(value: str) -> bool:
    try:
        identity.public_key_from_peer_id(value)
    except identity.IdentityError:
        return False
    return True


def proof(key: bytes, conversation: str, role: str, initiator: str, responder: str,
          initiator_nonce: bytes, responder_nonce: bytes) -> bytes:
    """What `role` ("initiator" or "responder") shows to prove it holds `key` (the
    content key; the hash is keyed with a key derived from it, not with it)."""
    mac_key = hashlib.blake2b(b"p2pm sync/2 proof key", key=key, digest_size=32).digest()
    data = b"\n".join([b"p2pm sync/2 proof", role.encode(), conversation.encode(),
                       initiator.encode(), responder.encode(), initiator_nonce,
                       responder_nonce])
    return hashlib.blake2b(data, key=mac_key, digest_size=PROOF_BYTES).digest()


# -- frames ------------------------------------------------------------------------


@dataclass(frozen=True)
class Open:
    nonce: bytes


@dataclass(frozen=True)
class Proof:
    proof: bytes


@dataclass(frozen=True)
class Hello:
    ranges: Ranges
    addrs: dict[str, list[str]] = field(default_factory=dict)
    dropped: int = field(default=0, compare=False)  # invalid peer ids left out


@dataclass(frozen=True)
class Envs:
    envelopes: tuple[bytes, ...]


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class Have:
    ranges: Ranges
    dropped: int = field(default=0, compare=False)


Frame = Open | Proof | Hello | Envs | Done | Have


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encode(frame: Frame) -> bytes:
    if isinstance(frame, Open):
        doc: dict[str, Any] = {"t": "open", "nonce": _b64(frame.nonce)}
    elif isinstance(frame, Proof):
        doc = {"t": "proof", "proof": _b64(frame.proof)}
    elif isinstance(frame, Hello):
        doc = {"t": "hello", "ranges": _ranges_out(frame.ranges), "addrs": frame.addrs}
    elif isinstance(frame, Envs):
        doc = {"t": "envs", "envs": [_b64(e) for e in frame.envelopes]}
    elif isinstance(frame, Done):
        doc = {"t": "done"}
    else:
        doc = {"t": "have", "ranges": _ranges_out(frame.ranges)}
    return orjson.dumps(doc)


def _ranges_out(ranges: Ranges) -> dict[str, list[list[int]]]:
    return {a: [[lo, hi] for lo, hi in spans[:MAX_RANGES]]
            for a, spans in list(ranges.items())[:MAX_AUTHORS]}


def decode(data: bytes, limit: int = MAX_FRAME) -> Frame:
    """One frame from the peer; SyncError says what is wrong with it. The size is
    checked before anything is parsed."""
    if len(data) > limit:
        raise FrameTooLarge(f"frame too large ({len(data)} > {limit} bytes)")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise SyncError("frame is not JSON") from None
    if not isinstance(doc, dict):
        raise SyncError("frame must be an object")
    kind = doc.get("t")
    if kind == "open":
        nonce = _unb64(doc.get("nonce"), "nonce")
        if len(nonce) != NONCE_BYTES:
            raise SyncError(f"a nonce is {NONCE_BYTES} bytes")
        return Open(nonce)
    if kind == "proof":
        got = _unb64(doc.get("proof"), "proof")
        if len(got) != PROOF_BYTES:
            raise SyncError(f"a proof is {PROOF_BYTES} bytes")
        return Proof(got)
    if kind == "hello":
        ranges, bad = check_ranges(doc.get("ranges"))
        addrs, bad_addrs = _check_addrs(doc.get("addrs", {}))
        return Hello(ranges, addrs, bad + bad_addrs)
    if kind == "envs":
        envs = doc.get("envs")
        if not isinstance(envs, list) or len(envs) > ENVS_PER_FRAME:
            raise SyncError(f"envs must be a list of at most {ENVS_PER_FRAME}")
        return Envs(tuple(_unb64(e, "envelope") for e in envs))
    if kind == "done":
        return Done()
    if kind == "have":
        ranges, bad = check_ranges(doc.get("ranges"))
        return Have(ranges, bad)
    raise SyncError(f"unknown frame type {str(kind)[:32]!r}")


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise SyncError(f"{what} must be base64")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SyncError(f"{what} is not valid base64") from None


def check_ranges(raw: Any) -> tuple[Ranges, int]:
    """Validate {author: [[lo, hi], ...]}: ascending, disjoint, 1 <= lo <= hi. An
    author that is not a valid peer id is dropped (and counted in the second value);
    anything else malformed is a SyncError."""
    if not isinstance(raw, dict) or len(raw) > MAX_AUTHORS:
        raise SyncError(f"ranges must be an object of at most {MAX_AUTHORS} authors")
    out: Ranges = {}
    dropped = 0
    for author, spans in raw.items():
        if not isinstance(spans, list) or len(spans) > MAX_RANGES:
            raise SyncError(f"at most {MAX_RANGES} ranges per author")
        last = 0
        checked = []
        for span in spans:
            if (not isinstance(span, list) or len(span) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in span)):
                raise SyncError("a range is [lo, hi]")
            lo, hi = span
            if not last < lo <= hi <= MAX_SEQ:
                raise SyncError("ranges must be ascending and disjoint, 1 <= lo <= hi")
            checked.append((lo, hi))
            last = hi
        if valid_peer_id(author):
            out[author] = checked
        else:
            dropped += 1
    return out, dropped


def _check_addrs(raw: Any) -> tuple[dict[str, list[str]], int]:
    if not isinstance(raw, dict) or len(raw) > MAX_PEERS_ADDRS:
        raise SyncError(f"addrs must be an object of at most {MAX_PEERS_ADDRS} peers")
    out: dict[str, list[str]] = {}
    dropped = 0
    for peer, addrs in raw.items():
        if not isinstance(addrs, list) or len(addrs) > MAX_ADDRS or not all(
                isinstance(a, str) and 0 < len(a) <= 512 for a in addrs):
            raise SyncError("addrs must map peer ids to lists of multiaddrs")
        if valid_peer_id(peer):
            out[peer] = list(addrs)
        else:
            dropped += 1
    return out, dropped


# -- the session -------------------------------------------------------------------


class Role(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


class State(enum.IntEnum):
    """How far one side has got, by the frames it has sent (ordered)."""
    IDLE = 0
    OPENED = 1
    PROVEN = 2  # sent a proof (and, as seen by the other side, one that verified)
    HELLOED = 3
    DONE = 4
    FINISHED = 5  # sent HAVE
    FAILED = -1  # the session is over; below every state, so it satisfies no rule


I, R = Role.INITIATOR, Role.RESPONDER

# (side, its state, frame it sends) -> (its next state, (other side, state it must
# have reached first) or None). Everything not listed is a protocol error.
TRANSITIONS: dict[tuple[Role, State, type], tuple[State, tuple[Role, State] | None]] = {
    (I, State.IDLE, Open): (State.OPENED, None),
    (R, State.IDLE, Open): (State.OPENED, (I, State.OPENED)),
    (I, State.OPENED, Proof): (State.PROVEN, (R, State.OPENED)),  # needs its nonce
    (R, State.OPENED, Proof): (State.PROVEN, (I, State.PROVEN)),  # after checking it
    (I, State.PROVEN, Hello): (State.HELLOED, (R, State.PROVEN)),  # after checking it
    (R, State.PROVEN, Hello): (State.HELLOED, None),
    (I, State.HELLOED, Envs): (State.HELLOED, None),
    (R, State.HELLOED, Envs): (State.HELLOED, None),
    (I, State.HELLOED, Done): (State.DONE, None),
    (R, State.HELLOED, Done): (State.DONE, None),
    # HAVE says what we hold after storing everything they sent.
    (I, State.DONE, Have): (State.FINISHED, (R, State.DONE)),
    (R, State.DONE, Have): (State.FINISHED, (I, State.DONE)),
}


def _other(role: Role) -> Role:
    return R if role is I else I


class Session:
    """One side of one sync stream. Feed it what arrives (`receive`), ask it for
    what to send (`send`, `open`, `prove`); it never touches a stream.

    `secrets` maps conversation id -> content key: the initiator's one
    conversation, or every conversation the responder would serve this peer. The
    responder learns which one from the initiator's proof (`conversation`)."""

    def __init__(self, role: Role, me: str, peer: str, nonce: bytes,
                 secrets: Mapping[str, bytes]) -> None:
        if len(nonce) != NONCE_BYTES:
            raise ValueError(f"a nonce is {NONCE_BYTES} bytes")
        if role is I and len(secrets) != 1:
            raise ValueError("an initiator syncs one conversation")
        self.role = role
        self.states = {I: State.IDLE, R: State.IDLE}
        self._ids = (me, peer) if role is I else (peer, me)
        self._nonces: dict[Role, bytes] = {role: nonce}
        self._secrets = dict(secrets)
        self.conversation: str | None = next(iter(secrets)) if role is I else None

    @property
    def ours(self) -> State:
        return self.states[self.role]

    @property
    def theirs(self) -> State:
        return self.states[_other(self.role)]

    @property
    def proven(self) -> bool:
        """Both sides proved membership: conversation data may flow."""
        return self.states[I] >= State.PROVEN and self.states[R] >= State.PROVEN

    @property
    def finished(self) -> bool:
        return self.states[I] == self.states[R] == State.FINISHED

    def receive_limit(self) -> int:
        """The largest frame the peer may send now: small until it proved itself."""
        return MAX_FRAME if self.theirs >= State.PROVEN else PRE_PROOF_FRAME

    def _step(self, side: Role, frame: Frame) -> None:
        state = self.states[side]
        rule = TRANSITIONS.get((side, state, type(frame)))
        if state is State.FAILED or rule is None:
            raise ValueError(f"{side.value} may not send {type(frame).__name__.upper()} "
                             f"in state {state.name}")
        nxt, needs = rule
        if needs is not None and self.states[needs[0]] < needs[1]:
            raise ValueError(f"{side.value} may not send {type(frame).__name__.upper()} "
                             f"before the {needs[0].value} is {needs[1].name}")
        self.states[side] = nxt

    def send(self, frame: Frame) -> bytes:
        """The bytes of `frame`, if the protocol lets us send it now."""
        try:
            self._step(self.role, frame)
        except ValueError as exc:
            raise LocalProtocolError(str(exc)) from None
        return encode(frame)

    def open(self) -> bytes:
        return self.send(Open(self._nonces[self.role]))

    def prove(self) -> bytes:
        if self.conversation is None or _other(self.role) not in self._nonces:
            raise LocalProtocolError("nothing to prove yet")
        return self.send(Proof(self._proof(self.role, self.conversation)))

    def receive(self, data: bytes) -> Frame:
        """The peer's next frame, checked against the table; SyncError (the peer broke
        the protocol, or NotAMember) ends the session."""
        side = _other(self.role)
        try:
            if self.states[side] is State.FAILED:
                raise SyncError("the session has failed")
            frame = decode(data, self.receive_limit())
            self._step(side, frame)
        except ValueError as exc:  # SyncError is one
            self.states[side] = State.FAILED
            raise exc if isinstance(exc, SyncError) else SyncError(str(exc)) from None
        if isinstance(frame, Open):
            self._nonces[side] = frame.nonce
        elif isinstance(frame, Proof):
            self._check_proof(side, frame.proof)
        return frame

    def _proof(self, role: Role, conversation: str) -> bytes:
        return proof(self._secrets[conversation], conversation, role.value, *self._ids,
                     self._nonces[I], self._nonces[R])

    def _check_proof(self, side: Role, got: bytes) -> None:
        # Every candidate is hashed (no early exit), so timing says nothing of which.
        match = None
        if len(self._nonces) < 2:  # cannot happen through the table; refuse anyway
            self.states[side] = State.FAILED
            raise NotAMember("a proof before both nonces")
        for conv in self._secrets if self.conversation is None else [self.conversation]:
            if hmac.compare_digest(got, self._proof(side, conv)) and match is None:
                match = conv
        if match is None:
            self.states[side] = State.FAILED
            raise NotAMember("the peer's membership proof does not verify")
        self.conversation = match


# -- range arithmetic --------------------------------------------------------------


def from_storage(authors: dict[str, Any]) -> Ranges:
    """storage.author_ranges' "authors" as Ranges."""
    return {a: [(int(lo), int(hi)) for lo, hi in info.get("ranges", [])]
            for a, info in authors.items()}


def subtract(spans: Iterable[tuple[int, int]],
             minus: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of `spans` not covered by `minus` (both ascending and disjoint)."""
    out: list[tuple[int, int]] = []
    cuts = list(minus)
    for lo, hi in spans:
        cur = lo
        for clo, chi in cuts:
            if chi < cur or clo > hi:
                continue
            if clo > cur:
                out.append((cur, clo - 1))
            cur = max(cur, chi + 1)
            if cur > hi:
                break
        if cur <= hi:
            out.append((cur, hi))
    return out


def missing(mine: Ranges, theirs: Ranges) -> Ranges:
    """What I hold and they do not, per author."""
    out: Ranges = {}
    for author, spans in mine.items():
        left = subtract(spans, theirs.get(author, []))
        if left:
            out[author] = left
    return out


def holds(ranges: Ranges, author: str, seq: int) -> bool:
    return any(lo <= seq <= hi for lo, hi in ranges.get(author, ()))


def contiguous(spans: list[tuple[int, int]]) -> int:
    """The highest seq such that every seq from 1 to it is held (0: seq 1 missing)."""
    return spans[0][1] if spans and spans[0][0] == 1 else 0
