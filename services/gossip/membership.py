"""Who is a member of a conversation: the one place that adds members.

A peer becomes a member of a conversation we hold in one of three ways, each a `Why`,
and every one of them goes through `Membership.add`, so the rule is written here once
and holds everywhere. Each is a proof, never someone else's word:

* STORED: the conversation's saved member list, as it was created (us), joined (us
  and the inviter, whose signature is on the invite) or opened (a direct chat's two
  peers), and every member proven since. The caller saved it first.
* AUTHOR: the author of a message in it whose envelope we opened with the
  conversation's key and whose signature we checked (in a direct chat the router's
  validation has already refused a non-member's).
* SYNC: the peer of a sync session that proved, bound to both peer IDs and fresh
  nonces, that it holds the conversation's key (syncing.py). The addresses a session
  shares are hints to reach peers, never members; DHT provider records are hints to
  dial and ask for that proof (reach.py).

An id that is not a valid peer ID is dropped and counted (`invalid_member_dropped`)
whatever the reason, so it can never reach storage nor block posting. A member is
admitted to the conversation's private GossipSub topic (router/core.py), so only
members hear of it and get its traffic. A member learnt (anything but STORED) is saved
to storage; the first members a conversation gets owe us receipts for what we wrote
while alone in it, so they are handed to delivery (`owe_first_members`).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from p2pm.common import errors

from .context import Context, peer_bytes
from .sync import valid_peer_id

if TYPE_CHECKING:
    from .state import Conversation


class Why(enum.Enum):
    STORED = "stored"
    AUTHOR = "author"
    SYNC = "sync"


class Membership:
    def __init__(self, ctx: Context,
                 owe_first: Callable[[Conversation, set[str]], Awaitable[None]]) -> None:
        self.ctx = ctx
        self._owe_first = owe_first

    def add(self, conv: Conversation, peers: set[str], why: Why) -> set[str]:
        """Make `peers` members of `conv` for the reason `why`; returns those that were
        not members before."""
        new = {p for p in set(peers) - conv.members if valid_peer_id(p)}
        dropped = len(set(peers) - conv.members - new)
        if dropped:
            self.ctx.counters["invalid_member_dropped"] += dropped
        if not new:
            return new
        if self.ctx.started:
            for peer in new:
                self.ctx.router.admit(conv.keys.topic, peer_bytes(peer), self.ctx.now())
        if why is Why.STORED:
            conv.members |= new
            return new
        alone = not conv.members - {self.ctx.me}
        conv.members |= new
        self.ctx.spawn(self._save, conv)
        if alone:
            self.ctx.spawn(self._owe_first, conv, new - {self.ctx.me})
        return new

    async def _save(self, conv: Conversation) -> None:
        try:
            await self.ctx.storage.conversation_put(conv.id, conv.kind, conv.secret,
                                                    sorted(conv.members), name=conv.name)
        except errors.BusError as exc:
            self.ctx.log.warning("gossip.members_not_saved", conversation=conv.id,
                                 error=exc.message)
