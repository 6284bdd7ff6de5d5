"""The node-wide budget for unread muxer data, and the rule for who pays when it runs out.

Each connection may hold `GuardLimits.conn_buffer_cap` unread bytes (yamux_guard.py),
but many connections each under that cap could together hold far more than a node
should spend: 256 connections x 8 MiB is 2 GiB. So all connections also share one
budget, `cap` bytes in total (the `transport.mux_budget_mib` setting, default 64 MiB).

The rule when a DATA frame would take the node over the budget:

* The fair share is `cap / n`, n the connections holding unread data (the one asking
  included). With the default 64 MiB and the 256-connection limit a share is never
  below 256 KiB, one default stream window, so every connection can always have a
  full window unread.
* The connection whose unread data is furthest over its share pays. If that is the
  connection the frame came on, the frame's stream is reset (as for the
  per-connection cap; no strike: the peer stayed inside its windows). If it is another
  one, that connection's streams are reset, largest buffer first, until it holds no
  more than its share; then the question is asked again.
* A connection at or under its share is never the one that pays: when the total is
  over `cap`, some connection is over `cap / n`, and it is chosen first. An honest
  peer whose reader is slow but within its share keeps its streams.

The table holds one entry per live connection (so it is bounded by the swarm's
connection limit) and an entry is dropped when its connection ends. What a connection
holds is what it last reported (after each frame it accepts, and exactly for every
connection when the budget is short): readers drain buffers between reports, so the
total can only be overestimated, never under.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

MIB = 1024 * 1024
DEFAULT_BUDGET = 64 * MIB
BUDGET_RANGE_MIB = (4, 4096)  # the checked range of transport.mux_budget_mib


@dataclass
class NodeBudget:
    cap: int = DEFAULT_BUDGET
    _held: dict[Hashable, int] = field(default_factory=dict)
    total: int = 0
    peak: int = 0
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys((
        "short", "sheds", "shed_bytes", "self_resets"), 0))

    def report(self, conn: Hashable, unread: int) -> None:
        """What `conn` holds unread now."""
        self.total += unread - self._held.get(conn, 0)
        self._held[conn] = unread
        self.peak = max(self.peak, self.total)

    def drop(self, conn: Hashable) -> None:
        """`conn` ended: its buffers are gone."""
        self.total -= self._held.pop(conn, 0)

    def connections(self) -> list[Hashable]:
        return list(self._held)

    def fits(self, length: int) -> bool:
        return self.total + length <= self.cap

    def share(self, conn: Hashable) -> int:
        """`cap` over the connections holding unread data, `conn` counted in."""
        holders = {k for k, v in self._held.items() if v > 0} | {conn}
        return self.cap // len(holders)

    def payer(self, conn: Hashable, length: int) -> Hashable | None:
        """Who pays for `length` more bytes on `conn`: None if they fit, else the
        connection furthest over its fair share (counting `length` as `conn`'s)."""
        if self.fits(length):
            return None
        share = self.share(conn)

        def excess(key: Hashable) -> int:
            return self._held.get(key, 0) + (length if key == conn else 0) - share

        keys = set(self._held) | {conn}
        return max(keys, key=lambda k: (excess(k), k == conn))

    def status(self) -> dict[str, int]:
        return {"cap": self.cap, "unread": self.total, "peak": self.peak,
                "connections": len(self._held), **self.counters}


def shed_plan(buffers: dict[int, int], keep: int) -> list[int]:
    """The streams (ids) to reset, largest buffer first, so that what is left of
    `buffers` (stream id -> unread bytes) is at most `keep`."""
    left = sum(buffers.values())
    plan = []
    for sid, size in sorted(buffers.items(), key=lambda kv: -kv[1]):
        if left <= keep or size == 0:
            break
        plan.append(sid)
        left -= size
    return plan
