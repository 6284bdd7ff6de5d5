"""The two message caches of GossipSub: `MessageCache` (recent full messages in
heartbeat windows, for IWANT answers and IHAVE gossip) and `SeenCache` (ids seen
within a TTL, for deduplication).

Both are plain data structures; time comes in as `now`, windows shift when the
router's heartbeat says so.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from .messages import Message


@dataclass
class CachedMessage:
    message: Message
    encoded: bytes  # the marshalled Message, encoded once for every peer it goes to
    iwant_served: dict[bytes, int] = field(default_factory=dict)  # peer -> times served


class MessageCache:
    """`mcache` of the spec: `mcache_len` windows, the newest `mcache_gossip` of which
    are advertised in IHAVE."""

    def __init__(self, history: int, gossip: int) -> None:
        self._history = history
        self._gossip = gossip
        self._windows: deque[list[tuple[bytes, str]]] = deque([[]])
        self._entries: dict[bytes, CachedMessage] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, msg_id: bytes) -> bool:
        return msg_id in self._entries

    def put(self, msg_id: bytes, message: Message, encoded: bytes) -> None:
        if msg_id in self._entries:
            return
        self._entries[msg_id] = CachedMessage(message, encoded)
        self._windows[0].append((msg_id, message.topic))

    def get(self, msg_id: bytes) -> CachedMessage | None:
        return self._entries.get(msg_id)

    def gossip_ids(self, topic: str) -> list[bytes]:
        ids: list[bytes] = []
        for window in list(self._windows)[: self._gossip]:
            ids.extend(mid for mid, t in window if t == topic)
        return ids

    def shift(self) -> None:
        self._windows.appendleft([])
        while len(self._windows) > self._history:
            for mid, _ in self._windows.pop():
                self._entries.pop(mid, None)


class SeenCache:
    """Message ids first seen less than `ttl` seconds ago. Entries expire in
    insertion order, so purging is amortised O(1) per id."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, msg_id: bytes) -> bool:
        return msg_id in self._expiry

    def add(self, msg_id: bytes, now: float) -> bool:
        """Record `msg_id`; False if it was already there (a duplicate)."""
        if msg_id in self._expiry:
            return False
        self._expiry[msg_id] = now + self._ttl
        return True

    def purge(self, now: float) -> int:
        expired = 0
        while self._expiry:
            mid, at = next(iter(self._expiry.items()))
            if at > now:
                break
            self._expiry.popitem(last=False)
            expired += 1
        return expired
