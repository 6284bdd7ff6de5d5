"""A discrete-event simulation of many `KadCore` nodes in one process.

The nodes are the real core, unchanged; only the network is simulated: a priority
queue of deliveries with a random one-way latency each, and offline nodes that never
answer (the requester's shell reports the failure when the request's deadline passes,
as a real stream timeout would). Everything is seeded, so a run is reproducible.

Bootstrap: routing tables are filled from a global view instead of letting 10,000
nodes join one by one (which would cost ~10,000 lookups before the first
measurement): for every node and every bucket, up to k peers are drawn at random from
the peers that really fall in that bucket. That is what a long-running network's
tables converge to; joining by self-lookup is exercised separately (`join`). Churn is
applied after the fill: offline nodes stay in other tables, and lookups have to route
around them.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import random
import statistics
from collections.abc import Callable
from typing import Any

from .core import (Action, Config, KadCore, LookupDone, ProvideDone, PutDone,
                   RequestRejected, SendRequest)
from .keyspace import KEY_BITS, kad_key
from .lookup import LookupResult
from .messages import Message, Peer, encode_message
from .records import PublicKeyValidator, Validators

_ED25519_PEER_ID_PREFIX = b"\x00\x24\x08\x01\x12\x20"  # identity multihash of an Ed25519 key


def random_peer_id(rng: random.Random) -> bytes:
    return _ED25519_PEER_ID_PREFIX + rng.randbytes(32)


@dataclasses.dataclass(slots=True)
class SimNode:
    core: KadCore
    point: int
    online: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class LookupStats:
    found: bool  # FIND_NODE of an online node: it is among the results
    recall: float  # share of the true k closest online nodes in the result
    rounds: int
    queried: int
    failed: int
    latency: float  # simulated seconds from start to LookupDone


class Network:
    def __init__(self, size: int, seed: int = 1, k: int = 20, alpha: int = 3,
                 latency: tuple[float, float] = (0.01, 0.1), request_timeout: float = 5.0,
                 validators: Validators | None = None, wire: bool = False) -> None:
        self.rng = random.Random(seed)
        self.config = Config(k=k, alpha=alpha, request_timeout=request_timeout,
                             refresh_interval=1e12, rate=1e9, burst=1e9)
        self.latency = latency
        self.wire = wire  # encode and decode every message, as the shell would
        self.validators = validators or Validators()
        self.now = 0.0
        self.nodes: dict[bytes, SimNode] = {}
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.done: dict[tuple[bytes, int], Any] = {}  # (node id, op id) -> result action
        self.messages = 0
        self._unfilled: set[bytes] = set()
        self._online_points: list[tuple[int, bytes]] | None = None  # for true_closest
        for _ in range(size):
            self._new_node()

    # -- population ---------------------------------------------------------------------

    def _new_node(self) -> SimNode:
        pid = random_peer_id(self.rng)
        peer = Peer(id=pid, addrs=(b"/sim/" + pid[-8:],))
        node = SimNode(KadCore(peer, self.validators, self.config), kad_key(pid))
        self.nodes[pid] = node
        self._online_points = None
        return node

    def fill_tables(self) -> None:
        """Fill every routing table from the global view (see the module docstring).

        A table is built when its node is first involved in a message, from a random
        generator of its own, so the result does not depend on that order and nodes
        no lookup reaches cost no memory.
        """
        self._ordered = sorted(self.nodes.values(), key=lambda n: n.point)
        self._points = [n.point for n in self._ordered]
        self._unfilled = set(self.nodes)

    def _materialize(self, node: SimNode) -> None:
        pid = node.core.local.id
        if pid not in self._unfilled:
            return
        self._unfilled.discard(pid)
        points, ordered, k = self._points, self._ordered, self.config.k
        rng = random.Random(pid)
        table = node.core.routing
        for cpl in range(KEY_BITS):
            shift = KEY_BITS - cpl
            same_lo, same_hi = _prefix_range(points, node.point >> shift, shift)
            if same_hi - same_lo <= 1:
                break  # nobody else shares our first `cpl` bits: deeper buckets are empty
            # Bucket `cpl`: our first cpl bits, then the opposite of our next bit.
            lo, hi = _prefix_range(points, (node.point >> (shift - 1)) ^ 1, shift - 1)
            picks = range(lo, hi) if hi - lo <= k else rng.sample(range(lo, hi), k)
            for i in picks:
                table.add(ordered[i].core.local, self.now, point=points[i])

    def set_churn(self, fraction: float) -> None:
        """Take `fraction` of the nodes offline (they stay in others' tables)."""
        self._online_points = None
        for node in self.nodes.values():
            node.online = True
        for pid in self.rng.sample(sorted(self.nodes), int(len(self.nodes) * fraction)):
            self.nodes[pid].online = False

    def online_ids(self) -> list[bytes]:
        return sorted(pid for pid, n in self.nodes.items() if n.online)

    def true_closest(self, key: bytes, count: int, exclude: bytes = b"") -> list[bytes]:
        """The `count` online nodes nearest to `key` (a lookup never returns its origin)."""
        target = kad_key(key)
        if self._online_points is None:
            self._online_points = [(n.point, pid) for pid, n in self.nodes.items() if n.online]
        best = heapq.nsmallest(count + 1, self._online_points, key=lambda e: e[0] ^ target)
        return [pid for _, pid in best if pid != exclude][:count]

    # -- event loop ---------------------------------------------------------------------

    def _at(self, when: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, fn))

    def _delay(self) -> float:
        return self.rng.uniform(*self.latency)

    def perform(self, node: SimNode, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendRequest):
                self._deliver(node, action)
            elif isinstance(action, (LookupDone, PutDone, ProvideDone)):
                self.done[(node.core.local.id, action.op_id)] = (action, self.now)

    def _deliver(self, node: SimNode, req: SendRequest) -> None:
        self.messages += 1
        target = self.nodes.get(req.peer.id)
        me = node.core.local
        if target is None or not target.online:
            if req.expects_reply:
                self._at(req.deadline, lambda: self.perform(
                    node, node.core.handle_failure(req.request_id, self.now)))
            return

        def arrive() -> None:
            self._materialize(target)
            try:
                if self.wire:
                    reply = target.core.handle_request_bytes(
                        encode_message(req.message), me, self.now, sender_is_server=True)
                else:
                    reply = target.core.handle_request(req.message, me, self.now,
                                                       sender_is_server=True)
            except RequestRejected:
                reply = None
            if not req.expects_reply:
                return
            answer: Message | bytes | None = reply
            if self.wire and reply is not None:
                answer = encode_message(reply)

            def back() -> None:
                if answer is None:
                    self.perform(node, node.core.handle_failure(req.request_id, self.now,
                                                                refused=True))
                else:
                    self.perform(node, node.core.handle_reply(req.request_id, answer, self.now))
            self._at(self.now + self._delay(), back)

        self._at(self.now + self._delay(), arrive)

    def run(self, until: float | None = None) -> None:
        while self._queue:
            when, _, fn = self._queue[0]
            if until is not None and when > until:
                break
            heapq.heappop(self._queue)
            self.now = max(self.now, when)
            fn()

    # -- operations ---------------------------------------------------------------------

    def start(self, pid: bytes, op: Callable[[KadCore], tuple[int, list[Action]]]) -> int:
        node = self.nodes[pid]
        self._materialize(node)
        op_id, actions = op(node.core)
        self.perform(node, actions)
        return op_id

    def result(self, pid: bytes, op_id: int) -> Any:
        return self.done.get((pid, op_id), (None, None))[0]

    def join(self, bootstrap: bytes) -> bytes:
        """Add a node that knows only `bootstrap` and let it look itself up."""
        node = self._new_node()
        node.core.add_peer(self.nodes[bootstrap].core.local, self.now)
        pid = node.core.local.id
        self.start(pid, lambda c: c.find_node(pid, self.now))
        self.run()
        return pid

    def lookup(self, source: bytes, key: bytes) -> tuple[LookupResult, float]:
        started = self.now
        op_id = self.start(source, lambda c: c.find_node(key, self.now))
        self.run()
        done = self.result(source, op_id)
        assert isinstance(done, LookupDone)
        return done.result, self.now - started


