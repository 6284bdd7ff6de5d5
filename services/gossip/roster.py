"""A room's members and roles as signed events that every member applies the same way.

There is no central orderer and no I/O here, and this module never holds a private key:
the keystore signs. So proposing is split like sealing a message: `Roster.propose` gives
the payload to sign, `Roster.add_signed` takes the signature back. What a peer sends us
goes in through `Roster.apply`.

Theory of operation
-------------------
An event is a canonical JSON payload and the Ed25519 signature of its author's libp2p
key (domain ROSTER_DOMAIN):

    payload = {"v": 2, "room": room id, "kind": kind, "author": peer ID,
               "target": peer ID | null, "ts": seconds, "prev": [sorted event ids]}
    wire    = orjson {"p": base64(payload), "s": base64(signature)}   (<= MAX_EVENT_BYTES)
    id      = blake2b-256(payload || signature), hex

Kinds and who may sign them (the *right*):

    create   nobody before; the author becomes the first admin     target null, prev []
    add      an admin; target becomes a member                     target another peer
    remove   an admin; target (member or admin) is no longer one   target another peer
    promote  an admin; target, a member, becomes an admin          target another peer
    leave    any member; the author is no longer one               target null

`prev` names the heads (events nobody references yet) its author held, so the events
form a DAG rooted at the one `create`. `ts` is for display only: clocks are not trusted
to order anything.

The state is a function of the *set* of events, never of the order they arrived in:

1. Order: the topological order of the DAG in which, whenever several events could come
   next, the one with the smallest id does (Kahn's algorithm with a min-heap). A new
   event only ever arrives as a sink, and a sink never changes the order of the others,
   so it is inserted where that rule puts it rather than the whole order recomputed.
2. Replay that order from an empty room. An event takes effect when (a) its author had
   the right in its *causal* state, the state of its own ancestors alone, which is what
   its author saw when it signed; (b) its author has the right in the state replayed so
   far; and (c) it changes something (adding a member, removing a non-member or
   promoting an admin changes nothing; neither does an add once MAX_MEMBERS are in).
   An event that fails is kept, with no effect, so that every replica agrees.
3. A remove of X that takes effect also cancels X's events ordered before it that are
   not its ancestors: those X made concurrently with, or backdated past, its removal.
   Cancelling can change which removes take effect, so 2-3 repeat until no new event
   is cancelled. An event once cancelled stays so, even if the remove that cancelled
   it loses its effect in a later round: this errs towards removal, is still a function
   of the set, and ends (cancelled events only grow).

Hence: two admins who remove each other concurrently: the remove ordered first takes
effect, and the other's author is no longer an admin when it comes, so it has none. An
admin who adds someone while being removed: the add has no effect whichever comes first.
An event that fails (a) is a forgery, signed by a peer without the right even in what it
had seen: `Applied.unauthorised`, and the caller penalises its author. One that passes (a)
and fails (b) only lost a race, and nobody is at fault. A malformed event, a bad
signature, another room's event, or one over a bound raises RosterError and is not kept.

An event whose prev are not all known is held (at most MAX_PENDING) until they arrive;
`missing()` lists the ids to ask a peer for. A roster holds one `create`: a second one,
which any holder of the room's secret could sign, is refused, so the room stays the one
this replica joined (`events()` begins with the create, so a joiner syncs onto it).

`propose` refuses early what would be refused or have no effect (a non-admin adding,
removing a non-member, ...), and the last admin leaving while other members remain (the
room would have nobody left to manage it: promote someone first). A room can still lose
its last admin to concurrent leaves or removes; its members stay, and nobody can change
them any more.

Bounds: MAX_MEMBERS members, MAX_EVENTS events (then apply refuses), MAX_PENDING held
events, MAX_PREV prev per event. Replaying is linear in the events; an event appended at
the end of the order (the usual case: one signed after everything it knew) is applied
without replaying, others replay the whole room.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from p2pm.common import identity

from .sync import valid_peer_id

ROSTER_DOMAIN = "p2pm-roster:"
ROSTER_VERSION = 2
ADMIN = "admin"
MEMBER = "member"
CREATE, ADD, REMOVE, PROMOTE, LEAVE = "create", "add", "remove", "promote", "leave"
KINDS = (CREATE, ADD, REMOVE, PROMOTE, LEAVE)
_TARGETED = frozenset({ADD, REMOVE, PROMOTE})
_ADMIN_ONLY = _TARGETED

MAX_MEMBERS = 1024
MAX_EVENTS = 10_000
MAX_PENDING = 256
MAX_PREV = 16
MAX_PAYLOAD_BYTES = 2048
MAX_EVENT_BYTES = 4096
SIGNATURE_BYTES = identity.SIGNATURE_BYTES
_FIELDS = frozenset({"v", "room", "kind", "author", "target", "ts", "prev"})
_EVENT_ID = re.compile(r"[0-9a-f]{64}")
_ROOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ID_PERSON = b"p2pm-roster-id"


class RosterError(ValueError):
    """An event that is malformed, not signed by its author, of another room or over a
    bound, or a proposal the current roster does not allow. The message says which."""


def event_id(payload: bytes, signature: bytes) -> str:
    return hashlib.blake2b(payload + signature, digest_size=32,
                           person=_ID_PERSON).hexdigest()


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True)
class Event:
    """One verified roster event; `payload` and `signature` are exactly as signed."""

    id: str
    room: str
    kind: str
    author: str
    target: str | None
    ts: float
    prev: tuple[str, ...]
    payload: bytes
    signature: bytes

    @classmethod
    def decode(cls, raw: bytes, room: str) -> Event:
        """The event in `raw` (its wire form), checked to belong to `room`."""
        if not isinstance(raw, (bytes, bytearray)) or len(raw) > MAX_EVENT_BYTES:
            raise RosterError(f"a roster event is bytes of at most {MAX_EVENT_BYTES}")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise RosterError("a roster event is not JSON") from None
        if not isinstance(doc, dict) or set(doc) != {"p", "s"} \
                or not isinstance(doc["p"], str) or not isinstance(doc["s"], str):
            raise RosterError('a roster event is {"p": payload, "s": signature}')
        try:
            payload = base64.b64decode(doc["p"], validate=True)
            signature = base64.b64decode(doc["s"], validate=True)
        except (binascii.Error, ValueError):
            raise RosterError("a roster event's payload or signature is not base64") from None
        return cls.from_signed(payload, signature, room)

    @classmethod
    def from_signed(cls, payload: bytes, signature: bytes, room: str) -> Event:
        """The event made of `payload` and its author's `signature`, checked to belong
        to `room`."""
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise RosterError(f"a roster payload is at most {MAX_PAYLOAD_BYTES} bytes")
        if len(signature) != SIGNATURE_BYTES:
            raise RosterError(f"a roster signature is {SIGNATURE_BYTES} bytes")
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise RosterError("a roster payload is not JSON") from None
        fields = _parse(doc, room)
        # One content, one byte string: otherwise an author could sign the same event
        # twice in two spellings and replicas would hold different bytes for it.
        if _canonical(doc) != payload:
            raise RosterError("a roster payload is not in canonical form")
        public = identity.public_key_from_peer_id(fields["author"])
        if not identity.verify(public, ROSTER_DOMAIN, payload, signature):
            raise RosterError("a roster event's signature is not its author's")
        return cls(id=event_id(payload, signature), payload=payload, signature=signature,
                   **fields)

    def encode(self) -> bytes:
        """The wire form `decode` reads."""
        return orjson.dumps({"p": base64.b64encode(self.payload).decode("ascii"),
                             "s": base64.b64encode(self.signature).decode("ascii")})


def _parse(doc: Any, room: str) -> dict[str, Any]:
    if not isinstance(doc, dict) or set(doc) != _FIELDS:
        raise RosterError(f"a roster payload has exactly the fields {sorted(_FIELDS)}")
    if type(doc["v"]) is not int or doc["v"] != ROSTER_VERSION:
        raise RosterError(f"roster event version {doc['v']!r}; this p2pm reads "
                          f"version {ROSTER_VERSION}")
    if doc["room"] != room:
        raise RosterError("a roster event of another room")
    kind, author, target, ts, prev = (doc[k] for k in ("kind", "author", "target", "ts",
                                                       "prev"))
    if kind not in KINDS:
        raise RosterError(f"roster event kind {kind!r} is not one of {', '.join(KINDS)}")
    if not valid_peer_id(author):
        raise RosterError("a roster event's author is not an Ed25519 peer ID")
    if kind in _TARGETED:
        if not valid_peer_id(target):
            raise RosterError(f"a roster {kind} names a target peer ID")
        if target == author:
            raise RosterError(f"a roster {kind} names another peer than its author "
                              f"(to go, leave)")
    elif target is not None:
        raise RosterError(f"a roster {kind} has no target")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) \
            or ts < 0:
        raise RosterError("a roster event's ts is a non-negative number")
    if not isinstance(prev, list) or len(prev) > MAX_PREV \
            or not all(isinstance(p, str) and _EVENT_ID.fullmatch(p) for p in prev) \
            or prev != sorted(set(prev)):
        raise RosterError(f"a roster event's prev is at most {MAX_PREV} sorted, distinct "
                          f"event ids")
    if (kind == CREATE) != (not prev):
        raise RosterError("a roster create has no prev, and every other event has one")
    return {"room": room, "kind": kind, "author": author, "target": target,
            "ts": float(ts), "prev": tuple(prev)}


@dataclass(frozen=True)
class Changes:
    """How the members changed: who came in, who went, whose role changed."""

    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()
    role_changed: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.role_changed)


@dataclass(frozen=True)
class Applied:
    """What applying an event did.

    `new`: we did not hold it (applied or pending) before. `pending`: held until its
    prev arrive (see `Roster.missing`). `effective`: it changes the roster as the events
    now held order it. `unauthorised`: its author lacked the right even in the state it
    had seen, a forgery: penalise the author. `released`: ids of held events this one
    let apply; `penalise`: the authors of unauthorised events among it and those.
    `changes`: how the members changed, from all of them (rotate sender keys on it).
    """

    event: Event
    new: bool
    pending: bool
    effective: bool
    unauthorised: bool
    changes: Changes
    released: tuple[str, ...] = ()
    penalise: frozenset[str] = frozenset()


def _has_right(members: Mapping[str, str], event: Event) -> bool:
    if event.kind == CREATE:
        return not members
    if event.kind in _ADMIN_ONLY:
        return members.get(event.author) == ADMIN
    return event.author in members  # leave


def _changes_something(members: Mapping[str, str], event: Event) -> bool:
    if event.kind == ADD:
        return event.target not in members and len(members) < MAX_MEMBERS
    if event.kind == REMOVE:
        return event.target in members
    if event.kind == PROMOTE:
        return members.get(event.target or "") == MEMBER
    return True  # create, leave: the right is all they need


class _Replay:
    """The state reached by replaying an ordered list of events."""

    def __init__(self) -> None:
        self.members: dict[str, str] = {}
        self.ever: set[str] = set()
        self.effective: set[str] = set()
        self.effective_at: dict[str, list[int]] = {}  # author -> positions of effective

    def step(self, pos: int, event: Event, allowed: bool) -> bool:
        members = self.members
        if not (allowed and _has_right(members, event) and _changes_something(members, event)):
            return False
        if event.kind == CREATE:
            members[event.author] = ADMIN
        elif event.kind == ADD:
            members[event.target] = MEMBER  # type: ignore[index]
        elif event.kind == PROMOTE:
            members[event.target] = ADMIN  # type: ignore[index]
        elif event.kind == REMOVE:
            del members[event.target]  # type: ignore[arg-type]
        else:
            del members[event.author]
        self.ever.update(members)
        self.effective.add(event.id)
        self.effective_at.setdefault(event.author, []).append(pos)
        return True


def _ancestors_from(order: list[Event], pos: Mapping[str, int], start: Event,
                    lowest: int) -> set[str]:
    """The ancestors of `start` at positions >= `lowest`: in a topological order every
    path from `start` to such an ancestor stays above it, so the search stops there."""
    seen: set[str] = set()
    todo = [p for p in start.prev if pos[p] >= lowest]
    while todo:
        eid = todo.pop()
        if eid in seen:
            continue
        seen.add(eid)
        todo.extend(p for p in order[pos[eid]].prev if pos[p] >= lowest and p not in seen)
    return seen


def _cancelled_by(order: list[Event], pos: Mapping[str, int], remove: Event, candidates: Iterable[int]) -> set[str]:
    """Which of the target's events at `candidates` (positions before `remove`) are not
    ancestors of `remove`: made concurrently with it, so cancelled by it."""
    earlier = [p for p in candidates if p < pos[remove.id]]
    if not earlier:
        return set()
    ancestors = _ancestors_from(order, pos, remove, min(earlier))
    return {order[p].id for p in earlier if order[p].id not in ancestors}


def _replay(order: list[Event], authorised: Mapping[str, bool]) -> _Replay:
    """The state of the events in `order` (a down-closed set, in roster order): steps 2-3
    of the theory of operation."""
    pos = {e.id: i for i, e in enumerate(order)}
    cancelled: set[str] = set()
    while True:
        replay = _Replay()
        for i, event in enumerate(order):
            replay.step(i, event, authorised[event.id] and event.id not in cancelled)
        more: set[str] = set()
        for i, event in enumerate(order):
            if event.kind == REMOVE and event.id in replay.effective:
                more |= _cancelled_by(order, pos, event,
                                      replay.effective_at.get(event.target or "", ()))
        if more <= cancelled:
            return replay
        cancelled |= more


class Roster:
    """One room's roster: the events held, their order and the state they give."""

    def __init__(self, room: str) -> None:
        if not isinstance(room, str) or not _ROOM_ID.fullmatch(room):
            raise RosterError("a room id is 1-64 letters, digits, '-' or '_'")
        self.room = room
        self._events: dict[str, Event] = {}
        self._order: list[Event] = []
        self._pos: dict[str, int] = {}
        self._heads: set[str] = set()
        self._authorised: dict[str, bool] = {}
        self._state = _Replay()
        self._pending: dict[str, Event] = {}
        self._by_author: dict[str, list[str]] = {}

    @classmethod
    def new(cls, room: str) -> Roster:
        """An empty roster of `room`: its first event is the room's create."""
        return cls(room)

    # -- reading the state -----------------------------------------------------------

    def members(self) -> dict[str, str]:
        """Every member's role (ADMIN or MEMBER)."""
        return dict(self._state.members)

    def is_member(self, peer: str) -> bool:
        return peer in self._state.members

    def is_admin(self, peer: str) -> bool:
        return self._state.members.get(peer) == ADMIN

    def removed(self) -> set[str]:
        """Peers who were members and are not now (removed, or gone of themselves)."""
        return self._state.ever - set(self._state.members)

    def heads(self) -> list[str]:
        """The ids of the events no held event names in its prev, sorted."""
        return sorted(self._heads)

    def events(self) -> list[bytes]:
        """Every applied event in wire form, in roster order (the create first): what a
        joiner applies to arrive at this state."""
        return [e.encode() for e in self._order]

    def since(self, known: Iterable[str]) -> list[bytes]:
        """The events (wire form, roster order) a peer lacks that holds `known`: any
        ids of theirs, heads enough, since holding an event means holding its
        ancestors. Ids we do not hold are passed over."""
        theirs: set[str] = set()
        todo = [k for k in known if k in self._events]
        while todo:
            eid = todo.pop()
            if eid not in theirs:
                theirs.add(eid)
                todo.extend(self._events[eid].prev)
        return [e.encode() for e in self._order if e.id not in theirs]

    def missing(self) -> list[str]:
        """The ids that held events name in prev and we have not got: ask a peer."""
        named = {p for e in self._pending.values() for p in e.prev}
        return sorted(named - self._events.keys() - self._pending.keys())

    def pending(self) -> int:
        return len(self._pending)

    # -- proposing -------------------------------------------------------------------

    def propose(self, kind: str, author: str, target: str | None, now: float) -> bytes:
        """The payload for `author` to sign (ROSTER_DOMAIN) to do `kind` (to `target`),
        naming the current heads as prev. RosterError when the roster does not allow it
        now, or it would change nothing."""
        if kind not in KINDS:
            raise RosterError(f"roster event kind {kind!r} is not one of {', '.join(KINDS)}")
        if isinstance(now, bool) or not isinstance(now, (int, float)) \
                or not math.isfinite(now) or now < 0:
            raise RosterError("now is a non-negative number of seconds")
        if len(self._events) >= MAX_EVENTS:
            raise RosterError(f"this room's roster is full ({MAX_EVENTS} events)")
        prev = self._prev_for_proposal()
        if kind == CREATE and self._events:
            raise RosterError("this room has been created already")
        members = self._state_of(prev)
        doc = {"v": ROSTER_VERSION, "room": self.room, "kind": kind, "author": author,
               "target": target, "ts": float(now), "prev": prev}
        _parse(doc, self.room)  # the rules a receiver checks, before anything is signed
        _refuse_unless_allowed(members, kind, author, target)
        return _canonical(doc)

    def _prev_for_proposal(self) -> list[str]:
        # More heads than MAX_PREV (many concurrent events): name the latest ones; the
        # rest stay heads and the next event names them.
        latest = sorted(self._heads, key=self._pos.__getitem__)[-MAX_PREV:]
        return sorted(latest)

    def _state_of(self, prev: Iterable[str]) -> Mapping[str, str]:
        """The members as the ancestors of `prev` alone give them (their causal state)."""
        prev = set(prev)
        if prev == self._heads:
            return self._state.members
        ancestors: set[str] = set()
        todo = list(prev)
        while todo:
            eid = todo.pop()
            if eid not in ancestors:
                ancestors.add(eid)
                todo.extend(self._events[eid].prev)
        return _replay([e for e in self._order if e.id in ancestors],
                       self._authorised).members

    # -- applying --------------------------------------------------------------------

    def add_signed(self, payload: bytes, signature: bytes) -> Applied:
        """Apply our own proposal once the keystore has signed it; `.event.encode()` is
        what to send the other members."""
        return self._apply(Event.from_signed(payload, signature, self.room))

    def apply(self, raw: bytes) -> Applied:
        """Apply an event a peer sent (wire form). RosterError if it is malformed, not
        signed by its author, of another room, a second create, or over a bound."""
        return self._apply(Event.decode(raw, self.room))

    def _apply(self, event: Event) -> Applied:
        if event.id in self._events or event.id in self._pending:
            return Applied(event, new=False, pending=event.id in self._pending,
                           effective=event.id in self._state.effective,
                           unauthorised=not self._authorised.get(event.id, True),
                           changes=Changes())
        if event.kind == CREATE:
            created = next((e for e in self._order if e.kind == CREATE), None)
            if created is not None:
                raise RosterError(f"this room was created already, by {created.author}")
        if len(self._events) >= MAX_EVENTS:
            raise RosterError(f"this room's roster is full ({MAX_EVENTS} events)")
        if not all(p in self._events for p in event.prev):
            if len(self._pending) >= MAX_PENDING:
                raise RosterError(f"{MAX_PENDING} roster events already wait for their "
                                  f"prev; ask for missing() first")
            self._pending[event.id] = event
            return Applied(event, new=True, pending=True, effective=False,
                           unauthorised=False, changes=Changes())
        before = dict(self._state.members)
        self._insert(event)
        released = self._release()
        penalise = {self._events[e].author for e in (event.id, *released)
                    if not self._authorised[e]}
        return Applied(event, new=True, pending=False,
                       effective=event.id in self._state.effective,
                       unauthorised=not self._authorised[event.id],
                       changes=_diff(before, self._state.members),
                       released=tuple(released), penalise=frozenset(penalise))

    def _release(self) -> list[str]:
        released: list[str] = []
        ready = True
        while ready:
            ready = False
            for event in sorted(self._pending.values(), key=lambda e: e.id):
                if all(p in self._events for p in event.prev) \
                        and len(self._events) < MAX_EVENTS:
                    del self._pending[event.id]
                    self._insert(event)
                    released.append(event.id)
                    ready = True
        return released

    def _insert(self, event: Event) -> None:
        """Add `event` (its prev all held) where the order puts it, and update the state."""
        self._authorised[event.id] = _has_right(self._state_of(event.prev), event)
        # Kahn's rule with `event` a new sink: it comes at the first step after all its
        # prev at which the event taken before had a larger id; the others keep their
        # order (see the theory of operation).
        at = max((self._pos[p] for p in event.prev), default=-1) + 1
        while at < len(self._order) and self._order[at].id < event.id:
            at += 1
        appended = at == len(self._order)
        self._order.insert(at, event)
        self._events[event.id] = event
        self._by_author.setdefault(event.author, []).append(event.id)
        self._heads -= set(event.prev)
        self._heads.add(event.id)
        if appended:
            self._pos[event.id] = at
        else:
            self._pos = {e.id: i for i, e in enumerate(self._order)}
        if appended and self._cancels_nothing(event):
            self._state.step(at, event, self._authorised[event.id])
        else:
            self._state = _replay(self._order, self._authorised)

    def _cancels_nothing(self, event: Event) -> bool:
        """Whether `event`, last in the order, can cancel no event in any round of the
        replay: then stepping it onto the current state gives what a replay would."""
        if event.kind != REMOVE:
            return True
        theirs = [self._pos[e] for e in self._by_author.get(event.target or "", ())]
        return not _cancelled_by(self._order, self._pos, event, theirs)


