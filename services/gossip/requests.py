"""Message requests, blocking and profiles: how a direct message from someone the
recipient has not added reaches them, and how strangers are kept in bounds.

Why a request protocol at all: a direct chat exists on a node only once it called
`direct_open` for the peer (adding a contact and writing to them does). Until then its
gossip is not subscribed to the chat's topic and refuses the sender's sync HELLO (an
unknown conversation), so a stranger's message used to stay `pending` on the sender's
side for good and the recipient was never told.

Theory of operation (`/p2pm/request/1.0.0`, one request and one answer a stream,
orjson frames like sync's):

* Sender. Once a second, for each direct chat whose peer is connected, owes us
  receipts, and has not subscribed to the chat's topic, the sender opens a request
  stream and sends ASK {conv, proof, profile, envs}: the conversation id, the request
  proof (`Keys.request_proof`, bound to both peers), its signed profile (a node
  invite with its name and addresses) and the envelopes of up to MAX_HELD_PER_SENDER owed messages,
  oldest first. The answer says what became of them:
    requested  held until the recipient accepts; those messages show "requested"
    known      the recipient has the chat (a contact: accepted at once); sync follows
    full, slow the recipient's request table is full, or we ask too often: asked again
    refused    the recipient blocked us; those messages show "refused"
  It asks again every RETRY_S (RETRY_SLOW_S after slow, RETRY_FULL_S after full,
  RETRY_REFUSED_S after a refusal) while the peer stays unsubscribed, and within
  MIN_ASK_GAP_S when a new message can join a request already held.
* Recipient. In this order, cheapest first: a blocked peer is refused (counted); the
  per-peer and global rate limits (token buckets) answer `slow`; only then does it pay
  for the X25519 (a keystore call) that tells whether `conv` is the direct chat of the
  stream's authenticated peer and the proof matches; a peer that is a contact is
  accepted at once. Otherwise every envelope is opened and must be a message written
  by that peer; the request is kept in storage and announced as
  `gossip.request.received`.
* Accepting opens the direct chat and stores the held messages as received, which
  queues the receipts; subscribing makes the sender sync, which delivers the rest. So
  the sender's messages turn `delivered`.
* PROFILE {} asks a peer for its signed profile; it is answered only to a peer that
  shares a conversation with us (a room's members learn each other's names), and
  verified against the peer's key before its name is shown.

Bounds (a stranger has any number of peer ids and unlimited bytes):
* at most MAX_SENDERS pending requests; when full, one untouched for REQUEST_TTL_S is
  dropped to make room, else the new sender is answered `full` (its messages stay
  pending on its side: nothing is lost, it asks again later);
* at most MAX_HELD_PER_SENDER messages held per sender (the oldest); the sender keeps
  the rest pending and they arrive by sync once the request is accepted;
* rate-limit state for at most MAX_TRACKED peers (the least recently seen is forgotten;
  the global bucket still bounds the total);
* at most MAX_BLOCKED blocked peers (a further block is refused with an error) and
  MAX_PROFILES known names (the oldest learnt is forgotten).
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson

PROTOCOL = "/p2pm/request/1.0.0"
MAX_FRAME = 512 * 1024
MAX_HELD_PER_SENDER = 10
MAX_SENDERS = 50
REQUEST_TTL_S = 14 * 86400.0
MAX_TRACKED = 1024
MAX_BLOCKED = 10_000
MAX_PROFILES = 4096
MAX_PROFILE_CHARS = 4096
MAX_REQUESTED_IDS = 1000  # per conversation: our messages awaiting acceptance
# A sender may ask PEER_BURST times at once, then once per PEER_REFILL_S; all strangers
# together GLOBAL_BURST at once, then one per GLOBAL_REFILL_S.
PEER_BURST, PEER_REFILL_S = 4, 5.0
GLOBAL_BURST, GLOBAL_REFILL_S = 30, 0.5
RETRY_S = 15.0
MIN_ASK_GAP_S = 1.0  # a new message joins a pending request this soon
RETRY_SLOW_S = 2 * PEER_REFILL_S  # the sender's bucket has refilled by then
RETRY_FULL_S = 60.0
RETRY_REFUSED_S = 3600.0
PROFILE_RETRY_S = 600.0
PROFILE_SOON_S = 5.0  # after a refused or unanswered profile request
ANSWERS = ("requested", "known", "full", "slow", "refused")
MAX_MESSAGE_ID = 128


class RequestError(ValueError):
    """A malformed request frame; the message says what is wrong."""


# -- frames ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ask:
    conversation: str
    proof: bytes
    profile: str
    envelopes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Answer:
    status: str
    held: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AskProfile:
    pass


@dataclass(frozen=True, slots=True)
class Profile:
    profile: str


Frame = Ask | Answer | AskProfile | Profile


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any, what: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (AttributeError, UnicodeEncodeError, binascii.Error, ValueError):
        raise RequestError(f"{what} must be base64") from None


def encode(frame: Frame) -> bytes:
    if isinstance(frame, Ask):
        return orjson.dumps({"t": "ask", "conv": frame.conversation,
                             "proof": _b64(frame.proof), "profile": frame.profile,
                             "envs": [_b64(e) for e in frame.envelopes]})
    if isinstance(frame, Answer):
        return orjson.dumps({"t": "answer", "status": frame.status,
                             "held": list(frame.held)})
    if isinstance(frame, AskProfile):
        return orjson.dumps({"t": "profile?"})
    return orjson.dumps({"t": "profile", "profile": frame.profile})


def _profile_text(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_PROFILE_CHARS:
        raise RequestError(f"profile must be a string of at most {MAX_PROFILE_CHARS}")
    return value


def _ask(doc: dict[str, Any]) -> Ask:
    conv, envs = doc.get("conv"), doc.get("envs")
    if not isinstance(conv, str) or not 0 < len(conv) <= 128:
        raise RequestError("conv must be a conversation id")
    if not isinstance(envs, list) or len(envs) > MAX_HELD_PER_SENDER:
        raise RequestError(f"envs must be a list of at most {MAX_HELD_PER_SENDER}")
    return Ask(conv, _unb64(doc.get("proof"), "proof"), _profile_text(doc.get("profile", "")),
               tuple(_unb64(e, "envelope") for e in envs))


def _answer(doc: dict[str, Any]) -> Answer:
    status, held = doc.get("status"), doc.get("held", [])
    if status not in ANSWERS:
        raise RequestError(f"unknown answer {str(status)[:32]!r}")
    if not isinstance(held, list) or len(held) > MAX_HELD_PER_SENDER or not all(
            isinstance(h, str) and 0 < len(h) <= MAX_MESSAGE_ID for h in held):
        raise RequestError("held must be a short list of message ids")
    return Answer(status, tuple(held))


_DECODERS: dict[str, Any] = {
    "ask": _ask, "answer": _answer, "profile?": lambda _doc: AskProfile(),
    "profile": lambda doc: Profile(_profile_text(doc.get("profile"))),
}


def decode(data: bytes) -> Frame:
    """One frame from the peer; RequestError says what is wrong with it (checked
    before anything in it is used: size, JSON, type, then each field)."""
    try:
        doc = orjson.loads(data) if len(data) <= MAX_FRAME else None
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        raise RequestError("a frame is one JSON object of at most "
                           f"{MAX_FRAME} bytes")
    decoder = _DECODERS.get(doc.get("t"))  # type: ignore[arg-type]
    if decoder is None:
        raise RequestError(f"unknown frame type {str(doc.get('t'))[:32]!r}")
    return decoder(doc)  # type: ignore[no-any-return]


# -- the recipient's table ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Held:
    id: str
    seq: int
    ts: float
    text: str
    envelope: bytes


@dataclass
class Pending:
    peer: str
    name: str
    conversation: str
    addrs: tuple[str, ...]
    first_ts: float
    last_ts: float
    messages: dict[str, Held] = field(default_factory=dict)

    def doc(self) -> dict[str, Any]:
        """What storage keeps: the envelopes, never the text (a stolen disk shows no
        message text; the loader opens them again)."""
        return {"peer": self.peer, "name": self.name, "conversation": self.conversation,
                "addrs": list(self.addrs), "first_ts": self.first_ts,
                "last_ts": self.last_ts,
                "messages": [{"id": h.id, "seq": h.seq, "ts": h.ts, "env": _b64(h.envelope)}
                             for h in self.messages.values()]}

    @classmethod
    def from_doc(cls, doc: dict[str, Any], text: Any = None) -> Pending:
        """`text(envelope)` gives each message's text back (from its envelope)."""
        held = {}
        for m in doc["messages"]:
            env = base64.b64decode(m["env"])
            held[m["id"]] = Held(m["id"], int(m["seq"]), float(m["ts"]),
                                 text(env) if text else "", env)
        return cls(doc["peer"], doc["name"], doc["conversation"], tuple(doc["addrs"]),
                   float(doc["first_ts"]), float(doc["last_ts"]), held)


