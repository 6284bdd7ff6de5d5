"""Partitions: three real nodes on a network of their own (one namespace each, on one
bridge); one is cut off by dropping every packet on its interface, all three keep
writing in their room, then the cut heals and both sides must converge: every message
at every member exactly once, in per-author order, every outbox entry delivered.

Dropping packets (rather than taking the link down) is the nasty kind of partition:
connections are not closed, they go silent, and whatever was in flight must still get
through, or be re-sent by sync, once the network is back.

Needs root (namespaces, iptables); namespaces are named p2pm-part-* and removed on
every exit path.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest

from tests.helpers import Node, clean_env, destroy_home, make_home, wait_for
from tests.integration.chatnet import (
    Writer, bodies, check_history, diagnose, integrity, open_room, undelivered,
    wait_connected,
)

from .lab import _kill_ns_processes, lab_missing, sh

PORT = 4001
NET = "198.18.7"
CONVERGE_S = 120.0
PARTITION_S = 20.0


class PartitionNet:
    """Namespaces p2pm-part-<tag>-{net,n0,n1,...}: a bridge and one node on each."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:5]
        self.namespaces: list[str] = []
        self.nodes: list[Node] = []
        self.homes: list[Any] = []
        self.ns_of: dict[str, str] = {}

    def ns(self, role: str) -> str:
        return f"p2pm-part-{self.tag}-{role}"

    def _add_ns(self, role: str) -> str:
        ns = self.ns(role)
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def build(self, count: int) -> "PartitionNet":
        net = self._add_ns("net")
        sh("ip", "-n", net, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", net, "link", "set", "br0", "up")
        for i in range(count):
            ns = self._add_ns(f"n{i}")
            sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name",
               f"p{i}", "netns", net)
            sh("ip", "-n", net, "link", "set", f"p{i}", "master", "br0")
            sh("ip", "-n", net, "link", "set", f"p{i}", "up")
            sh("ip", "-n", ns, "addr", "add", f"{NET}.{i + 1}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        return self

    def p2pm(self, i: int, home: Any, *args: str, timeout: float = 120.0) -> Any:
        argv = ["ip", "netns", "exec", self.ns(f"n{i}"), sys.executable, "-m",
                "p2pm.common.cli", "--home", str(home.root), *args]
        proc = subprocess.run(argv, env=clean_env(), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"p2pm {' '.join(args)} in n{i}: {proc.stderr.strip()[-1500:]}")
        return orjson.loads(proc.stdout)

    def start_nodes(self, count: int) -> list[Node]:
        def one(i: int) -> Node:
            home = make_home()
            self.homes.append(home)
            init = self.p2pm(i, home, "--json", "init", "--no-passphrase", "--listen",
                             f"/ip4/{NET}.{i + 1}/tcp/{PORT}")
            node = Node(home=home, peer_id=init["peer_id"], up_output={})
            node.up_output = self.p2pm(i, home, "--json", "up", "--timeout", "90")
            return node

        with ThreadPoolExecutor(count) as pool:
            self.nodes = list(pool.map(one, range(count)))
        return self.nodes

    def cut(self, i: int) -> None:
        ns = self.ns(f"n{i}")
        for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o")):
            sh("ip", "netns", "exec", ns, "iptables", "-w", "-A", chain, flag, "eth0",
               "-j", "DROP")

    def heal(self, i: int) -> None:
        sh("ip", "netns", "exec", self.ns(f"n{i}"), "iptables", "-w", "-F")

    def close(self) -> None:
        for home in self.homes:
            try:
                destroy_home(home)
            except Exception:
                pass
        for ns in reversed(self.namespaces):
            _kill_ns_processes(ns)
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def partition_net() -> Iterator[PartitionNet]:
    missing = lab_missing()
    if missing:
        pytest.skip(missing)
    net = PartitionNet()
    try:
        yield net.build(3)
    finally:
        net.close()


def write(writer: Writer, count: int) -> None:
    for _ in range(count):
        writer.post_one()


def test_a_cut_off_node_and_the_rest_converge_after_healing(partition_net: PartitionNet
                                                              ) -> None:
    nodes = partition_net.start_nodes(3)
    a, b, c = nodes
    room = open_room(nodes, "partition")
    wait_connected(nodes, room)
    writers = [Writer(n, [room], label) for n, label in zip(nodes, "abc")]

    partition_net.cut(2)
    cut_at = time.monotonic()
    # Long enough for the silent connections to be given up on (pings fail).
    for _ in range(5):
        for w in writers:
            write(w, 1)
        time.sleep(PARTITION_S / 5)
    # The majority side keeps talking; the cut-off node sees only its own words.
    wait_for(lambda: "b-4" in bodies(a, room) and "a-4" in bodies(b, room), 30,
             "a and b exchanging messages during the partition")
    seen_by_c = set(bodies(c, room))
    assert not {"a-4", "b-4"} & seen_by_c and "c-4" in seen_by_c
    assert not {"c-0", "c-4"} & set(bodies(a, room))
    assert all(len(w.acked[room]) == 5 for w in writers), [w.refused for w in writers]

    partition_net.heal(2)
    healed_at = time.monotonic()
    written = [t for w in writers for t in w.written(room)]
    try:
        wait_for(lambda: not any(check_history(n, room, written) for n in nodes),
                 CONVERGE_S, "both sides converging", interval=1.0)
    finally:
        names = {n.peer_id: label for n, label in zip(nodes, "abc")}
        print(f"partitioned {healed_at - cut_at:.1f}s; converged "
              f"{time.monotonic() - healed_at:.1f}s after healing; missing:",
              *diagnose({room: nodes}, {room: written}, names)[:10], sep="\n  ")
    wait_for(lambda: not any(undelivered(n, room) for n in nodes), CONVERGE_S,
             "every outbox entry completing", interval=1.0)
    for node in nodes:
        assert integrity(node) == "ok"