def _refuse_unless_allowed(members: Mapping[str, str], kind: str, author: str,
                           target: str | None) -> None:
    """RosterError saying why `author` doing `kind` (to `target`) would be refused or
    change nothing in `members`."""
    if kind == CREATE:
        return
    if kind in _ADMIN_ONLY and members.get(author) != ADMIN:
        raise RosterError(f"only an admin may {kind} a member; {author} is not one")
    if kind == LEAVE:
        if author not in members:
            raise RosterError(f"{author} is not a member, so cannot leave")
        others = set(members) - {author}
        if members[author] == ADMIN and others \
                and not any(members[p] == ADMIN for p in others):
            raise RosterError("the last admin cannot leave while others remain: "
                              "promote one of them first")
    elif kind == ADD:
        if target in members:
            raise RosterError(f"{target} is a member already")
        if len(members) >= MAX_MEMBERS:
            raise RosterError(f"this room is full ({MAX_MEMBERS} members)")
    elif kind == REMOVE:
        if target not in members:
            raise RosterError(f"{target} is not a member")
    elif kind == PROMOTE:
        if target not in members:
            raise RosterError(f"{target} is not a member")
        if members[target] == ADMIN:  # type: ignore[index]
            raise RosterError(f"{target} is an admin already")


def _diff(before: Mapping[str, str], after: Mapping[str, str]) -> Changes:
    return Changes(added=frozenset(after.keys() - before.keys()),
                   removed=frozenset(before.keys() - after.keys()),
                   role_changed=frozenset(p for p in before.keys() & after.keys()
                                          if before[p] != after[p]))
