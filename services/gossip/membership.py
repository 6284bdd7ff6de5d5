"""Who is a member of a conversation: the one place that adds members.

A peer becomes a member of a conversation we hold in one of four ways, each a `Why`,
and every one of them goes through `Membership.add`, so a stricter rule is written
here once and holds everywhere:

* STORED: the conversation's saved member list, as it was created (us), joined (us
  and the inviter, whose signature is on the invite) or opened (a direct chat's two
  peers). The caller saved it first.
* AUTHOR: the author of a message in it whose envelope we opened with the
  conversation's key and whose signature we checked (in a direct chat the router's
  validation has already refused a non-member's).
* SYNC: the peer of a sync session, which proved in its HELLO that it holds the
  conversation's key; in a room also whoever that peer vouches for by sharing its
  addresses (a direct chat's members are fixed, so the session names only the peer).
* PROVIDER: a peer that announced itself in the DHT under the conversation's
  provider key.

Today each way admits whoever it names. A member learnt (anything but STORED) is saved
to storage; the first members a conversation gets owe us receipts for what we wrote
while alone in it, so they are handed to delivery (`owe_first_members`).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from p2pm.common import errors

from .context import Context

if TYPE_CHECKING:
    from .state import Conversation


class Why(enum.Enum):
    STORED = "stored"
    AUTHOR = "author"
    SYNC = "sync"
    PROVIDER = "provider"


class Membership:
    def __init__(self, ctx: Context,
                 owe_first: Callable[[Conversation, set[str]], Awaitable[None]]) -> None:
        self.ctx = ctx
        self._owe_first = owe_first

    def add(self, conv: Conversation, peers: set[str], why: Why) -> set[str]:
        """Make `peers` members of `conv` for the reason `why`; returns those that were
        not members before."""
        new = set(peers) - conv.members
        if not new:
            return new
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
