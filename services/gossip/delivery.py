"""A message's way out, and the receipts that come back: where a message becomes
sent, and the one place where it becomes delivered.

* A written message is stored first (state pending) with an outbox row per other
  member, in one transaction, then published. It turns `sent` once the router handed
  it to a peer or a sync sent it, and `delivered` when every recipient acknowledged
  it, in `delivered_to`, whichever way the acknowledgement came: a signed receipt over
  gossip (`receipt`), or a sync HAVE whose ranges cover it (`ranges_held`).
* Pending work survives restarts of any actor: it lives in storage (the outbox rows,
  the pending state), and `load` refills the in-memory outbox from it at start. The
  shell's maintenance loop publishes what is still unsent once a member is reachable,
  and chases recipients who owe a receipt too long (`outbox.due`).
* Our messages written while we knew no other member got no outbox rows; the first
  members learnt owe receipts for them (`owe_first_members`, run by membership).
* Receipts we owe go out batched (`ReceiptBatch`, no I/O): in a direct chat soon (one
  reader), in a room at most once per interval per member, so their volume grows
  with the members, not the messages.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from p2pm.common import errors, wire

from . import conversations as cv
from . import sync
from .context import Context
from .outbox import Outbox
from .router.core import Backpressure, Published
from .router.messages import SIGNING_DOMAIN, signing_data

if TYPE_CHECKING:
    from .state import Conversation, Registry

# A recipient still owing a receipt this long after we first saw it owed (and
# connected) is synced with: the receipt or the message was lost.
OUTBOX_SYNC_AFTER_S = 10.0
OUTBOX_PAGE = 1000  # pending deliveries read per storage call at start
RECEIPT_FLUSH_S = 0.2
ROOM_RECEIPT_FLUSH_S = 2.0
MAX_HELD_RECEIPTS = 1024  # per conversation, while no member is reachable


class ReceiptBatch:
    """The receipts we owe, per conversation, until they go out.

    `take` at every flush hands out a direct chat's at once and a room's at most once
    per `room_every_s`. Receipts that found nobody to go to are `put_back` for the next
    flush, at most `max_held` per conversation: the newest are kept, since older ones
    are also acknowledged by the next sync's HAVE. Between two flushes a conversation
    holds what arrived meanwhile (two seconds of a room's messages at most)."""

    def __init__(self, room_every_s: float = ROOM_RECEIPT_FLUSH_S,
                 max_held: int = MAX_HELD_RECEIPTS,
                 on_owed: Callable[[], None] = lambda: None) -> None:
        self.room_every_s = room_every_s
        self.max_held = max_held
        self.on_owed = on_owed  # the flusher sleeps until something is owed
        self._owed: dict[str, list[str]] = {}
        self._last_room: float | None = None

    def __bool__(self) -> bool:
        return bool(self._owed)

    def owed(self, conversation: str) -> list[str]:
        return list(self._owed.get(conversation, ()))

    def owe(self, conversation: str, message_id: str) -> None:
        self._owed.setdefault(conversation, []).append(message_id)
        self.on_owed()

    def take(self, now: float,
             kind_of: Callable[[str], str | None]) -> list[tuple[str, list[str]]]:
        """(conversation, message ids) to acknowledge now, removed from the batch.
        `kind_of` names a conversation's kind, or None for one we left (its receipts
        are dropped)."""
        if self._last_room is None:
            self._last_room = now
        rooms_too = now - self._last_room >= self.room_every_s
        if rooms_too:
            self._last_room = now
        out = []
        for conversation in list(self._owed):
            kind = kind_of(conversation)
            if kind is None:
                del self._owed[conversation]
            elif kind != "room" or rooms_too:
                out.append((conversation, self._owed.pop(conversation)))
        return out

    def put_back(self, conversation: str, message_ids: list[str]) -> None:
        """Receipts not sent: before those owed since, within `max_held`."""
        kept = self._owed.setdefault(conversation, [])
        kept[:0] = message_ids[-self.max_held:]
        del kept[:-self.max_held]


class Delivery:
    def __init__(self, ctx: Context, registry: Registry) -> None:
        self.ctx = ctx
        self.registry = registry
        self.outbox = Outbox(OUTBOX_SYNC_AFTER_S)
        # Our messages not yet published: message id -> conversation. Bounded by what
        # the user wrote while no member was reachable (each is stored, pending).
        self.unsent: dict[str, str] = {}
        self._receipts_owed = trio.Event()
        self.receipts = ReceiptBatch(on_owed=lambda: self._receipts_owed.set())
        # Set by strangers.py: the state our message shows once a message request
        # answered for it ("requested", "refused"); storage keeps pending/sent.
        self.shown: Callable[[str, str, str], str] = lambda conv, mid, state: state

    async def load(self) -> None:
        """The outbox from storage: every pending delivery, a page at a time."""
        me = self.ctx.me
        by_message: dict[str, set[str]] = {}
        after = None
        while True:
            page = (await self.ctx.storage.outbox_due(
                time.time() + 10 * 365 * 86400, limit=OUTBOX_PAGE, after=after))["entries"]
            for e in page:
                by_message.setdefault(e["message_id"], set()).add(e["recipient"])
            if len(page) < OUTBOX_PAGE:
                break
            after = {k: page[-1][k] for k in ("next_attempt_at", "message_id", "recipient")}
        for mid, recipients in by_message.items():
            try:
                m = await self.ctx.storage.message_get(mid)
            except errors.BusError:
                continue
            if m is not None and m["author"] == me and m["conversation"] in self.registry:
                self.outbox.add(mid, m["conversation"], m["seq"], recipients, self.ctx.now())
                if m["state"] == "pending":
                    self.unsent[mid] = m["conversation"]
        for conv in self.registry:
            await self.owe_first_members(conv, conv.members - {me})

    # -- out ---------------------------------------------------------------------------
    async def post(self, conversation: str, text: str) -> dict[str, Any]:
        try:
            cv.check_text(text)
        except ValueError as exc:
            raise errors.bad_params(str(exc)) from None
        conv = self.registry.require(conversation)
        me = self.ctx.me
        async with conv.lock:
            seq, ts = conv.next_seq, time.time()
            plaintext = cv.message_plaintext(conv.id, me, seq, ts, text)
            sig = await self.ctx.keystore.sign(cv.MESSAGE_DOMAIN, plaintext)
            envelope = cv.seal(conv.keys.content_key, sig, plaintext)
            mid = cv.message_id(plaintext)
            recipients = sorted(conv.members - {me})
            # Stored and queued in one transaction: a crash in between would leave a
            # message that stays pending and that nobody ever delivers.
            await self.ctx.storage.message_put(mid, conv.id, me, seq, ts, envelope,
                                               "pending", recipients=recipients or None)
            conv.next_seq = seq + 1
            if recipients:
                self.outbox.add(mid, conv.id, seq, set(recipients), self.ctx.now())
            self.unsent[mid] = conv.id
        state = "pending"
        try:
            state = await self.publish_own(conv, mid, envelope)
        except errors.BusError as exc:
            self.ctx.log.warning("gossip.publish_deferred", id=mid, error=exc.message)
        return {"id": mid, "state": state}

    async def publish(self, topic: str, data: bytes) -> Published | Backpressure:
        """A GossipSub message on `topic`, signed through the keystore."""
        router = self.ctx.router
        msg = router.new_message(topic, data, self.ctx.now())
        sig = await self.ctx.keystore.sign(SIGNING_DOMAIN, signing_data(msg))
        result = router.publish_message(dataclasses.replace(msg, signature=sig),
                                        self.ctx.now())
        self.ctx.kick()
        return result

    async def _publish_envelope(self, conv: Conversation, envelope: bytes) -> bool:
        """Publish on the conversation's topic; True if some peer will get it."""
        result = await self.publish(conv.keys.topic, envelope)
        if isinstance(result, Backpressure):
            self.ctx.counters["publish_backpressure"] += 1
            return False
        return bool(result.peers)

    async def publish_own(self, conv: Conversation, mid: str,
                          envelope: bytes | None = None) -> str:
        """Publish one of our stored messages; its state after the attempt."""
        if envelope is None:
            m = await self.ctx.storage.message_get(mid)
            if m is None:  # not stored, so nothing to publish
                self.unsent.pop(mid, None)
                return "pending"
            if m["state"] != "pending":
                self.unsent.pop(mid, None)
                return str(m["state"])
            envelope = wire.b64d(m["body"], "body")
        if await self._publish_envelope(conv, envelope):
            self.unsent.pop(mid, None)
            await self.set_state(mid, conv.id, "sent")
            return "sent"
        return "pending"

    async def sent_by_sync(self, mid: str, conv_id: str) -> None:
        """A sync session handed our message to a member: sent, unless it was already
        (published, or sent by an earlier sync)."""
        if self.unsent.pop(mid, None) is not None:
            await self.set_state(mid, conv_id, "sent")

    async def publish_unsent(self) -> None:
        """Publish what is still unsent in every conversation that has a peer now."""
        for mid, conv_id in list(self.unsent.items()):
            conv = self.registry.get(conv_id)
            if conv is not None and self.ctx.router.topic_peers(conv.keys.topic):
                try:
                    await self.publish_own(conv, mid)
                except errors.BusError:
                    pass

    async def set_state(self, mid: str, conv_id: str, state: str) -> None:
        try:
            got = await self.ctx.storage.message_set_state(mid, state)
        except errors.BusError as exc:
            self.ctx.log.warning("gossip.state_not_saved", id=mid, error=exc.message)
            return
        if got["changed"]:
            self.ctx.publish("gossip.message.state", {"id": mid, "conversation": conv_id,
                                                      "state": got["state"]})

    # -- back --------------------------------------------------------------------------
    async def delivered_to(self, mid: str, peer: str) -> None:
        """`peer` holds our message `mid`. Storage first (the receipt survives a crash),
        then the outbox mirror; the last recipient makes the message delivered."""
        try:  # never queued there (None) is fine: the mirror is told all the same
            await self.ctx.storage.outbox_done(mid, peer)
        except errors.BusError:
            return
        conv_id = self.outbox.delivered(mid, peer)
        if conv_id is not None:
            self.unsent.pop(mid, None)
            await self.set_state(mid, conv_id, "delivered")

    async def receipt(self, conv: Conversation, opened: cv.Opened) -> None:
        """A verified receipt: its author holds the messages it names (of this
        conversation only: a receipt must not acknowledge another's)."""
        for mid in opened.ids:
            if self.outbox.owes(mid, opened.author, conv.id):
                await self.delivered_to(mid, opened.author)

    async def ranges_held(self, conv: Conversation, peer: str,
                          ranges: sync.Ranges) -> None:
        """`peer`'s sync ranges: a receipt for every message of ours they cover."""
        for mid in self.outbox.covered(conv.id, peer, self.ctx.me, ranges):
            await self.delivered_to(mid, peer)

    async def owe_first_members(self, conv: Conversation, members: set[str]) -> None:
        """Our messages written while we knew no other member (a room's creator before
        anyone joined, or a joiner before it heard of anyone but the inviter...) got no
        delivery queue, so they would stay "sent" for good: the members we know now
        owe a receipt for them, which a sync answers at once if they hold them. Run
        when the first members are learnt, and at start for what a crash in between
        left without a queue."""
        if not members:
            return
        seq = 1
        async with conv.lock:  # a post in progress now has its recipients already
            while True:
                page = await self.ctx.storage.messages_unqueued(conv.id, self.ctx.me,
                                                                from_seq=seq, limit=500)
                for m in page["messages"]:
                    await self.ctx.storage.outbox_add(m["id"], sorted(members))
                    self.outbox.add(m["id"], conv.id, m["seq"], members, self.ctx.now())
                    seq = max(seq, int(m["seq"]) + 1)
                if not page["more"]:
                    return

    async def report(self, mid: str) -> dict[str, Any]:
        """The message's state, and per recipient of ours where it stands."""
        m = await self.ctx.storage.message_get(mid)
        if m is None:
            raise errors.not_found(f"no message {mid!r}")
        members: dict[str, str] = {}
        state = self.shown(m["conversation"], mid, m["state"])
        if m["author"] == self.ctx.me:
            for e in await self.ctx.storage.outbox_get(mid):
                members[e["recipient"]] = "delivered" if e["state"] == "done" else (
                    "failed" if e["state"] == "failed" else
                    state if state in ("requested", "refused") else
                    ("sent" if m["state"] != "pending" else "pending"))
        return {"id": mid, "state": state, "members": members}

    # -- our receipts ------------------------------------------------------------------
    def _kind_of(self, conversation: str) -> str | None:
        conv = self.registry.get(conversation)
        return conv.kind if conv is not None else None

    async def receipt_loop(self) -> None:
        # Asleep while nothing is owed: an idle node wakes for none of this.
        while True:
            if not self.receipts:
                await self._receipts_owed.wait()
            self._receipts_owed = trio.Event()
            await trio.sleep(RECEIPT_FLUSH_S)
            for conv_id, ids in self.receipts.take(self.ctx.now(), self._kind_of):
                conv = self.registry.get(conv_id)
                if conv is None:  # left while earlier receipts went out
                    continue
                unsent: list[str] = []
                for i in range(0, len(ids), cv.MAX_RECEIPT_IDS):
                    chunk = ids[i:i + cv.MAX_RECEIPT_IDS]
                    plaintext = cv.receipt_plaintext(conv.id, self.ctx.me, time.time(),
                                                     chunk)
                    try:
                        sig = await self.ctx.keystore.sign(cv.RECEIPT_DOMAIN, plaintext)
                        if not await self._publish_envelope(
                                conv, cv.seal(conv.keys.content_key, sig, plaintext)):
                            unsent += chunk
                    except errors.BusError as exc:
                        self.ctx.log.warning("gossip.receipt_failed", error=exc.message)
                        unsent += chunk
                if unsent:
                    self.receipts.put_back(conv_id, unsent)
