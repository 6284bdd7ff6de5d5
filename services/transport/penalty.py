"""The penalty box: peers refused at connection setup for a while after the muxer cut
them off (a window overrun too many, writing into dead streams, a protocol error).

Without it an offender reconnects at once (a new connection costs it one Noise
handshake) and gets fresh strikes. A boxed peer is refused when its next connection
reaches muxer negotiation, inbound or outbound, until its term ends. The first term is
`first_s` (60 s); each offence while the peer is still remembered doubles it, up to
`max_s` (1 h). A peer is remembered for `max_s` after its term ends, so an offender
that waits out a term and offends again gets the doubled one.

Keyed by peer ID only: source addresses are not boxed, because peers behind one NAT
(or on one machine) share an address, and boxing it would refuse honest ones. A
stranger with fresh peer IDs is not stopped by this (an ID costs a key pair); the
muxer's limits bound what each of its connections can cost.

Bound and overflow rule: at most `max_keys` entries. A new offence at a full table
first drops entries whose memory has expired; if none has, it drops the entry whose
term ends soonest (the offender closest to being let in anyway). Every refusal, offence
and eviction is counted for sys.status (transport.limits.penalty).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Term:
    until: float  # refused before this time
    length: float  # this term's length, doubled by the next offence


@dataclass
class PenaltyBox:
    first_s: float = 60.0
    max_s: float = 3600.0
    max_keys: int = 1024
    _terms: dict[Hashable, Term] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys((
        "offences", "refused", "evicted"), 0))

    def punish(self, key: Hashable, now: float) -> float:
        """Box `key` for its next term; returns the term's length in seconds."""
        self.counters["offences"] += 1
        old = self._terms.pop(key, None)
        if old is not None and now < old.until + self.max_s:
            length = min(self.max_s, old.length * 2)
        else:
            length = self.first_s
        if len(self._terms) >= self.max_keys:
            self._expire(now)
        if len(self._terms) >= self.max_keys:
            soonest = min(self._terms, key=lambda k: self._terms[k].until)
            del self._terms[soonest]
            self.counters["evicted"] += 1
        self._terms[key] = Term(now + length, length)
        return length

    def refuses(self, key: Hashable, now: float) -> float:
        """Seconds left of `key`'s term (counted as a refusal), 0 if it may connect."""
        term = self._terms.get(key)
        if term is None or now >= term.until:
            return 0.0
        self.counters["refused"] += 1
        return term.until - now

    def _expire(self, now: float) -> None:
        for key in [k for k, t in self._terms.items() if now >= t.until + self.max_s]:
            del self._terms[key]

    def status(self, now: float) -> dict[str, int]:
        boxed = sum(1 for t in self._terms.values() if now < t.until)
        return {"boxed": boxed, "remembered": len(self._terms),
                "max_keys": self.max_keys, **self.counters}
