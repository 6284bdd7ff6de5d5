"""DHT benchmark: find-peer latency over 10 real p2pm nodes on loopback, next to
py-libp2p's KadDHT on the same topology in the same run.

    python -m tests.bench.bench_dht

Topology: a chain of bootstrap links (node i knows only node i-1 at start). p2pm: each
node is its keystore, storage, transport and dht actors as separate processes over ipc
(what supervisord runs, without gossip and gateway, which find-peer does not touch); the
figure is the `find_peer` RPC as a local client sees it, bus round trip included, once
every table has converged. p2pm's find_peer always asks the network (the lookup stops
once a reply carries the target's addresses). py-libp2p: 10 `new_host()` hosts with
`KadDHT` servers in one trio loop, chained with `connect` + `add_peer` both ways; its
`find_peer` answers from the routing table or peerstore when it can, so the baseline
times the network path it takes otherwise (`find_closest_peers_network`, then the
peerstore), on the same ordered pairs, for as long as `PY_BUDGET_S` allows.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import multiaddr
import trio
import zmq

from p2pm.common import config as configmod
from p2pm.common import errors
from p2pm.common.client import Client, open_client
from p2pm.common.home import Home
from p2pm.common.identity import create_identity, read_peer_id
from p2pm.common.log import setup_logging
from tests.helpers.dht_node import free_ports

NODES = 10
ACTORS = ("keystore", "storage", "transport", "dht")
READY_TIMEOUT_S = 120.0
PY_BUDGET_S = 60.0
SEED = 7


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def pairs(count: int) -> list[tuple[int, int]]:
    out = [(a, b) for a in range(count) for b in range(count) if a != b]
    random.Random(SEED).shuffle(out)
    return out


# -- p2pm: real processes ------------------------------------------------------------------

@contextmanager
def p2pm_chain(count: int) -> Iterator[list[tuple[Home, str]]]:
    """`count` nodes as processes, each bootstrapping from the previous one."""
    homes: list[Home] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = free_ports(count)
        ids: list[str] = []
        for i in range(count):
            home = Home(Path(tempfile.mkdtemp(prefix="p2pm-", dir="/tmp"))).ensure()
            homes.append(home)
            create_identity(home.identity_file, None)
            ids.append(read_peer_id(home.identity_file))
            boot = [f"/ip4/127.0.0.1/tcp/{ports[i - 1]}/p2p/{ids[i - 1]}"] if i else []
            home.config_file.write_text(configmod.dump({
                "node": {"log_level": "WARNING"},
                "transport": {"listen": [f"/ip4/127.0.0.1/tcp/{ports[i]}"], "bootstrap": boot},
                "storage": {"synchronous": "NORMAL"}}))
        env = {k: v for k, v in os.environ.items()
               if k not in ("P2PM_HOME", "P2PM_KEYSTORE_KEY", "P2PM_PASSPHRASE")}
        for home in homes:
            for actor in ACTORS:
                with open(home.logs / f"{actor}.log", "ab") as log:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "p2pm.common.service", actor,
                         "--home", str(home.root)],
                        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        yield list(zip(homes, ids))
    finally:
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in procs:
            proc.wait(10)
        for home in homes:
            shutil.rmtree(home.root, ignore_errors=True)


@asynccontextmanager
async def dht_clients(homes: list[Home]) -> AsyncIterator[list[Client]]:
    ctx = zmq.Context.instance()
    clients: list[Client] = []
    async with trio.open_nursery() as nursery:
        async def keep(home: Home, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            async with open_client(ctx, home.endpoints().rpc("dht"), "dht") as client:
                task_status.started(client)
                await trio.sleep_forever()

        for home in homes:
            clients.append(await nursery.start(keep, home))
        yield clients
        nursery.cancel_scope.cancel()


async def wait_converged(clients: list[Client], want: int) -> float:
    started = time.perf_counter()
    with trio.fail_after(READY_TIMEOUT_S):
        while True:
            sizes = []
            for c in clients:
                try:
                    sizes.append((await c.call("routing_table", timeout=2.0, retries=0))["size"])
                except errors.BusError:
                    sizes.append(-1)
            if min(sizes) >= want:
                return time.perf_counter() - started
            await trio.sleep(0.5)


async def measure_p2pm() -> dict[str, Any]:
    with p2pm_chain(NODES) as nodes:
        async with dht_clients([h for h, _ in nodes]) as clients:
            converge = await wait_converged(clients, NODES - 1)
            ids = [pid for _, pid in nodes]
            samples, queried = [], []
            for a, b in pairs(NODES):
                t0 = time.perf_counter()
                found = await clients[a].call("find_peer", {"peer_id": ids[b]}, timeout=30.0,
                                              retries=0)
                samples.append((time.perf_counter() - t0) * 1000)
                assert found["addrs"], found
                queried.append(found["queried"])
    return {"samples": samples, "converge_s": converge, "queried": statistics.mean(queried)}


# -- py-libp2p: the reference KadDHT on the same topology ----------------------------------

async def measure_py() -> dict[str, Any]:
    from libp2p import new_host
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.tools.anyio_service import background_trio_service

    loopback = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    samples: list[float] = []
    found = 0
    async with trio.open_nursery() as nursery:
        hosts, dhts = [], []
        ready = trio.Event()
        stop = trio.Event()

        async def run_host(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            host = new_host()
            async with host.run(listen_addrs=loopback):
                dht = KadDHT(host, DHTMode.SERVER)
                async with background_trio_service(dht):
                    task_status.started((host, dht))
                    await stop.wait()

        for _ in range(NODES):
            host, dht = await nursery.start(run_host)
            hosts.append(host)
            dhts.append(dht)
        for i in range(1, NODES):
            await hosts[i].connect(info_from_p2p_addr(hosts[i - 1].get_addrs()[0]))
            await dhts[i].add_peer(hosts[i - 1].get_id())
            await dhts[i - 1].add_peer(hosts[i].get_id())
        ready.set()
        deadline = time.perf_counter() + PY_BUDGET_S
        for a, b in pairs(NODES):
            if time.perf_counter() > deadline:
                break
            target = hosts[b].get_id()
            t0 = time.perf_counter()
            await dhts[a].peer_routing.find_closest_peers_network(target.to_bytes())
            try:
                ok = bool(hosts[a].get_peerstore().addrs(target))
            except Exception:
                ok = False
            samples.append((time.perf_counter() - t0) * 1000)
            found += ok
        stop.set()
    return {"samples": samples, "found": found}


async def measure() -> list[dict[str, Any]]:
    p2pm = await measure_p2pm()
    py = await measure_py()
    mine, theirs = p2pm["samples"], py["samples"]
    base = f"py-libp2p KadDHT, {len(theirs)} network lookups"
    return [
        {"name": f"find_peer p50, {NODES}-node chain ({len(mine)} lookups, real processes)",
         "value": round(quantile(mine, 0.5), 2), "unit": "ms", "baseline": base,
         "baseline_value": round(quantile(theirs, 0.5), 2)},
        {"name": f"find_peer p99, {NODES}-node chain ({len(mine)} lookups, real processes)",
         "value": round(quantile(mine, 0.99), 2), "unit": "ms", "baseline": base,
         "baseline_value": round(quantile(theirs, 0.99), 2)},
        {"name": "find_peer peers asked per lookup (mean)", "value": round(p2pm["queried"], 2),
         "unit": "peers", "baseline": "", "baseline_value": None},
        {"name": f"routing tables converged after start ({NODES} nodes)",
         "value": round(p2pm["converge_s"], 1), "unit": "s", "baseline": "",
         "baseline_value": None},
        {"name": "py-libp2p lookups that found the target", "value": py["found"],
         "unit": f"of {len(theirs)}", "baseline": "", "baseline_value": None},
    ]


def run() -> list[dict[str, Any]]:
    return trio.run(measure)


def main() -> int:
    setup_logging("ERROR")
    for row in run():
        base = f"  (baseline {row['baseline']}: {row['baseline_value']})" \
            if row["baseline"] else ""
        print(f"{row['name']:<62} {row['value']:>9} {row['unit']}{base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
