"""Relays found through the DHT: the pure bookkeeping behind it (no I/O, time as `now`).

A public node that runs the relay service announces itself as a provider of one
well-known DHT key, `RELAY_PROVIDER_KEY`, and re-announces every `ANNOUNCE_INTERVAL_S`
(the dht republishes on its own only every 22 h, and forgets what it provides when it
restarts). A private node holding fewer reservations than it wants asks the dht for the
providers of that key and keeps the ones it can use as relay candidates, next to the
configured relays and the connected peers that offer the hop protocol.

Theory of operation
-------------------
* Every call to the dht may fail (the dht restarting, no DHT peers yet, nobody
  providing yet): a failure, or an empty answer, makes the next attempt wait
  `RETRY_MIN_S`, doubling up to `RETRY_MAX_S`; a success resets that. A lookup that
  found relays is not repeated for `LOOKUP_INTERVAL_S` even while still short, so a
  node whose found relays all refuse it does not hammer the DHT.
* Candidates are bounded (`MAX_CANDIDATES`, the freshest kept), expire after
  `CANDIDATE_TTL_S` unless a lookup finds them again, and one that failed
  `MAX_FAILURES` reservations in a row is forgotten until a later lookup names it.
* What a provider record says comes from other peers: entries that do not parse are
  skipped, and only addresses worth dialling are kept (TCP, not through a relay, not
  loopback, unspecified or link-local, naming no other peer).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import multiaddr

from p2pm.common import identity

from .reuseport import is_circuit

# sha256 multihash (code 0x12, length 0x20) of b"/p2pm/relay/v1": the provider key under
# which relays announce themselves. Changing it splits the network's relays in two.
RELAY_PROVIDER_KEY = b"\x12\x20" + hashlib.sha256(b"/p2pm/relay/v1").digest()
RELAY_PROVIDER_KEY_HEX = RELAY_PROVIDER_KEY.hex()

ANNOUNCE_INTERVAL_S = 600.0
LOOKUP_INTERVAL_S = 60.0
RETRY_MIN_S = 2.0
RETRY_MAX_S = 120.0
MAX_CANDIDATES = 8
MAX_ADDRS = 8
CANDIDATE_TTL_S = 1800.0
MAX_FAILURES = 3


class Backoff:
    """When the next attempt is due: at once at first; after a failure RETRY_MIN_S,
    doubling up to RETRY_MAX_S; after a success whatever the caller says."""

    def __init__(self, min_s: float = RETRY_MIN_S, max_s: float = RETRY_MAX_S) -> None:
        self.min_s, self.max_s = min_s, max_s
        self.due = 0.0
        self.delay = min_s

    def is_due(self, now: float) -> bool:
        return now >= self.due

    def failed(self, now: float) -> None:
        self.due = now + self.delay
        self.delay = min(self.delay * 2, self.max_s)

    def succeeded(self, now: float, again_in: float) -> None:
        self.due = now + again_in
        self.delay = self.min_s

    def next_in(self, now: float) -> float:
        return max(0.0, self.due - now)


class RelayAnnouncer:
    """A relay's announcements: when the next is due, and how the last ones went."""

    def __init__(self) -> None:
        self.backoff = Backoff()
        self.announces = 0
        self.failures = 0
        self.last_sent_to = 0
        self.last_error: str | None = None

    def due(self, now: float) -> bool:
        return self.backoff.is_due(now)

    def done(self, now: float, result: Any) -> bool:
        """The dht's reply to `provide`; True if some DHT peer took the announcement
        (else it is retried soon, as a failure)."""
        sent_to = result.get("sent_to") if isinstance(result, dict) else None
        count = len(sent_to) if isinstance(sent_to, list) else 0
        self.last_sent_to = count
        if count == 0:
            self.failed(now, "no DHT peer took the announcement")
            return False
        self.announces += 1
        self.last_error = None
        self.backoff.succeeded(now, ANNOUNCE_INTERVAL_S)
        return True

    def failed(self, now: float, error: str) -> None:
        self.failures += 1
        self.last_error = error
        self.backoff.failed(now)

    def status(self, now: float) -> dict[str, Any]:
        return {"announces": self.announces, "failures": self.failures,
                "last_sent_to": self.last_sent_to, "last_error": self.last_error,
                "next_in_s": round(self.backoff.next_in(now), 1)}


@dataclass(frozen=True)
class RelayCandidate:
    """A relay a provider record named, with the addresses worth dialling."""

    peer_id: str
    addrs: tuple[multiaddr.Multiaddr, ...]
    found_at: float