class TokenBuckets:
    """Token buckets per key, for at most `max_keys` keys: the least recently used
    key is forgotten when a new one comes (it starts full again)."""

    def __init__(self, burst: int, refill_s: float, max_keys: int) -> None:
        self.burst, self.refill_s, self.max_keys = burst, refill_s, max_keys
        self._tokens: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str, now: float) -> bool:
        tokens, at = self._tokens.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - at) / self.refill_s)
        ok = tokens >= 1.0
        self._tokens[key] = (tokens - 1.0 if ok else tokens, now)
        while len(self._tokens) > self.max_keys:
            self._tokens.popitem(last=False)
        return ok

    def __len__(self) -> int:
        return len(self._tokens)


class RequestBox:
    """Pending requests, blocked peers and the rate limits, without I/O."""

    def __init__(self) -> None:
        self.pending: dict[str, Pending] = {}
        self.blocked: set[str] = set()
        self.counters: Counter[str] = Counter()
        self._per_peer = TokenBuckets(PEER_BURST, PEER_REFILL_S, MAX_TRACKED)
        self._all = TokenBuckets(GLOBAL_BURST, GLOBAL_REFILL_S, 1)

    def admit(self, peer: str, now: float) -> str | None:
        """None if a request from `peer` may be looked at now, else the answer."""
        if peer in self.blocked:
            self.counters["requests_refused_blocked"] += 1
            return "refused"
        if not self._per_peer.allow(peer, now) or not self._all.allow("*", now):
            self.counters["requests_rate_limited"] += 1
            return "slow"
        return None

    def hold(self, peer: str, name: str, addrs: tuple[str, ...], conversation: str,
             messages: list[Held], now: float) -> tuple[str, list[str], str | None]:
        """Keep `messages` of `peer`'s request: (answer, ids held, peer evicted)."""
        evicted = None
        entry = self.pending.get(peer)
        if entry is None:
            if len(self.pending) >= MAX_SENDERS:
                oldest = min(self.pending.values(), key=lambda p: p.last_ts)
                if now - oldest.last_ts < REQUEST_TTL_S:
                    self.counters["requests_full"] += 1
                    return "full", [], None
                evicted = oldest.peer
                del self.pending[evicted]
                self.counters["requests_expired"] += 1
            entry = self.pending[peer] = Pending(peer, name, conversation, addrs, now, now)
            self.counters["requests_received"] += 1
        entry.last_ts = now
        if name:
            entry.name = name
        if addrs:
            entry.addrs = addrs
        for held in sorted(messages, key=lambda h: h.seq):
            if held.id not in entry.messages and len(entry.messages) >= MAX_HELD_PER_SENDER:
                self.counters["request_messages_not_held"] += 1
                continue
            entry.messages[held.id] = held
        ids = [m.id for m in messages if m.id in entry.messages]
        return "requested", ids, evicted

    def block(self, peer: str) -> bool:
        """True if newly blocked; ValueError when the block list is full."""
        if peer in self.blocked:
            return False
        if len(self.blocked) >= MAX_BLOCKED:
            raise ValueError(f"at most {MAX_BLOCKED} peers can be blocked")
        self.blocked.add(peer)
        self.pending.pop(peer, None)
        return True


