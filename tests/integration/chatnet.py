"""Conversations between real nodes, for the reliability tests (chaos, faults,
partitions) and the whole-node benchmarks: set up rooms and direct chats over the
gossip actor's RPCs, write with an honest record of what was acknowledged, and check
what every member ends up with.

A write whose reply is lost (the gossip actor was killed mid-call) may or may not have
been stored: `Writer` records it as uncertain, and `written()` counts it once the
author's own history shows it, so the checks hold the node to exactly what it did.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import orjson
import zmq

from p2pm.common import errors
from p2pm.common.home import Home
from tests.helpers import Node, wait_for

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def addrs(node: Node) -> list[str]:
    return list(node.call("transport", "addrs", timeout=5.0)["addrs"])


def call_patiently(node: Node, actor: str, method: str, params: dict[str, Any],
                   deadline_s: float = 60.0) -> Any:
    """Call through an actor's restart: retry timeouts and `unavailable` until the
    deadline (for setup and checks, never for writes: a retried write may be a
    second write)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return node.call(actor, method, params, timeout=5.0, retries=1)
        except errors.BusError as exc:
            if exc.code not in (errors.TIMEOUT, errors.UNAVAILABLE) \
                    or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def open_room(nodes: Sequence[Node], name: str = "room") -> str:
    """The first node creates a room, the others join with its invite."""
    made = call_patiently(nodes[0], "gossip", "room_create", {"name": name})
    for other in nodes[1:]:
        call_patiently(other, "gossip", "room_join", {"invite": made["invite"]})
    return str(made["id"])


def open_direct(a: Node, b: Node) -> str:
    got_a = call_patiently(a, "gossip", "direct_open", {"peer_id": b.peer_id,
                                                        "addrs": addrs(b)})
    got_b = call_patiently(b, "gossip", "direct_open", {"peer_id": a.peer_id,
                                                        "addrs": addrs(a)})
    assert got_a["id"] == got_b["id"]
    return str(got_a["id"])


def history(node: Node, conversation: str) -> list[dict[str, Any]]:
    return list(call_patiently(node, "gossip", "history",
                               {"conversation": conversation, "limit": 1000}))


def bodies(node: Node, conversation: str) -> list[str]:
    return [m["body"] for m in history(node, conversation)]


def wait_connected(nodes: Sequence[Node], conversation: str, timeout: float = 60.0) -> None:
    """Until a message from each member reaches every other member."""
    for i, node in enumerate(nodes):
        text = f"hello from {i} {time.monotonic_ns()}"
        call_patiently(node, "gossip", "post", {"conversation": conversation, "text": text})
        for other in nodes:
            wait_for(lambda other=other, text=text: text in bodies(other, conversation),
                     timeout, f"{text!r} reaching {other.peer_id[-6:]}", interval=0.2)


@dataclass
class Writer:
    """Posts numbered messages from one node; records acknowledged and uncertain
    writes, per conversation."""

    node: Node
    conversations: list[str]
    label: str
    acked: dict[str, list[str]] = field(default_factory=dict)
    uncertain: dict[str, list[str]] = field(default_factory=dict)
    refused: list[tuple[str, str]] = field(default_factory=list)
    count: int = 0

    def post_one(self) -> None:
        conv = self.conversations[self.count % len(self.conversations)]
        text = f"{self.label}-{self.count}"
        self.count += 1
        try:
            self.node.call("gossip", "post", {"conversation": conv, "text": text},
                           timeout=8.0, retries=0)
        except errors.BusError as exc:
            if exc.code == errors.TIMEOUT:
                self.uncertain.setdefault(conv, []).append(text)
            else:
                # A clear refusal (gossip or storage restarting): not written.
                self.refused.append((text, exc.code))
            return
        self.acked.setdefault(conv, []).append(text)

    def written(self, conversation: str) -> list[str]:
        """Acknowledged writes plus uncertain ones the author's history shows."""
        if conversation not in self.conversations:
            return []
        own = set(bodies(self.node, conversation))
        maybe = [t for t in self.uncertain.get(conversation, []) if t in own]
        return self.acked.get(conversation, []) + maybe


class Background:
    """Threads running `targets` from entering the block until `stop()` or its end;
    the targets watch `self._stop`."""

    join_s = 5.0

    def __init__(self, *targets: Callable[[], None]) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=t, daemon=True) for t in targets]

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.join_s)

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class Traffic(Background):
    """Steady writes from several nodes in background threads, `interval_s` apart."""

    join_s = 30.0

    def __init__(self, writers: Iterable[Writer], interval_s: float = 0.25) -> None:
        self.writers = list(writers)
        self.interval_s = interval_s
        super().__init__(*(functools.partial(self._run, w) for w in self.writers))

    def _run(self, writer: Writer) -> None:
        while not self._stop.is_set():
            writer.post_one()
            self._stop.wait(self.interval_s)


