"""The Kademlia routing table: k-buckets by common prefix length, with replacement caches.

Bucket `i` holds up to k peers whose keyspace point shares exactly `i` leading bits
with ours. Entries are kept least-recently-seen first, as in the Kademlia paper: a peer
that keeps answering stays, and a newcomer to a full bucket waits in that bucket's
replacement cache instead of pushing a proven peer out (old peers are the likeliest to
stay up, and this makes the table hard to flood with fresh identities).

Liveness is learnt from traffic, not probed here: the core reports each answered query
(`peer_responded`) and each failed or timed-out one (`peer_failed`). A peer that fails
`max_failures` times in a row is evicted and the freshest replacement takes its place.
A bucket no lookup has passed through for `refresh_interval` is reported by
`buckets_to_refresh` so the core can look up a random key in it.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterable

from .keyspace import KEY_BITS, common_prefix_length, kad_key
from .messages import Peer


@dataclasses.dataclass(slots=True)
class Entry:
    peer: Peer
    point: int
    last_seen: float
    failures: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Eviction:
    """A peer removed for failing, and who (if anyone) took its place."""
    evicted: bytes
    replacement: bytes | None


class RoutingTable:
    def __init__(self, local_id: bytes, k: int = 20, max_failures: int = 2,
                 replacement_size: int | None = None, refresh_interval: float = 600.0) -> None:
        if k < 1 or max_failures < 1:
            raise ValueError("k and max_failures must be >= 1")
        self.local_id = local_id
        self.local_point = kad_key(local_id)
        self.k = k
        self.max_failures = max_failures
        self.replacement_size = k if replacement_size is None else replacement_size
        self.refresh_interval = refresh_interval
        # Buckets are created when first used: most of the 256 stay empty, and a
        # simulation holds thousands of tables.
        # Plain dicts keep insertion order, which is all the LRS order needs.
        self._buckets: dict[int, dict[bytes, Entry]] = {}
        self._replacements: dict[int, dict[bytes, Entry]] = {}
        self._touched: dict[int, float] = {}
        self._where: dict[bytes, int] = {}  # peer id -> bucket index, for table members

    # -- membership ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._where

    def bucket_of(self, peer_id: bytes) -> int:
        return common_prefix_length(self.local_point, kad_key(peer_id))

    def add(self, peer: Peer, now: float, point: int | None = None) -> bool:
        """Note a peer seen alive (a server-mode peer that talked to us or answered).

        True if it is in the table afterwards; False if its bucket was full and it went
        to the replacement cache instead. `point` saves hashing when the caller has it.
        """
        if peer.id == self.local_id:
            return False
        index = self._where.get(peer.id)
        if index is not None:
            bucket = self._buckets[index]
            entry = bucket.pop(peer.id)  # re-inserted last: most recently seen
            bucket[peer.id] = entry
            entry.last_seen, entry.failures = now, 0
            if peer.addrs:
                entry.peer = peer
            return True
        if point is None:
            point = kad_key(peer.id)
        index = common_prefix_length(self.local_point, point)
        bucket = self._buckets.setdefault(index, {})
        if len(bucket) < self.k:
            bucket[peer.id] = Entry(peer, point, now)
            self._where[peer.id] = index
            if index in self._replacements:
                self._replacements[index].pop(peer.id, None)
            self._touched[index] = max(self._touched.get(index, 0.0), now)
            return True
        cache = self._replacements.setdefault(index, {})
        cache.pop(peer.id, None)
        cache[peer.id] = Entry(peer, point, now)
        while len(cache) > self.replacement_size:
            del cache[next(iter(cache))]
        return False

    def peer_responded(self, peer: Peer, now: float) -> bool:
        return self.add(peer, now)

    def peer_failed(self, peer_id: bytes) -> Eviction | None:
        """Count a failed query; evict the peer after `max_failures` in a row."""
        index = self._where.get(peer_id)
        if index is None:
            for cache in self._replacements.values():
                if cache.pop(peer_id, None) is not None:
                    break
            return None
        entry = self._buckets[index][peer_id]
        entry.failures += 1
        if entry.failures < self.max_failures:
            return None
        return Eviction(peer_id, self._evict(index, peer_id))

    def remove(self, peer_id: bytes) -> None:
        index = self._where.get(peer_id)
        if index is not None:
            self._evict(index, peer_id)

    def _evict(self, index: int, peer_id: bytes) -> bytes | None:
        del self._buckets[index][peer_id]
        del self._where[peer_id]
        cache = self._replacements.get(index)
        if not cache:
            return None
        new_id, entry = cache.popitem()  # the most recently seen replacement
        self._buckets[index][new_id] = entry
        self._where[new_id] = index
        return new_id

    # -- queries ------------------------------------------------------------------------

    def get(self, peer_id: bytes) -> Peer | None:
        index = self._where.get(peer_id)
        return None if index is None else self._buckets[index][peer_id].peer

    def peers(self) -> Iterable[Peer]:
        for bucket in self._buckets.values():
            for entry in bucket.values():
                yield entry.peer

    def closest(self, target: int, count: int, exclude: bytes | None = None) -> list[Peer]:
        """The `count` table members nearest to keyspace point `target`, nearest first."""
        entries = (e for b in self._buckets.values() for e in b.values() if e.peer.id != exclude)
        best = heapq.nsmallest(count, entries, key=lambda e: e.point ^ target)
        return [e.peer for e in best]

    def bucket_sizes(self) -> dict[int, int]:
        return {i: len(b) for i, b in sorted(self._buckets.items()) if b}

    def replacement_count(self, index: int) -> int:
        return len(self._replacements.get(index, ()))

    # -- refresh ------------------------------------------------------------------------

    def touch_bucket(self, target: int, now: float) -> None:
        """A lookup towards `target` just completed, which refreshes its bucket."""
        index = common_prefix_length(self.local_point, target)
        if index < KEY_BITS:
            self._touched[index] = now

    def buckets_to_refresh(self, now: float, max_index: int) -> list[int]:
        """Buckets up to `max_index` not refreshed for `refresh_interval`.

        Empty buckets below the deepest non-empty one count too: they are empty because
        nobody filled them, not because no peer exists there.
        """
        deepest = max((i for i, b in self._buckets.items() if b), default=-1)
        last = min(max_index, deepest)
        return [i for i in range(last + 1)
                if now - self._touched.get(i, 0.0) >= self.refresh_interval]
