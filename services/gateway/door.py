"""The rules of the gateway's TCP door: where it may listen, how many wrong tokens it
hears, and how much it says about them.

* Bind: only a loopback address (127.0.0.0/8, ::1, localhost) unless the config sets
  `gateway.tcp_allow_remote = true`. The door speaks ZeroMQ in clear: off loopback the
  token (and every request) crosses the network readable by anyone on the path, so
  listening there is something the owner must ask for by name.
* Failed tokens: each costs a token from its source address's bucket and one from a
  bucket for the whole door (common/ratelimit.py). A source whose bucket is empty, or
  any source while the door's is, is refused before its token is even compared, with a
  `limit` error that says so; the guesses a flood gets are bounded by the rates.
* Logging: the first refusal after a quiet spell is logged at once; after that one
  summary line per `SUMMARY_S` while refusals go on (counts and the busiest sources),
  never a line per request.

Sans-IO: time comes in as `now`; `DoorGuard.summary(now)` returns the line to log.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from p2pm.common.ratelimit import Rate, RateTable
from p2pm.common.settings import is_loopback, tcp_host

ALLOW_REMOTE_KEY = "gateway.tcp_allow_remote"
PER_SOURCE = Rate(rate=1.0, burst=10.0)  # failed tokens per source address
OVERALL = Rate(rate=20.0, burst=100.0)  # failed tokens at the whole door
MAX_SOURCES = 1024  # per-source buckets kept (least recently used dropped)
SUMMARY_S = 10.0
SUMMARY_TOP = 5  # sources named in a summary line
# Sources counted between two summaries; past this, refusals still count in the total
# and under "other", so the table cannot grow with the number of addresses.
MAX_COUNTED_SOURCES = 256


def check_bind(endpoint: str, allow_remote: Any) -> None:
    """Refuse an endpoint off loopback unless `gateway.tcp_allow_remote` is true."""
    if not isinstance(allow_remote, bool):
        raise ValueError(f"{ALLOW_REMOTE_KEY} must be true or false, got {allow_remote!r}")
    host = tcp_host(endpoint)
    if not is_loopback(host) and not allow_remote:
        raise ValueError(
            f"gateway.tcp {endpoint!r} is not a loopback address; the TCP door is "
            f"unencrypted, so listening on {host!r} needs {ALLOW_REMOTE_KEY} = true")


@dataclass(frozen=True, slots=True)
class Summary:
    refused: int
    limited: int
    sources: tuple[tuple[str, int], ...]
    other_sources: int


class DoorGuard:
    def __init__(self) -> None:
        self.per_source = RateTable(PER_SOURCE, MAX_SOURCES)
        self.overall = RateTable(OVERALL, 1)
        self.refused = 0  # wrong or missing tokens, ever
        self.limited = 0  # refused unchecked because a bucket was empty, ever
        self._window: Counter[str] = Counter()
        self._window_other = 0
        self._window_refused = 0
        self._window_limited = 0
        self._last_summary: float | None = None

    def admits(self, source: str, now: float) -> bool:
        """May this source's token be checked now? False counts as a limited refusal."""
        if self.per_source.would_allow(source, now) and self.overall.would_allow(None, now):
            return True
        self.limited += 1
        self._window_limited += 1
        self._note(source)
        return False

    def failed(self, source: str, now: float) -> bool:
        """A wrong token from `source`. True if this one should be logged at once (the
        first after a quiet spell); the rest go into the next summary."""
        self.per_source.allow(source, now)
        self.overall.allow(None, now)
        self.refused += 1
        self._window_refused += 1
        self._note(source)
        if self._last_summary is None:
            self._last_summary = now
            return True
        return False

    def summary(self, now: float) -> Summary | None:
        """What was refused since the last summary, once per SUMMARY_S; None when
        nothing was (and then the next refusal is logged at once again)."""
        if self._last_summary is None or now - self._last_summary < SUMMARY_S:
            return None
        if not (self._window_refused or self._window_limited):
            self._last_summary = None
            return None
        out = Summary(self._window_refused, self._window_limited,
                      tuple(self._window.most_common(SUMMARY_TOP)),
                      max(0, len(self._window) - SUMMARY_TOP) + self._window_other)
        self._window.clear()
        self._window_other = self._window_refused = self._window_limited = 0
        self._last_summary = now
        return out

    def status(self) -> dict[str, int]:
        return {"tcp_refused": self.refused, "tcp_limited": self.limited}

    def _note(self, source: str) -> None:
        if source in self._window or len(self._window) < MAX_COUNTED_SOURCES:
            self._window[source] += 1
        else:
            self._window_other += 1
