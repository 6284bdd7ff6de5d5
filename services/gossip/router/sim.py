"""A discrete-event simulation of many `Router`s on a simulated network, for tests
and benchmarks: the router is sans-IO, so the very same core runs here with a
simulated clock instead of sockets.

Model: every directed link has a latency and a bandwidth; a frame occupies its link
for `len/bandwidth` seconds and arrives `latency` later, links deliver in order. A
node flushes its router `flush_delay` after an input (so bursts coalesce into frames,
as a real shell batching its writes would), and only to peers whose link is idle:
like the transport's credit-based flow control, a busy link leaves messages in the
router's queues, where the queue policy applies. Published messages refused with
back-pressure stay in the node's outbox and are published again after its next flush.

With `cpu_model`, a node is also busy for the real time its router took to handle
each received frame (one core per node), so input beyond what the core can process
queues up in simulated time as it would on a real machine. Without it (the default,
for deterministic tests) processing is instantaneous.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nacl.signing

from .core import Backpressure, MessageReceived, Router, Validation
from .messages import Message
from .params import PROTOCOL_V11, GossipParams, ScoreParams
from .signing import ed25519_signer, peer_id_bytes, verify_ed25519


@dataclass
class Node:
    index: int
    key: nacl.signing.SigningKey
    peer_id: bytes
    router: Router
    received: dict[bytes, float] = field(default_factory=dict)  # msg id -> sim time
    deliveries: int = 0  # MessageReceived events, duplicates included if any
    outbox: list[tuple[str, bytes]] = field(default_factory=list)
    flush_at: float | None = None
    busy_until: float = 0.0  # with the CPU model: still processing earlier input


def ring_with_chords(n: int, chords: int, rng: random.Random) -> list[tuple[int, int]]:
    """A ring (connected, not a full mesh) plus `chords` random extra links per node."""
    edges = {(i, (i + 1) % n) for i in range(n)} if n > 1 else set()
    for i in range(n):
        for _ in range(chords):
            j = rng.randrange(n)
            if j != i and (j, i) not in edges:
                edges.add((i, j))
    return sorted(edges)


class Simulation:
    def __init__(self, n: int, edges: list[tuple[int, int]], *, seed: int = 1,
                 params: GossipParams | None = None, score_params: ScoreParams | None = None,
                 latency: tuple[float, float] = (0.01, 0.05),
                 bandwidth: float = 10_000_000.0, flush_delay: float = 0.001,
                 validators: dict[int, Callable[[Message], Validation]] | None = None,
                 protocols: dict[int, str] | None = None, cpu_model: bool = False) -> None:
        self.rng = random.Random(seed)
        self.cpu_model = cpu_model
        self.params = params or GossipParams()
        self.now = 0.0
        self.bandwidth = bandwidth
        self.flush_delay = flush_delay
        self._queue: list[tuple[float, int, str, tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self.nodes: list[Node] = []
        self.protocols = protocols or {}
        self.published: dict[bytes, tuple[int, float]] = {}  # msg id -> (author, time)
        for i in range(n):
            key = nacl.signing.SigningKey(self.rng.randbytes(32))
            pid = peer_id_bytes(bytes(key.verify_key))
            router = Router(pid, verify=verify_ed25519, sign=ed25519_signer(key),
                            rng=random.Random(self.rng.random()), params=self.params,
                            score_params=score_params,
                            validate=(validators or {}).get(i))
            self.nodes.append(Node(i, key, pid, router))
        self.by_id = {node.peer_id: node for node in self.nodes}
        self.latency: dict[tuple[int, int], float] = {}
        self.link_bandwidth: dict[tuple[int, int], float] = {}  # overrides `bandwidth`
        self.busy_until: dict[tuple[int, int], float] = {}
        for a, b in edges:
            self.connect(a, b, self.rng.uniform(*latency))
        for node in self.nodes:
            self._at(self.rng.uniform(0, self.params.heartbeat_s), "heartbeat", node.index)

    # -- setup -------------------------------------------------------------------------
    def connect(self, a: int, b: int, latency: float) -> None:
        na, nb = self.nodes[a], self.nodes[b]
        self.latency[(a, b)] = self.latency[(b, a)] = latency
        self.busy_until[(a, b)] = self.busy_until[(b, a)] = self.now
        na.router.add_peer(nb.peer_id, self.protocols.get(b, PROTOCOL_V11), outbound=True,
                           now=self.now)
        nb.router.add_peer(na.peer_id, self.protocols.get(a, PROTOCOL_V11), outbound=False,
                           now=self.now)
        self._schedule_flush(na)
        self._schedule_flush(nb)

    def subscribe(self, index: int, topic: str) -> None:
        node = self.nodes[index]
        self._record(node, node.router.subscribe(topic, self.now))
        self._schedule_flush(node)

    def publish(self, index: int, topic: str, data: bytes, at: float | None = None) -> None:
        self._at(self.now if at is None else at, "publish", index, topic, data)

    # -- running -----------------------------------------------------------------------
    def run_until(self, t: float) -> None:
        while self._queue and self._queue[0][0] <= t:
            when, _, kind, args = heapq.heappop(self._queue)
            self.now = when
            getattr(self, "_on_" + kind)(*args)
        self.now = t

    def _at(self, when: float, kind: str, *args: Any) -> None:
        heapq.heappush(self._queue, (when, next(self._seq), kind, args))

    def _schedule_flush(self, node: Node, when: float | None = None) -> None:
        when = self.now + self.flush_delay if when is None else when
        if node.flush_at is None or when < node.flush_at:
            node.flush_at = when
            self._at(when, "flush", node.index, when)

    def _record(self, node: Node, events: list[Any]) -> None:
        for ev in events:
            if isinstance(ev, MessageReceived):
                node.deliveries += 1
                node.received.setdefault(ev.msg_id, self.now)

    def _on_heartbeat(self, index: int) -> None:
        node = self.nodes[index]
        self._record(node, node.router.heartbeat(self.now))
        self._schedule_flush(node)
        self._at(self.now + self.params.heartbeat_s, "heartbeat", index)

    def _on_publish(self, index: int, topic: str, data: bytes) -> None:
        node = self.nodes[index]
        node.outbox.append((topic, data))
        self._drain_outbox(node)
        self._schedule_flush(node)

    def _drain_outbox(self, node: Node) -> None:
        while node.outbox:
            topic, data = node.outbox[0]
            result = node.router.publish(topic, data, self.now)
            if isinstance(result, Backpressure):
                return
            node.outbox.pop(0)
            self.published[result.msg_id] = (node.index, self.now)

    def _on_deliver(self, dst: int, src: int, frame: bytes) -> None:
        node = self.nodes[dst]
        if node.busy_until > self.now:  # later in the heap than earlier frames: order kept
            self._at(node.busy_until, "deliver", dst, src, frame)
            return
        began = time.perf_counter()
        self._record(node, node.router.handle_rpc(self.nodes[src].peer_id, frame, self.now))
        if self.cpu_model:
            node.busy_until = self.now + time.perf_counter() - began
        self._schedule_flush(node)

    def _on_flush(self, index: int, when: float) -> None:
        node = self.nodes[index]
        if node.flush_at != when:
            return  # superseded by an earlier flush
        node.flush_at = None
        idle = [p for p in node.router.pending_peers()
                if self.busy_until[(index, self.by_id[p].index)] <= self.now]
        for send in node.router.flush(idle):
            dst = self.by_id[send.peer].index
            link = (index, dst)
            start = max(self.now, self.busy_until[link])
            bandwidth = self.link_bandwidth.get(link, self.bandwidth)
            self.busy_until[link] = start + len(send.frame) / bandwidth
            self._at(self.busy_until[link] + self.latency[link], "deliver", dst, index,
                     send.frame)
        self._drain_outbox(node)
        pending = node.router.pending_peers()
        if pending:
            nxt = min(self.busy_until[(index, self.by_id[p].index)] for p in pending)
            self._schedule_flush(node, max(nxt, self.now + self.flush_delay))

    # -- results -----------------------------------------------------------------------
    def delivery_report(self, subscribers: list[int]) -> dict[str, float]:
        """Delivery ratio, duplicates per delivered message and latency percentiles
        (simulated seconds) of every published message at every other subscriber."""
        expected = delivered = 0
        latencies: list[float] = []
        for mid, (author, sent) in self.published.items():
            for i in subscribers:
                if i == author:
                    continue
                expected += 1
                at = self.nodes[i].received.get(mid)
                if at is not None:
                    delivered += 1
                    latencies.append(at - sent)
        duplicates = sum(n.router.counters["msg_duplicate"] for n in self.nodes)
        latencies.sort()

        def pct(q: float) -> float:
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] \
                if latencies else float("nan")

        return {"expected": expected, "delivered": delivered,
                "delivery_pct": 100.0 * delivered / expected if expected else 100.0,
                "duplicates_per_msg": duplicates / max(1, len(self.published)),
                "p50_s": pct(0.50), "p99_s": pct(0.99)}
