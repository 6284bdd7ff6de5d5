"""A network of real p2pm nodes under supervisord, joined by a chain of bootstrap links
(each node knows only the previous one): find-peer of a node the asker was never
connected to, through the CLI; a dht restarted by kill -9 answers from its stored
routing table; a restarted transport leaves the table in place.

The chain serves the whole module: starting six nodes costs more than the assertions."""

from __future__ import annotations

import base64
import os
import signal
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from p2pm.common import config as configmod
from p2pm.common import errors
from tests.helpers.dht_node import free_ports
from tests.helpers import Node, destroy_home, make_home, start_node, wait_for

pytestmark = pytest.mark.slow

CHAIN = 6
UP_TIMEOUT = 90


def configure(node: Node, section: str, **values: object) -> None:
    cfg = tomllib.loads(node.home.config_file.read_text())
    cfg.setdefault(section, {}).update(values)
    node.home.config_file.write_text(configmod.dump(cfg))


def up(node: Node) -> None:
    node.p2pm("--json", "up", "--timeout", str(UP_TIMEOUT), check=True, timeout=UP_TIMEOUT + 30)


def addr(node: Node, port: int) -> str:
    return f"/ip4/127.0.0.1/tcp/{port}/p2p/{node.peer_id}"


def table_ids(node: Node) -> set[str]:
    table = node.call("dht", "routing_table")
    return {p["peer_id"] for b in table["buckets"] for p in b["peers"]}


@pytest.fixture(scope="module")
def chain() -> Iterator[tuple[list[Node], list[int]]]:
    homes = [make_home() for _ in range(CHAIN)]
    nodes: list[Node] = []
    try:
        ports = free_ports(CHAIN)
        with ThreadPoolExecutor(CHAIN) as pool:
            nodes = list(pool.map(
                lambda hp: start_node(hp[0], listen=[f"/ip4/127.0.0.1/tcp/{hp[1]}"], up=False),
                zip(homes, ports)))
            for i in range(1, CHAIN):
                configure(nodes[i], "transport", bootstrap=[addr(nodes[i - 1], ports[i - 1])])
            list(pool.map(up, nodes))
        # Each node learns the network by its bootstrap self-lookup through the chain.
        wait_for(lambda: all(len(table_ids(n)) >= 2 for n in nodes), 60,
                 "every routing table to hold peers beyond its bootstrap link")
        yield nodes, ports
    finally:
        with ThreadPoolExecutor(CHAIN) as pool:
            list(pool.map(lambda n: n.destroy(), nodes))
            list(pool.map(destroy_home, [h for h in homes if h.root.exists()]))


def test_find_peer_of_a_node_the_asker_never_connected_to(
        chain: tuple[list[Node], list[int]]) -> None:
    nodes, ports = chain
    first, last = nodes[0], nodes[-1]
    # A node whose dht never serves (client mode) and is stopped (so it never looks
    # anything up), connected only to the last node of the chain: only that node can
    # name it.
    home = make_home()
    hidden: Node | None = None
    try:
        port = free_ports(1)[0]
        hidden = start_node(home, listen=[f"/ip4/127.0.0.1/tcp/{port}"], up=False)
        configure(hidden, "dht", mode="client")
        up(hidden)
        hidden.supervisor().stop_process("dht")
        hidden.call("transport", "dial", {"addr": addr(last, ports[-1])}, timeout=15)
        wait_for(lambda: any(p["peer_id"] == hidden.peer_id  # type: ignore[union-attr]
                             for p in last.call("transport", "peers")), 20,
                 "the last node to see the hidden one")
        with pytest.raises(errors.BusError) as unknown:
            first.call("transport", "peer_info", {"peer_id": hidden.peer_id})
        assert unknown.value.code == errors.NOT_FOUND

        found = first.p2pm("--json", "find", hidden.peer_id, check=True)
        assert orjson.loads(found.stdout) == {
            "peer_id": hidden.peer_id, "addrs": [addr(hidden, port)]}
        # The asker's transport was told the address: a ping by peer ID now dials it.
        pong = first.p2pm("--json", "ping", hidden.peer_id, check=True)
        assert orjson.loads(pong.stdout)["rtt_ms"] > 0
    finally:
        if hidden is not None:
            hidden.destroy()
        else:
            destroy_home(home)

    # Nodes of the chain find each other end to end; an unknown peer is a clear failure.
    far = first.call("dht", "find_peer", {"peer_id": last.peer_id}, timeout=30)
    assert addr(last, ports[-1]) in far["addrs"]
    nobody = "12D3KooWGmmDR9cEAfVfRmqQbNexo6oBmCSZVzkL5gLhzxMZwXvh"
    missing = first.p2pm("find", nobody)
    assert missing.returncode == 1
    assert missing.stderr.startswith(f"p2pm: peer {nobody} not found")


def test_restarts_keep_the_routing_table(chain: tuple[list[Node], list[int]]) -> None:
    nodes, _ = chain
    node = nodes[2]

    def stored() -> set[str]:
        try:
            got = node.call("storage", "kv_get", {"key": "dht.routing_table"})
        except errors.BusError:
            return set()
        doc = orjson.loads(base64.b64decode(got["value"]))
        return {p["peer_id"] for p in doc["peers"]}

    known = wait_for(lambda: (table := table_ids(node)) == stored() and table, 20,
                     "the routing table snapshot in storage")

    # kill -9 of the dht: the replacement loads the snapshot before it serves.
    old = node.pids()["dht"]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: node.pids().get("dht") not in (0, old), 20, "supervisord to restart dht")
    wait_for(lambda: node.healthy(("dht",)), 20, "the new dht to be healthy")
    status = node.call("dht", "sys.status")
    assert status["remembered"] == len(known)
    assert table_ids(node) & known

    # kill -9 of the transport: the dht keeps its table and works again once the
    # transport is back (the stream library registers by itself).
    dht_pid = node.pids()["dht"]
    before = table_ids(node)
    os.kill(node.pids()["transport"], signal.SIGKILL)
    assert table_ids(node) == before
    wait_for(lambda: node.healthy(("transport",)), 30, "the new transport to be healthy")
    target = nodes[0]

    def finds() -> bool:
        try:
            return bool(node.call("dht", "find_peer", {"peer_id": target.peer_id},
                                  timeout=15, retries=0)["addrs"])
        except errors.BusError:
            return False

    wait_for(finds, 30, "find_peer through the restarted transport", interval=0.5)
    assert node.pids()["dht"] == dht_pid

    table = node.p2pm("dht", "table", check=True)
    assert f"{node.peer_id} (auto mode): " in table.stdout