def _prefix_range(points: list[int], prefix: int, shift: int) -> tuple[int, int]:
    """The index range of the sorted `points` whose top bits are `prefix`."""
    return (bisect.bisect_left(points, prefix << shift),
            bisect.bisect_left(points, (prefix + 1) << shift))


def measure(size: int, lookups: int, churn: float, seed: int = 1,
            wire: bool = False) -> dict[str, Any]:
    """Build a network, apply churn, and run `lookups` FIND_NODE lookups of random online
    nodes from random online nodes; returns success, recall and round statistics."""
    net = Network(size, seed=seed, wire=wire)
    net.fill_tables()
    net.set_churn(churn)
    online = net.online_ids()
    rng = random.Random(seed + 1)
    stats: list[LookupStats] = []
    k = net.config.k
    for _ in range(lookups):
        source, target = rng.sample(online, 2)
        started = net.now
        op_id = net.start(source, lambda c, t=target: c.find_node(t, net.now))
        net.run()
        done = net.result(source, op_id)
        result: LookupResult = done.result
        got = {p.id for p in result.closest}
        truth = net.true_closest(target, k, exclude=source)
        stats.append(LookupStats(
            found=target in got, recall=len(got & set(truth)) / len(truth),
            rounds=result.rounds, queried=result.queried, failed=result.failed,
            latency=net.now - started))
    rounds = sorted(s.rounds for s in stats)
    return {
        "nodes": size, "lookups": lookups, "churn": churn,
        "success": sum(s.found for s in stats) / len(stats),
        "recall": statistics.fmean(s.recall for s in stats),
        "rounds_median": statistics.median(rounds),
        "rounds_p90": rounds[int(0.9 * (len(rounds) - 1))],
        "rounds_max": rounds[-1],
        "queried_mean": statistics.fmean(s.queried for s in stats),
        "latency_median": statistics.median(s.latency for s in stats),
        "messages": net.messages,
    }