class EventLog(Background):
    """Every `gateway.message.received` a node's user was shown, from a SUB socket in a
    thread (ipc reconnects by itself after the gateway restarts)."""

    def __init__(self, home: Home) -> None:
        self.endpoint = home.endpoints().events("gateway")
        self.ids: Counter[str] = Counter()
        super().__init__(self._run)

    def _run(self) -> None:
        sock = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"gateway.message.received")
        sock.connect(self.endpoint)
        try:
            while not self._stop.is_set():
                if sock.poll(100):
                    _, payload = sock.recv_multipart()
                    data = orjson.loads(payload).get("data") or {}
                    if isinstance(data, dict) and isinstance(data.get("id"), str):
                        self.ids[data["id"]] += 1
        finally:
            sock.close()

    def shown_twice(self) -> list[str]:
        return [mid for mid, n in self.ids.items() if n > 1]


def check_history(node: Node, conversation: str, expected: Iterable[str]) -> list[str]:
    """What is wrong with `node`'s history against the written texts (empty: nothing):
    each exactly once, and each author's messages in their order, without holes."""
    problems = []
    msgs = history(node, conversation)
    counts = Counter(m["body"] for m in msgs)
    for text in expected:
        if counts[text] != 1:
            problems.append(f"{text!r} held {counts[text]} times")
    by_author: dict[str, list[int]] = {}
    for m in msgs:
        by_author.setdefault(m["author"], []).append(int(m["seq"]))
    for author, seqs in by_author.items():
        if seqs != sorted(seqs) or len(set(seqs)) != len(seqs):
            problems.append(f"author {author[-6:]} out of order: {seqs}")
        if seqs and seqs != list(range(1, len(seqs) + 1)):
            problems.append(f"author {author[-6:]} has holes: {seqs}")
    return problems


def integrity(node: Node) -> str:
    """SQLite's own verdict on the node's database (read-only, beside the running
    storage actor: WAL lets a reader in)."""
    db = node.home.data / "node.db"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def undelivered(node: Node, conversation: str) -> list[str]:
    """The node's own messages still owed: never sent, or with an outbox entry (a
    recipient known when it was written) not acknowledged yet."""
    out = []
    for m in history(node, conversation):
        if m["author"] != node.peer_id:
            continue
        state = call_patiently(node, "gossip", "message_state", {"id": m["id"]})
        if state["state"] == "pending" or any(
                s != "delivered" for s in state["members"].values()):
            out.append(f"{m['body']}: {state['state']} {state['members']}")
    return out


def diagnose(members: dict[str, Sequence[Node]], written: dict[str, list[str]],
             names: dict[str, str]) -> list[str]:
    """For a failure message: each missing text, who holds it, and its author's view."""
    held = {(conv, n.peer_id): {m["body"]: m for m in history(n, conv)}
            for conv, ns in members.items() for n in ns}
    out = []
    for conv, ns in members.items():
        for text in written[conv]:
            having = [names[n.peer_id] for n in ns if text in held[(conv, n.peer_id)]]
            if len(having) == len(ns):
                continue
            own = next((held[(conv, n.peer_id)][text] for n in ns
                        if text in held[(conv, n.peer_id)]
                        and held[(conv, n.peer_id)][text]["author"] == n.peer_id), None)
            view = f"seq {own['seq']} state {own['state']}" if own else "not at its author"
            out.append(f"{conv[:6]} {text!r} held by {having}; {view}")
    return out


class DeliveryProbe:
    """Latency of a message as a user sees it: posted on `sender`, until `receiver`'s
    gateway publishes it as received (a SUB socket on the receiver's events)."""

    def __init__(self, sender: Node, receiver: Node, conversation: str) -> None:
        self.sender, self.conversation = sender, conversation
        self.sub = zmq.Context.instance().socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"gateway.message.received")
        self.sub.connect(receiver.home.endpoints().events("gateway"))

    def deliver(self, text: str, timeout: float = 30.0) -> float:
        """Seconds from post to the receiver's event; TimeoutError if it never came."""
        started = time.perf_counter()
        self.sender.call("gossip", "post", {"conversation": self.conversation, "text": text},
                         timeout=10.0)
        deadline = started + timeout
        while (left := deadline - time.perf_counter()) > 0:
            if not self.sub.poll(int(left * 1000) + 1):
                break
            data = orjson.loads(self.sub.recv_multipart()[-1]).get("data") or {}
            if data.get("body") == text:
                return time.perf_counter() - started
        raise TimeoutError(f"{text!r} did not reach the other node")

    def warm_up(self, timeout: float = 90.0) -> None:
        """Until a first message gets through (the subscription and the mesh form)."""
        def once() -> bool:
            try:
                self.deliver(f"warm-up {time.monotonic_ns()}", 5.0)
                return True
            except TimeoutError:
                return False
        wait_for(once, timeout, "a first message through")

    def close(self) -> None:
        self.sub.close()

    def __enter__(self) -> "DeliveryProbe":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
