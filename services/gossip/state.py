"""The conversations this node is in: the registry held in memory, which sequence
numbers of each author we hold, and how a conversation is loaded, created, joined,
opened and left.

Storage keeps everything (the conversation's secret, name and members, every message);
this module keeps only what gossip needs at hand: a conversation's keys, its members,
our next sequence number, and per author which sequence numbers we hold (`Held`, from
storage's `author_ranges` at start, then kept up to date by every message kept), so a
gap is noticed the moment it opens. A conversation left is forgotten here and marked
in storage (`gossip.left.<id>`), so it is not loaded again; its history stays.

`Held` and `Registry` do no I/O and are tested without sockets; `Conversations` does
the storage calls around them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import trio

from p2pm.common import errors, identity, validate, wire
from p2pm.common.clients import history_cursor

from . import conversations as cv
from .context import Context
from .membership import Membership, Why
from .reach import Reach

# A span of sequence numbers held above a gap is expanded into a set at start; a span
# wider than this (only a peer that numbers oddly makes one) is left out, so loading
# costs at most this much per author.
MAX_HELD_SPAN = 10_000


class Held:
    """Per author, which sequence numbers we hold: every seq up to a contiguous mark,
    plus those above it. What lies between is missing: a gap, which a sync fills.

    Bounded by what storage holds: an author's set grows by one per message held above
    a gap and shrinks as the gap closes."""

    def __init__(self) -> None:
        self._authors: dict[str, tuple[int, set[int]]] = {}

    @classmethod
    def from_ranges(cls, authors: dict[str, Any]) -> Held:
        """From storage's `author_ranges`: {author: {"contiguous", "ranges": [[lo, hi],
        ...]}}."""
        held = cls()
        for author, info in authors.items():
            contiguous = int(info["contiguous"])
            above: set[int] = set()
            for lo, hi in info["ranges"]:
                if hi > contiguous and hi - lo < MAX_HELD_SPAN:
                    above.update(range(max(lo, contiguous + 1), hi + 1))
            held._authors[author] = (contiguous, above)
        return held

    def note(self, author: str, seq: int) -> bool:
        """Record (author, seq); True if it leaves a gap below it."""
        contiguous, above = self._authors.get(author, (0, set()))
        if seq <= contiguous:
            return False
        above.add(seq)
        while contiguous + 1 in above:
            contiguous += 1
            above.discard(contiguous)
        self._authors[author] = (contiguous, above)
        return bool(above)

    def has_gap(self, author: str) -> bool:
        return bool(self._authors.get(author, (0, set()))[1])

    def contiguous(self, author: str) -> int:
        """The highest seq up to which every message of `author` is held."""
        return self._authors.get(author, (0, set()))[0]


MAX_UNREAD = 1000  # a conversation's unread count stops here (shown as is)


@dataclass
class Conversation:
    keys: cv.Keys
    name: str
    secret: bytes
    # Who is in it; changed only by Membership.add.
    members: set[str] = field(default_factory=set)
    next_seq: int = 1
    lock: trio.Lock = field(default_factory=trio.Lock)  # one post numbered at a time
    held: Held = field(default_factory=Held)

    @property
    def id(self) -> str:
        return self.keys.id

    @property
    def kind(self) -> str:
        return self.keys.kind


class Registry:
    """The conversations we are in, by id and by GossipSub topic. Bounded by the
    conversations the user created, joined or opened."""

    def __init__(self) -> None:
        self.by_id: dict[str, Conversation] = {}
        self.by_topic: dict[str, Conversation] = {}

    def __len__(self) -> int:
        return len(self.by_id)

    def __iter__(self) -> Iterator[Conversation]:
        return iter(list(self.by_id.values()))

    def __contains__(self, conversation: str) -> bool:
        return conversation in self.by_id

    def get(self, conversation: str) -> Conversation | None:
        return self.by_id.get(conversation)

    def of_topic(self, topic: str) -> Conversation | None:
        return self.by_topic.get(topic)

    def require(self, conversation: str) -> Conversation:
        """The conversation, or NOT_FOUND for the caller."""
        if not isinstance(conversation, str) or conversation not in self.by_id:
            raise errors.not_found(f"no conversation {conversation!r}")
        return self.by_id[conversation]

    def add(self, conv: Conversation) -> None:
        self.by_id[conv.id] = conv
        self.by_topic[conv.keys.topic] = conv

    def remove(self, conv: Conversation) -> None:
        self.by_id.pop(conv.id, None)
        self.by_topic.pop(conv.keys.topic, None)


def check_name(name: str) -> str:
    if not validate.is_name(name, empty=True):
        raise errors.bad_params(f"a name is at most {cv.MAX_NAME} printable characters")
    return name


class Conversations:
    """The conversation RPCs' work: loading, creating, joining, opening, leaving,
    listing, reading. Storage is written first, the registry after."""

    def __init__(self, ctx: Context, registry: Registry, membership: Membership,
                 reach: Reach, invite_ttl_s: float = cv.DEFAULT_INVITE_TTL_S) -> None:
        self.ctx = ctx
        self.invite_ttl_s = invite_ttl_s  # gossip.room_invite_ttl_s
        self.registry = registry
        self.membership = membership
        self.reach = reach
        # Set by strangers.py: a direct chat opened settles the peer's pending message
        # request; our messages show the answer a request got ("requested", "refused").
        self.absorb: Callable[[str, Conversation], Awaitable[None]] | None = None
        self.shown: Callable[[str, str, str], str] = lambda conv, mid, state: state
        # Read marks (kv gossip.read.<id>), read from storage once each: the list of
        # conversations needs all of them, every time it is asked.
        self._read_marks: dict[str, float] = {}

    async def load(self, listed: list[dict[str, Any]]) -> None:
        """Every conversation in storage's `conversation_list` but those we left."""
        for entry in listed:
            if await self.ctx.storage.kv_get(f"gossip.left.{entry['id']}") is not None:
                continue
            stored = await self.ctx.storage.conversation_get(entry["id"])
            if stored is not None:
                await self.register(stored)

    async def register(self, stored: dict[str, Any]) -> Conversation:
        """Hold a stored conversation (storage's shape): subscribe to its topic and
        learn what we hold of it; one already held gains the stored members."""
        secret = wire.b64d(stored["secret"], "secret") if isinstance(
            stored["secret"], str) else stored["secret"]
        keys = cv.Keys.derive(stored["kind"], secret)
        conv = self.registry.get(keys.id)
        if conv is None:
            conv = Conversation(keys, stored.get("name", ""), secret)
            ranges = await self.ctx.storage.author_ranges(keys.id)
            conv.held = Held.from_ranges(ranges)
            if self.ctx.me in ranges:
                conv.next_seq = int(ranges[self.ctx.me]["max_seq"]) + 1
            self.ctx.router.make_private(keys.topic)  # before members are admitted
            self.membership.add(conv, set(stored.get("members", [])), Why.STORED)
            self.registry.add(conv)
            self.ctx.router.subscribe(keys.topic, self.ctx.now())
            self.ctx.kick()
        else:
            self.membership.add(conv, set(stored.get("members", [])), Why.STORED)
        return conv

    async def create_room(self, name: str) -> dict[str, Any]:
        if not check_name(name).strip():
            raise errors.bad_params("a room needs a name")
        secret = cv.new_room_secret()
        keys = cv.Keys.derive("room", secret)
        me = self.ctx.me
        await self.ctx.storage.conversation_put(keys.id, "room", secret, [me], name=name)
        conv = await self.register({"kind": "room", "secret": secret, "name": name,
                                    "members": [me]})
        return {"id": keys.id, "name": name, "kind": "room",
                "invite": await self.invite(conv)}

    async def invite(self, conv: Conversation, ttl_s: float | None = None) -> str:
        """A room invite signed now, good for `ttl_s` (else the setting's)."""
        if conv.kind != "room":
            raise errors.bad_params("only rooms have invites")
        try:
            payload = cv.invite_payload(conv.name, conv.secret, self.ctx.me,
                                        await self.reach.my_addrs(), time.time(),
                                        self.invite_ttl_s if ttl_s is None else ttl_s)
        except cv.InviteError as exc:
            raise errors.bad_params(f"ttl_s: {exc}") from None
        signature = await self.ctx.keystore.sign(cv.INVITE_DOMAIN, payload)
        return cv.encode_invite(payload, signature)

    async def join_room(self, invite: str) -> dict[str, Any]:
        if not isinstance(invite, str) or not invite.strip():
            raise errors.bad_params("the invite is empty")
        try:
            inv = cv.decode_invite(invite, now=time.time())
        except cv.InviteExpired as exc:
            raise errors.forbidden(str(exc)) from None  # nothing joined or stored
        except cv.InviteError as exc:
            # Refused, not bad input: an invite that does not verify was tampered
            # with, forged or garbled (exit 1 in the CLI).
            raise errors.forbidden(f"invalid invite: {exc}") from None
        # The inviter is a member: its signature is on the invite.
        members = {self.ctx.me, inv.inviter}
        if inv.id in self.registry:
            members |= self.registry.require(inv.id).members
        await self.ctx.storage.kv_delete(f"gossip.left.{inv.id}")
        await self.ctx.storage.conversation_put(inv.id, "room", inv.secret, sorted(members),
                                                name=inv.name)
        conv = await self.register({"kind": "room", "secret": inv.secret,
                                    "name": inv.name, "members": sorted(members)})
        if inv.inviter != self.ctx.me:
            await self.reach.learn_addrs(inv.inviter, list(inv.addrs))
            self.ctx.spawn(self.reach.dial, inv.inviter)
        return {"id": conv.id, "name": conv.name, "kind": "room"}

    async def direct_keys(self, peer_id: str) -> tuple[bytes, cv.Keys]:
        """The secret and keys of our direct chat with `peer_id` (one keystore call)."""
        try:
            identity.public_key_from_peer_id(peer_id)
        except identity.IdentityError as exc:
            raise errors.bad_params(str(exc)) from None
        if peer_id == self.ctx.me:
            raise errors.bad_params("a direct chat needs another peer")
        secret = await self.ctx.keystore.direct_secret(peer_id)
        return secret, cv.Keys.derive("direct", secret)

    async def open_direct(self, peer_id: str, addrs: list[str],
                          name: str | None) -> dict[str, Any]:
        if name is not None:
            check_name(name)
        secret, keys = await self.direct_keys(peer_id)
        me = self.ctx.me
        existing = self.registry.get(keys.id)
        label = name if name is not None else (existing.name if existing else peer_id)
        await self.ctx.storage.kv_delete(f"gossip.left.{keys.id}")
        await self.ctx.storage.conversation_put(keys.id, "direct", secret,
                                                sorted({me, peer_id}), name=label)
        conv = await self.register({"kind": "direct", "secret": secret, "name": label,
                                    "members": [me, peer_id]})
        conv.name = label
        if self.absorb is not None:
            await self.absorb(peer_id, conv)
        if addrs:
            await self.reach.learn_addrs(peer_id, addrs)
        if not self.reach.is_connected(peer_id):
            self.ctx.spawn(self.reach.dial, peer_id)
        return {"id": conv.id, "name": label, "kind": "direct"}

    async def leave(self, conv: Conversation) -> None:
        await self.ctx.storage.kv_put(f"gossip.left.{conv.id}", b"1")
        self.registry.remove(conv)
        self.ctx.router.unsubscribe(conv.keys.topic, self.ctx.now())
        self.ctx.kick()

    async def listing(self, unread: bool = True) -> list[dict[str, Any]]:
        """Our conversations; with `unread`, how many messages of each others wrote
        since the read mark (a caller that only looks a conversation up asks without)."""
        listed = await self.ctx.storage.conversation_list()
        out = []
        for c in listed:
            if c["id"] not in self.registry:
                continue
            out.append({"id": c["id"], "name": c["name"], "kind": c["kind"],
                        "members": c["members"], "last_ts": c["last_ts"]})
        if unread and out:
            # Counted by storage over its index, all in one call: reading (and
            # unsealing) a page of each conversation took seconds with a long history,
            # and a call per conversation 0.7 s with 200 of them.
            marks = {c["id"]: await self._read_mark(c["id"]) for c in out}
            counts = await self.ctx.storage.unread_counts(marks, MAX_UNREAD)
            for item in out:
                item["unread"] = counts.get(item["id"], 0)
        return out

    async def _read_mark(self, conversation: str) -> float:
        mark = self._read_marks.get(conversation)
        if mark is None:
            read = await self.ctx.storage.kv_get(f"gossip.read.{conversation}")
            # A mark_read while we waited has the newer mark: it stays.
            mark = self._read_marks.setdefault(conversation, float(read) if read else 0.0)
        return mark

    async def mark_read(self, conv: Conversation) -> float:
        # Local time, or the newest message's time when it is a little ahead (within
        # the skew receive.py allows), so that message counts as read too.
        page = await self.ctx.storage.history(conv.id, limit=1)
        now = time.time()
        last = max([now] + [min(m["ts"], now + cv.MAX_FUTURE_S) for m in page["messages"]])
        await self.ctx.storage.kv_put(f"gossip.read.{conv.id}", repr(last).encode())
        self._read_marks[conv.id] = last
        return last

    async def history(self, conv: Conversation, limit: int,
                      before: str | None) -> list[dict[str, Any]]:
        if not 1 <= limit <= 1000:
            raise errors.bad_params("limit must be 1..1000")
        cursor = None
        if before is not None:
            try:
                m = await self.ctx.storage.message_get(before)
            except errors.BusError as exc:
                raise errors.bad_params(f"before: {exc.message}") from None
            if m is None:
                raise errors.bad_params(f"before: no message {before!r}")
            # Storage's cursor is (ts, id): older than that message itself, so one
            # written in the same instant is on the next page, not skipped.
            cursor = history_cursor(m["ts"], m["id"])
        page = await self.ctx.storage.history(conv.id, before=cursor, limit=limit)
        out = []
        for m in page["messages"]:
            try:
                opened = cv.open_envelope(conv.keys, wire.b64d(m["body"], "body"))
            except cv.EnvelopeError:
                continue
            out.append({"id": m["id"], "author": m["author"], "body": opened.text,
                        "ts": m["ts"], "state": self.shown(conv.id, m["id"], m["state"]),
                        "seq": m["seq"]})
        return out