def measure_records(size: int, records: int, churn: float, seed: int = 1,
                    wire: bool = False) -> dict[str, Any]:
    """Publish `records` /pk/ records from random nodes, take `churn` of the nodes
    offline, then read each record back from another random online node."""
    net = Network(size, seed=seed, wire=wire, validators=Validators(PublicKeyValidator()))
    net.fill_tables()
    rng = random.Random(seed + 2)
    publishers = rng.sample(sorted(net.nodes), records)
    stored: list[int] = []
    for pid in publishers:
        key, value = b"/pk/" + pid, pid[2:]  # an identity peer ID inlines its public key
        op_id = net.start(pid, lambda c, k=key, v=value: c.put_value(k, v, net.now))
        net.run()
        stored.append(len(net.result(pid, op_id).stored_at))
    net.set_churn(churn)
    online = net.online_ids()
    found = 0
    rounds: list[int] = []
    for pid in publishers:
        reader = pid
        while reader == pid:
            reader = rng.choice(online)
        op_id = net.start(reader, lambda c, k=b"/pk/" + pid: c.get_value(k, net.now))
        net.run()
        result: LookupResult = net.result(reader, op_id).result
        found += result.value == pid[2:]
        rounds.append(result.rounds)
    return {"nodes": size, "records": records, "churn": churn,
            "stored_at_mean": statistics.fmean(stored), "found": found / records,
            "rounds_median": statistics.median(rounds), "rounds_max": max(rounds)}
