"""Token buckets per key, in a bounded table: the one rate-limit rule every door uses.

The transport limits what each remote peer may open (new streams, and each protocol a
stranger can reach); the gateway's TCP door limits failed tokens per source address and
overall. Both ask one question, `allow(key, now)`, of a `RateTable`.

A bucket holds up to `burst` tokens and gains `rate` a second; each allowed event spends
one. Time comes in as `now` (any monotonic clock, in seconds), so the table is tested
without sleeping.

Bound and overflow rule: the table keeps at most `max_keys` buckets. When a new key
arrives at a full table, the bucket used least recently is dropped. A dropped bucket that
had refilled is exactly what a new one would be, so nothing is forgotten in the common
case; what an attacker gains by cycling keys to flush a throttled one is bounded by the
other limits in front of the table (a connection costs a Noise handshake and the
connection limit is far below `max_keys`; a TCP source is one address). Evictions are
counted, so a table that churns shows in `sys.status`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rate:
    """`rate` events a second on average, `burst` at once."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        if not self.rate > 0 or not self.burst >= 1:
            raise ValueError(f"a rate needs rate > 0 and burst >= 1, got {self}")


class RateTable:
    """Token buckets keyed by anything hashable (a peer ID, `(peer, protocol)`, an IP)."""

    def __init__(self, rate: Rate, max_keys: int) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self.rate = rate
        self.max_keys = max_keys
        # key -> [tokens, last refill time]; order = least recently used first.
        self._buckets: OrderedDict[Hashable, list[float]] = OrderedDict()
        self.allowed = 0
        self.refused = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: Hashable, now: float, cost: float = 1.0) -> bool:
        """Spend `cost` tokens of `key`'s bucket if it has them; False (and nothing
        spent) if not."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
                self.evicted += 1
            bucket = self._buckets[key] = [self.rate.burst, now]
        else:
            self._buckets.move_to_end(key)
            # A clock that went backwards (it should not) refills nothing.
            elapsed = max(0.0, now - bucket[1])
            bucket[0] = min(self.rate.burst, bucket[0] + elapsed * self.rate.rate)
            bucket[1] = max(bucket[1], now)
        if bucket[0] >= cost:
            bucket[0] -= cost
            self.allowed += 1
            return True
        self.refused += 1
        return False

    def would_allow(self, key: Hashable, now: float, cost: float = 1.0) -> bool:
        """Whether `allow` would succeed now, spending and counting nothing."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return self.rate.burst >= cost
        elapsed = max(0.0, now - bucket[1])
        return min(self.rate.burst, bucket[0] + elapsed * self.rate.rate) >= cost

    def forget(self, key: Hashable) -> None:
        self._buckets.pop(key, None)

    def status(self) -> dict[str, int]:
        return {"keys": len(self._buckets), "max_keys": self.max_keys,
                "allowed": self.allowed, "refused": self.refused, "evicted": self.evicted}
