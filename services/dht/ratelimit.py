"""Per-peer request rate limiting for the DHT server side (token buckets, time as argument).

Each peer gets a bucket of `burst` tokens refilled at `rate` per second; a request
spends one. Only a bounded number of peers is tracked: when the table is full, the
peer idle the longest is forgotten (a forgotten peer starts again with a full bucket,
which costs at most one burst and keeps memory bounded against many identities).
"""

from __future__ import annotations

from collections import OrderedDict


class RateLimiter:
    def __init__(self, rate: float, burst: float, max_peers: int = 10_000) -> None:
        if rate <= 0 or burst < 1 or max_peers < 1:
            raise ValueError("rate > 0, burst >= 1 and max_peers >= 1 are required")
        self.rate = rate
        self.burst = burst
        self.max_peers = max_peers
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()  # tokens, at
        self.refused = 0

    def allow(self, peer_id: bytes, now: float) -> bool:
        """Spend one token of `peer_id` if it has one."""
        tokens, at = self._buckets.pop(peer_id, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        else:
            self.refused += 1
        self._buckets[peer_id] = (tokens, now)
        while len(self._buckets) > self.max_peers:
            self._buckets.popitem(last=False)
        return allowed
