"""One iterative Kademlia lookup as a pure state machine (FIND_NODE, GET_VALUE,
GET_PROVIDERS).

Theory of operation
-------------------
A lookup keeps every peer it has heard of as a candidate, ordered by XOR distance to
the target, each in one state:

    NEW --poll()--> WAITING --on_reply() / on_refused()--> SUCCEEDED
                       |
                       +--on_failure() / expire(now) past its deadline--> FAILED

`poll(now)` hands out the nearest NEW candidates among the k nearest not-FAILED ones,
keeping at most `alpha` WAITING. A reply adds its closer peers as NEW candidates (one
hop further than the peer that named them). The lookup is done when the k nearest
not-FAILED candidates have all SUCCEEDED, or when nothing is NEW or WAITING any more;
GET_VALUE also stops at `quorum` valid values and GET_PROVIDERS at `want_providers`
distinct providers; a FIND_NODE for one peer (`stop_when_found`) stops as soon as a
reply gives that peer's addresses. Nothing here sends or waits: the core turns `poll()` into requests
and feeds back replies, failures and the clock.

Hops: a seed from our own table is hop 1; a peer first named by a hop-h peer is hop
h+1. `rounds` is the deepest hop that answered, i.e. the number of sequential network
round trips the lookup needed (concurrent requests of the same depth count once).
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
from collections.abc import Callable

from p2pm.common.identity import is_multihash

from .keyspace import kad_key
from .messages import Message, MessageType, Peer


MAX_FOUND_ADDRS = 32  # addresses kept for a found peer, merged from every reply naming it


class LookupKind(enum.Enum):
    FIND_NODE = MessageType.FIND_NODE
    GET_VALUE = MessageType.GET_VALUE
    GET_PROVIDERS = MessageType.GET_PROVIDERS


class State(enum.Enum):
    NEW = 0
    WAITING = 1
    SUCCEEDED = 2
    FAILED = 3


@dataclasses.dataclass(slots=True)
class Candidate:
    peer: Peer
    distance: int
    hop: int
    state: State = State.NEW
    deadline: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class LookupResult:
    kind: LookupKind
    key: bytes
    closest: tuple[Peer, ...]  # the k nearest peers that answered, nearest first
    value: bytes | None  # GET_VALUE: the best valid value found
    value_holders: tuple[bytes, ...]  # peers that returned `value`
    outdated: tuple[Peer, ...]  # GET_VALUE: near peers that held a worse value or none
    providers: tuple[Peer, ...]  # GET_PROVIDERS: distinct providers found
    rounds: int
    queried: int
    failed: int
    # FIND_NODE of a peer ID: that peer with the addresses we learnt for it, if any
    # reply named it with addresses or it answered itself; None otherwise
    found: Peer | None = None


# (key, [values]) -> index of the best; raises on an invalid value.
SelectFn = Callable[[bytes, list[bytes]], int]
# (key, value) -> None, or raises: is this value acceptable?
ValidateFn = Callable[[bytes, bytes], None]


class Lookup:
    def __init__(self, kind: LookupKind, key: bytes, seeds: list[Peer], *, local_id: bytes,
                 k: int = 20, alpha: int = 3, timeout: float = 10.0, quorum: int = 3,
                 want_providers: int = 20, validate: ValidateFn | None = None,
                 select: SelectFn | None = None, local_value: bytes | None = None,
                 stop_when_found: bool = False) -> None:
        if kind is LookupKind.GET_VALUE and (validate is None or select is None):
            raise ValueError("a GET_VALUE lookup needs validate and select")
        self.kind = kind
        self.key = key
        self.target = kad_key(key)
        self.local_id = local_id
        self.k, self.alpha, self.timeout = k, alpha, timeout
        self.quorum, self.want_providers = quorum, want_providers
        self._validate, self._select = validate, select
        self._candidates: dict[bytes, Candidate] = {}
        self._order: list[tuple[int, bytes]] = []  # (distance, peer id), ascending
        self._waiting = 0
        self.rounds = 0
        self.queried = 0
        self.failed = 0
        self.done = False
        # GET_VALUE: the best value, who sent it, and who sent worse or nothing
        self._best: bytes | None = local_value
        self._best_holders: list[bytes] = []
        self._worse: dict[bytes, Peer] = {}
        self._values_seen = 1 if local_value is not None else 0
        self._no_value: dict[bytes, Peer] = {}
        self._providers: dict[bytes, Peer] = {}
        # Finding one peer ends as soon as its addresses are known: the rest of the
        # walk would only confirm what a dial will tell anyway.
        self.stop_when_found = stop_when_found
        self.found: Peer | None = None
        for peer in seeds:
            self._add_candidate(peer, hop=1)
        self._check_done()

    # -- candidates ---------------------------------------------------------------------

    def _add_candidate(self, peer: Peer, hop: int) -> None:
        if peer.id == self.local_id or peer.id in self._candidates or not is_multihash(peer.id):
            return  # ourselves, known already, or not a peer ID anyone could dial
        distance = kad_key(peer.id) ^ self.target
        self._candidates[peer.id] = Candidate(peer, distance, hop)
        bisect.insort(self._order, (distance, peer.id))

    def _nearest_live(self) -> list[Candidate]:
        """The k nearest candidates that have not failed."""
        out: list[Candidate] = []
        for _, pid in self._order:
            cand = self._candidates[pid]
            if cand.state is not State.FAILED:
                out.append(cand)
                if len(out) == self.k:
                    break
        return out

    def _check_done(self) -> None:
        if self.done:
            return
        if self.kind is LookupKind.GET_VALUE and self._values_seen >= self.quorum:
            self.done = True
        elif (self.kind is LookupKind.GET_PROVIDERS
              and len(self._providers) >= self.want_providers):
            self.done = True
        elif all(c.state is State.SUCCEEDED for c in self._nearest_live()):
            self.done = True  # also covers "no candidates left at all"
        elif self._waiting == 0 and not any(
                c.state is State.NEW for c in self._candidates.values()):
            self.done = True

    # -- driving ------------------------------------------------------------------------

    def poll(self, now: float) -> list[Peer]:
        """The peers to query now; each is marked WAITING until `now + timeout`."""
        if self.done:
            return []
        out: list[Peer] = []
        for cand in self._nearest_live():
            if self._waiting >= self.alpha:
                break
            if cand.state is State.NEW:
                cand.state, cand.deadline = State.WAITING, now + self.timeout
                self._waiting += 1
                self.queried += 1
                out.append(cand.peer)
        return out

    def waiting(self) -> list[bytes]:
        return [pid for pid, c in self._candidates.items() if c.state is State.WAITING]

    def next_deadline(self) -> float | None:
        deadlines = [c.deadline for c in self._candidates.values() if c.state is State.WAITING]
        return min(deadlines) if deadlines else None

    def _finish(self, peer_id: bytes, state: State) -> Candidate | None:
        cand = self._candidates.get(peer_id)
        if cand is None or cand.state is not State.WAITING:
            return None  # not asked, or already settled (a late or duplicate answer)
        cand.state = state
        self._waiting -= 1
        if state is State.FAILED:
            self.failed += 1
        return cand

    def on_failure(self, peer_id: bytes) -> None:
        if self._finish(peer_id, State.FAILED) is not None:
            self._check_done()

    def on_refused(self, peer_id: bytes) -> None:
        """The peer read the request and reset the stream: it is alive and serves the
        DHT but would not answer this one (py-libp2p refuses FIND_NODE for keys that are
        not peer IDs, such as record keys). It counts as an answer naming nobody, so it
        can still be among the closest peers a record is stored at."""
        if self.done:
            return
        cand = self._finish(peer_id, State.SUCCEEDED)
        if cand is not None:
            self.rounds = max(self.rounds, cand.hop)
            self._check_done()

    def expire(self, now: float) -> list[bytes]:
        """Fail every request past its deadline; returns those peers."""
        late = [pid for pid, c in self._candidates.items()
                if c.state is State.WAITING and c.deadline <= now]
        for pid in late:
            self._finish(pid, State.FAILED)
        if late:
            self._check_done()
        return late

    def on_reply(self, peer_id: bytes, reply: Message) -> None:
        """A well-formed reply of the right type from a peer we asked."""
        if self.done:
            return
        cand = self._finish(peer_id, State.SUCCEEDED)
        if cand is None:
            return
        self.rounds = max(self.rounds, cand.hop)
        if self.kind is LookupKind.FIND_NODE and cand.peer.id == self.key and cand.peer.addrs:
            self._note_found(cand.peer)
        for peer in reply.closer_peers:
            self._add_candidate(peer, cand.hop + 1)
            if self.kind is LookupKind.FIND_NODE and peer.id == self.key and peer.addrs:
                self._note_found(peer)
        if self.kind is LookupKind.GET_VALUE:
            self._take_value(cand.peer, reply)
        elif self.kind is LookupKind.GET_PROVIDERS:
            for provider in reply.provider_peers:
                if len(self._providers) < self.want_providers and is_multihash(provider.id):
                    self._providers.setdefault(provider.id, provider)
        self._check_done()

    def _note_found(self, peer: Peer) -> None:
        known = self.found.addrs if self.found is not None else ()
        addrs = known + tuple(a for a in peer.addrs if a not in known)
        self.found = Peer(peer.id, addrs[:MAX_FOUND_ADDRS])
        if self.stop_when_found:
            self.done = True

    def _take_value(self, peer: Peer, reply: Message) -> None:
        assert self._validate is not None and self._select is not None
        record = reply.record
        value = record.value if record is not None and record.key == self.key else None
        if value is not None:
            try:
                self._validate(self.key, value)
            except ValueError:
                value = None  # an invalid value counts as none at all
        if value is None:
            self._no_value[peer.id] = peer
            return
        self._values_seen += 1
        if self._best is None or value == self._best:
            self._best = value
            self._best_holders.append(peer.id)
        elif self._select(self.key, [self._best, value]) == 1:
            for pid in self._best_holders:
                self._worse[pid] = self._candidates[pid].peer
            self._best, self._best_holders = value, [peer.id]
        else:
            self._worse[peer.id] = peer

    # -- result -------------------------------------------------------------------------

    def result(self) -> LookupResult:
        closest: list[Peer] = []
        for _, pid in self._order:
            cand = self._candidates[pid]
            if cand.state is State.SUCCEEDED:
                closest.append(cand.peer)
                if len(closest) == self.k:
                    break
        outdated = dict(self._worse)
        if self._best is not None:
            near = {p.id for p in closest}
            outdated.update({pid: p for pid, p in self._no_value.items() if pid in near})
        return LookupResult(
            kind=self.kind, key=self.key, closest=tuple(closest), value=self._best,
            value_holders=tuple(self._best_holders), outdated=tuple(outdated.values()),
            providers=tuple(self._providers.values()), rounds=self.rounds,
            queried=self.queried, failed=self.failed, found=self.found)
