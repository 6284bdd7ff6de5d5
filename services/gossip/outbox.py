"""The outbox without I/O: which of our messages each recipient still owes us a
receipt for, and whom to chase.

Storage keeps the truth (one outbox row per message and recipient, which survives
restarts); this object mirrors the pending rows in memory, so a receipt, a sync HAVE or
the maintenance tick is answered without a database scan. The actor writes storage
first and tells the outbox after; on start it refills the outbox from storage.

A message is delivered once no recipient owes a receipt for it. Whoever still owes one
`grace_s` after we first noticed is due: a receipt or the message itself was probably
lost, and the actor syncs with them (or dials them, for a direct chat).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import sync


@dataclass
class Owed:
    conversation: str
    seq: int
    recipients: set[str]
    since: float  # when it was queued (or loaded after a restart)


@dataclass
class Outbox:
    grace_s: float = 10.0
    _owed: dict[str, Owed] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._owed)

    def __contains__(self, message_id: str) -> bool:
        return message_id in self._owed

    def add(self, message_id: str, conversation: str, seq: int, recipients: set[str],
            now: float) -> None:
        if recipients:
            self._owed[message_id] = Owed(conversation, seq, set(recipients), now)

    def owes(self, message_id: str, peer: str, conversation: str | None = None) -> bool:
        """Whether `peer` still owes a receipt for this message (of this conversation:
        a receipt names ids, and must not acknowledge another conversation's)."""
        entry = self._owed.get(message_id)
        return entry is not None and peer in entry.recipients and (
            conversation is None or entry.conversation == conversation)

    def delivered(self, message_id: str, peer: str) -> str | None:
        """`peer` has the message. Returns the conversation if that was the last
        recipient (the message is now delivered), else None."""
        entry = self._owed.get(message_id)
        if entry is None:
            return None
        entry.recipients.discard(peer)
        if entry.recipients:
            return None
        del self._owed[message_id]
        return entry.conversation

    def covered(self, conversation: str, peer: str, author: str,
                ranges: sync.Ranges) -> list[str]:
        """Our messages `peer` owes a receipt for that its ranges show it holds."""
        return [mid for mid, e in self._owed.items()
                if e.conversation == conversation and peer in e.recipients
                and sync.holds(ranges, author, e.seq)]

    def owed_to(self, conversation: str, peer: str) -> list[tuple[str, int]]:
        """(message id, seq) of our messages in `conversation` that `peer` owes a
        receipt for."""
        return [(mid, e.seq) for mid, e in self._owed.items()
                if e.conversation == conversation and peer in e.recipients]

    def due(self, now: float) -> dict[str, set[str]]:
        """peer -> conversations in which it has owed a receipt for over grace_s."""
        out: dict[str, set[str]] = {}
        for e in self._owed.values():
            if now - e.since >= self.grace_s:
                for peer in e.recipients:
                    out.setdefault(peer, set()).add(e.conversation)
        return out