# -- the sender's side -------------------------------------------------------------


@dataclass
class Asking:
    """When to ask each peer (again), and what became of our asked messages."""

    next_at: dict[str, float] = field(default_factory=dict)
    last: dict[str, tuple[float, str]] = field(default_factory=dict)  # when, answer
    # conversation -> message id -> "requested" | "refused", oldest first
    marked: dict[str, dict[str, str]] = field(default_factory=dict)

    def due(self, peer: str, conversation: str, owed: list[str], now: float) -> bool:
        """Whether to ask `peer` now about our `owed` messages: at the retry time,
        or soon when a message the recipient has not held yet came since it answered
        `requested` (so it joins the request; no more than it would hold)."""
        if now >= self.next_at.get(peer, 0.0):
            return True
        when, status = self.last.get(peer, (-1e9, ""))
        marks = self.marked.get(conversation, {})
        held = sum(1 for i in owed if marks.get(i) == "requested")
        return status == "requested" and now - when >= MIN_ASK_GAP_S and \
            held < MAX_HELD_PER_SENDER and any(i not in marks for i in owed)

    def asked(self, peer: str, now: float) -> None:
        self.next_at[peer] = now + RETRY_S
        self.last[peer] = (now, "")

    def answered(self, peer: str, status: str, now: float) -> None:
        delay = {"full": RETRY_FULL_S, "slow": RETRY_SLOW_S,
                 "refused": RETRY_REFUSED_S}.get(status, RETRY_S)
        self.next_at[peer] = now + delay
        self.last[peer] = (now, status)

    def still_refused(self, peer: str, conversation: str, owed: list[str]) -> list[str]:
        """Our messages owed to a peer whose last answer was `refused`, not yet shown
        refused: marked refused now, and returned. They blocked us, and we ask again
        only after RETRY_REFUSED_S; without this, a message written after their answer
        stayed "pending" for that hour, the sender never learning it was refused."""
        if self.last.get(peer, (0.0, ""))[1] != "refused":
            return []
        marks = self.marked.get(conversation, {})
        return self.mark(conversation, [i for i in owed if marks.get(i) != "refused"],
                         "refused")

    def forget(self, peer: str) -> None:
        self.next_at.pop(peer, None)
        self.last.pop(peer, None)

    def mark(self, conversation: str, ids: list[str], status: str) -> list[str]:
        """Record `status` for `ids`; returns those whose status changed. At most
        MAX_REQUESTED_IDS per conversation: the oldest marks are forgotten (those
        messages show their stored state again)."""
        marks = self.marked.setdefault(conversation, {})
        changed = [i for i in ids if marks.get(i) != status]
        for i in changed:
            marks.pop(i, None)
            marks[i] = status
        while len(marks) > MAX_REQUESTED_IDS:
            del marks[next(iter(marks))]
        return changed

    def shown(self, conversation: str, message_id: str, state: str) -> str:
        """The state a user sees for one of our messages: its stored state, unless
        it is not yet delivered and the recipient answered a request for it."""
        if state not in ("pending", "sent"):
            return state
        return self.marked.get(conversation, {}).get(message_id, state)
