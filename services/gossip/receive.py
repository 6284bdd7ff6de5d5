"""A message's way in: the router's validation hook, and what happens to a message the
router accepted.

Incoming messages are validated synchronously inside the router (decrypt with the
conversation key, check the author's signature, the author against the GossipSub
`from`, and direct-chat membership), so an invalid message is rejected before it is
forwarded and costs its sender score. The envelope opened there is kept (`_opened`,
bounded) until the router reports the message as received, so it is opened once.

A message kept (`accept`, also fed by sync) is stored, announced to local clients
(`gossip.message.received`), owed a receipt, and noted in the conversation's held
sequence numbers: a gap it leaves below it, still open after GAP_GRACE_S (gossip
reorders), is filled by a sync with the peer that forwarded it. Its author, proven by
the signature, is a member (Membership, Why.AUTHOR). A receipt is handed to delivery.

What a peer claims is bounded where it enters: an author timestamp more than
MAX_FUTURE_S (conversations.py) ahead of our clock is clamped to our clock (counted `ts_clamped`; the
signed envelope is kept as it came, so every member clamps alike), so a date of the
year 2286 cannot sort first or break unread counts. An author who signs two different
messages with one sequence number (equivocation) gets the second refused: the first
stays, the conflict is counted (`equivocations`, the authors in `sys.status`) and the
author's peer score is set so low that the router graylists it.

Raw GossipSub topics (`pubsub_*` RPCs, interop and debugging) are accepted as they
come and kept, the last MAX_DEBUG_MESSAGES per topic.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from typing import Any

import trio

from p2pm.common import errors

from . import conversations as cv
from .context import Context, SyncWith, peer_bytes, peer_str
from .delivery import Delivery
from .membership import Membership, Why
from .router.core import MessageReceived, PeerExchange, Validation, default_message_id
from .router.messages import Message
from .state import Conversation, Registry

GAP_GRACE_S = 1.0  # gossip reorders; a gap still open after this triggers a sync
# Envelopes opened by validation, until the router reports their message received.
# Past it the table is emptied (a message accepted then is dropped by us only, and
# comes back by sync).
OPENED_CACHE = 4096
MAX_DEBUG_MESSAGES = 1000
# Authors caught equivocating, newest last; the oldest is forgotten past the bound.
MAX_EQUIVOCATORS = 256
EQUIVOCATION_SCORE = -1000.0  # P5 app score: far below the router's graylist threshold


class Receive:
    def __init__(self, ctx: Context, registry: Registry, membership: Membership,
                 delivery: Delivery, sync_with: SyncWith) -> None:
        self.ctx = ctx
        self.registry = registry
        self.membership = membership
        self.delivery = delivery
        self.sync_with = sync_with
        self.debug_topics: dict[str, deque[dict[str, Any]]] = {}
        self._opened: dict[bytes, cv.Opened] = {}
        self.equivocators: OrderedDict[str, int] = OrderedDict()  # author -> times

    def validate(self, msg: Message) -> Validation:
        topic = msg.topic or ""
        if topic in self.debug_topics:
            return Validation.ACCEPT
        conv = self.registry.of_topic(topic)
        if conv is None:
            return Validation.IGNORE
        counters = self.ctx.counters
        try:
            opened = cv.open_envelope(conv.keys, msg.data or b"")
        except cv.EnvelopeError as exc:
            counters["rejected_envelope"] += 1
            self.ctx.log.info("gossip.rejected", reason=str(exc), conversation=conv.id)
            return Validation.REJECT
        if peer_str(msg.from_ or b"") != opened.author:
            counters["rejected_author_mismatch"] += 1
            return Validation.REJECT
        if conv.kind == "direct" and opened.author not in conv.members:
            counters["rejected_non_member"] += 1
            return Validation.REJECT
        if len(self._opened) >= OPENED_CACHE:
            self._opened.clear()
        self._opened[default_message_id(msg)] = opened
        return Validation.ACCEPT

    def on_router_events(self, events: list[Any], peer: str | None) -> None:
        for ev in events:
            if isinstance(ev, MessageReceived):
                topic = ev.topic
                if topic in self.debug_topics:
                    self.debug_topics[topic].append({
                        "from": peer_str(ev.message.from_ or b""), "data": ev.message.data,
                        "seqno": ev.message.seqno})
                    continue
                conv = self.registry.of_topic(topic)
                opened = self._opened.pop(ev.msg_id, None)
                if conv is not None and opened is not None:
                    self.ctx.spawn(self.accept, conv, opened, ev.message.data or b"",
                                   peer_str(ev.source))
            elif isinstance(ev, PeerExchange):
                self.ctx.counters["px_received"] += 1

    def watch_raw(self, topic: str) -> None:
        """Keep what arrives on a raw GossipSub topic (not a conversation's)."""
        if self.registry.of_topic(topic) is not None:
            raise errors.bad_params("that topic belongs to a conversation")
        try:
            self.ctx.router.check_topic(topic)
        except ValueError as exc:
            raise errors.bad_params(str(exc)) from None
        self.debug_topics.setdefault(topic, deque(maxlen=MAX_DEBUG_MESSAGES))

    async def accept(self, conv: Conversation, opened: cv.Opened, envelope: bytes,
                     source: str | None) -> bool:
        """Keep a verified envelope; True if it was new."""
        if opened.kind == "r":
            await self.delivery.receipt(conv, opened)
            return False
        if opened.author == self.ctx.me:
            return False
        counters = self.ctx.counters
        ts = bounded_ts(opened.ts, time.time())
        if ts != opened.ts:
            counters["ts_clamped"] += 1
        try:
            got = await self.ctx.storage.message_put(opened.id, conv.id, opened.author,
                                                     opened.seq, ts, envelope, "received")
        except errors.BusError as exc:
            if exc.code == errors.CONFLICT and await self._equivocation(conv, opened):
                return False
            counters["store_refused"] += 1
            self.ctx.log.warning("gossip.store_refused", id=opened.id, error=exc.message)
            return False
        if not got["stored"]:
            counters["duplicates"] += 1
            return False
        counters["received"] += 1
        self.ctx.publish("gossip.message.received", {
            "id": opened.id, "conversation": conv.id, "author": opened.author,
            "body": opened.text, "ts": ts})
        self.delivery.receipts.owe(conv.id, opened.id)
        self.membership.add(conv, {opened.author}, Why.AUTHOR)
        if conv.held.note(opened.author, opened.seq) and source is not None:
            self.ctx.spawn(self._sync_on_gap, conv, opened.author, source)
        return True

    async def _equivocation(self, conv: Conversation, opened: cv.Opened) -> bool:
        """Whether the refused `opened` is its author's second message under one seq;
        if so it is counted and the author penalised (the stored first one stays)."""
        page = await self.ctx.storage.messages_by_author(
            conv.id, opened.author, opened.seq, opened.seq, 1)
        stored = page["messages"]
        if not stored or stored[0]["id"] == opened.id:
            return False
        self.ctx.counters["equivocations"] += 1
        self.equivocators[opened.author] = self.equivocators.pop(opened.author, 0) + 1
        while len(self.equivocators) > MAX_EQUIVOCATORS:
            self.equivocators.popitem(last=False)
        self.ctx.router.set_app_score(peer_bytes(opened.author), EQUIVOCATION_SCORE)
        self.ctx.log.warning("gossip.equivocation", conversation=conv.id,
                             author=opened.author, seq=opened.seq, kept=stored[0]["id"],
                             refused=opened.id)
        return True

    async def _sync_on_gap(self, conv: Conversation, author: str, source: str) -> None:
        await trio.sleep(GAP_GRACE_S)
        if conv.held.has_gap(author):
            self.ctx.counters["gap_syncs"] += 1
            await self.sync_with(source, conv, force=True)


def bounded_ts(ts: float, now: float) -> float:
    """An author's timestamp as we keep it: clamped to `now` when it is more than
    cv.MAX_FUTURE_S ahead of our clock."""
    return now if ts > now + cv.MAX_FUTURE_S else ts