class RelayFinder:
    """A private node's lookups of relays and the candidates they gave."""

    def __init__(self, own_peer_id: str, max_candidates: int = MAX_CANDIDATES) -> None:
        self.own_peer_id = own_peer_id
        self.max_candidates = max_candidates
        self.backoff = Backoff()
        self.in_flight = False
        self.lookups = 0
        self.lookup_failures = 0
        self.found = 0  # candidates learnt that were not known before
        self.last_error: str | None = None
        self._candidates: OrderedDict[str, RelayCandidate] = OrderedDict()
        self._failures: dict[str, int] = {}

    # lookups -------------------------------------------------------------------------
    def lookup_due(self, now: float, short: bool) -> bool:
        """Whether to ask the dht now: only while reservations fall short."""
        return short and not self.in_flight and self.backoff.is_due(now)

    def lookup_started(self) -> None:
        self.in_flight = True
        self.lookups += 1

    def lookup_done(self, now: float, result: Any) -> list[RelayCandidate]:
        """The dht's reply to `find_providers`; the candidates it named (new or seen
        again), each with its usable addresses."""
        self.in_flight = False
        providers = result.get("providers") if isinstance(result, dict) else None
        named: list[RelayCandidate] = []
        for entry in providers if isinstance(providers, list) else []:
            candidate = self._parse(entry, now)
            if candidate is not None and all(c.peer_id != candidate.peer_id for c in named):
                named.append(candidate)
            if len(named) >= self.max_candidates:
                break
        for candidate in named:
            if candidate.peer_id not in self._candidates:
                self.found += 1
            self._candidates[candidate.peer_id] = candidate
            self._candidates.move_to_end(candidate.peer_id)
            self._failures.pop(candidate.peer_id, None)
        while len(self._candidates) > self.max_candidates:
            gone, _ = self._candidates.popitem(last=False)
            self._failures.pop(gone, None)
        if named:
            self.last_error = None
            self.backoff.succeeded(now, LOOKUP_INTERVAL_S)
        else:
            self.last_error = "no relay announced in the DHT"
            self.backoff.failed(now)
        return named

    def lookup_failed(self, now: float, error: str) -> None:
        self.in_flight = False
        self.lookup_failures += 1
        self.last_error = error
        self.backoff.failed(now)

    # candidates ----------------------------------------------------------------------
    def candidates(self, now: float) -> list[RelayCandidate]:
        for peer_id in [p for p, c in self._candidates.items()
                        if now - c.found_at > CANDIDATE_TTL_S]:
            del self._candidates[peer_id]
            self._failures.pop(peer_id, None)
        return list(self._candidates.values())

    def is_candidate(self, peer_id: str) -> bool:
        return peer_id in self._candidates

    def reserve_result(self, peer_id: str, ok: bool) -> None:
        """How a reservation on `peer_id` went; a discovered relay that keeps failing
        is forgotten (a later lookup may name it again)."""
        if peer_id not in self._candidates:
            return
        if ok:
            self._failures.pop(peer_id, None)
            return
        self._failures[peer_id] = self._failures.get(peer_id, 0) + 1
        if self._failures[peer_id] >= MAX_FAILURES:
            del self._candidates[peer_id]
            del self._failures[peer_id]

    def status(self, now: float) -> dict[str, Any]:
        return {"lookups": self.lookups, "lookup_failures": self.lookup_failures,
                "found": self.found, "last_error": self.last_error,
                "next_lookup_in_s": round(self.backoff.next_in(now), 1),
                "candidates": [{"peer_id": c.peer_id, "addrs": [str(a) for a in c.addrs],
                                "failures": self._failures.get(c.peer_id, 0)}
                               for c in self.candidates(now)]}

    def _parse(self, entry: Any, now: float) -> RelayCandidate | None:
        if not isinstance(entry, dict):
            return None
        peer_id, addrs = entry.get("peer_id"), entry.get("addrs")
        if not isinstance(peer_id, str) or peer_id == self.own_peer_id \
                or not isinstance(addrs, list):
            return None
        if not is_peer_id(peer_id):
            return None
        usable: list[multiaddr.Multiaddr] = []
        for text in addrs:
            addr = dialable(text, peer_id)
            if addr is not None and all(str(addr) != str(u) for u in usable):
                usable.append(addr)
            if len(usable) >= MAX_ADDRS:
                break
        if not usable:
            return None
        return RelayCandidate(peer_id, tuple(usable), now)


def is_peer_id(text: str) -> bool:
    """Whether `text` is a base58 peer ID (the one rule of `identity.peer_id_bytes`)."""
    try:
        identity.peer_id_bytes(text)
    except identity.PeerIdError:
        return False
    return True


def dialable(text: Any, peer_id: str) -> multiaddr.Multiaddr | None:
    """`text` without its /p2p/ part if it is a direct TCP address of `peer_id` that
    another machine could reach; else None."""
    if not isinstance(text, str) or is_circuit(text):
        return None
    try:
        addr = multiaddr.Multiaddr(text)
        names = [p.name for p in addr.protocols()]
        if addr.get_peer_id() not in (None, peer_id) or "tcp" not in names:
            return None
        if names[0] in ("ip4", "ip6"):
            ip = ipaddress.ip_address(addr.value_for_protocol(names[0]))
            if ip.is_loopback or ip.is_unspecified or ip.is_link_local:
                return None
        elif names[0] not in ("dns", "dns4", "dns6"):
            return None
        if "p2p" in names:
            addr = addr.decapsulate_code(multiaddr.protocols.P_P2P)
        return addr
    except Exception:
        return None
