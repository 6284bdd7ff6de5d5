"""Whole-node benchmark: real nodes, every actor its own process under supervisord.

    python -m tests.bench.bench_node

* DM latency p50/p99: node A posts in a direct chat, measured until node B's gateway
  publishes `gateway.message.received` for it (store, seal, sign, GossipSub over
  libp2p, open, verify, store, event), next to a libp2p ping round trip between
  the same two transports.
* Whole-node RSS: the six actors plus supervisord, next to one bare
  `python -c "import trio, zmq"` process and one py-libp2p host process.
* Idle CPU: CPU seconds of the six actors and supervisord over IDLE_S seconds in
  which nothing is asked of the node, as % of one core, next to a bare
  `python -c "import trio, zmq"` process over the same time. Printed per actor too.
* Time to healthy after `p2pm up` (as `up` reports it), next to the start of one
  py-libp2p host process until it listens.
* Recovery after `kill -9` of each actor: until supervisord has restarted it and the
  whole node answers healthy again.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

import orjson

from p2pm.common.home import ACTORS
from tests.helpers import Node, destroy_home, make_home, run_p2pm, start_node, wait_for
from tests.integration.chatnet import (
    LOOPBACK, DeliveryProbe, addrs, open_direct, percentile,
)

IDLE_S = 30.0
DM_MESSAGES = 60
DM_BUDGET_S = 60.0
WARMUP = 5

BARE = "import trio, zmq, sys; sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()"
LIBP2P_HOST = """
import sys, trio, multiaddr
from libp2p import new_host
async def main():
    host = new_host()
    async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        sys.stdout.write("ready\\n"); sys.stdout.flush()
        await trio.to_thread.run_sync(sys.stdin.read)
trio.run(main)
"""


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def node_processes(node: Node) -> dict[str, int]:
    return {**node.pids(), "supervisord": node.supervisor().pid()}


def idle_cpu(node: Node, seconds: float) -> tuple[dict[str, float], float]:
    """% of one core each process of the node used over `seconds` of idling, and
    that of a bare `import trio, zmq` process over the same seconds."""
    pids = node_processes(node)
    bare = subprocess.Popen([sys.executable, "-c", BARE], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        assert bare.stdout is not None
        bare.stdout.readline()
        before = {name: cpu_s(pid) for name, pid in pids.items()}
        bare_before = cpu_s(bare.pid)
        time.sleep(seconds)
        after = {name: cpu_s(pid) for name, pid in pids.items()}
        bare_after = cpu_s(bare.pid)
    finally:
        os.killpg(bare.pid, signal.SIGKILL)
        bare.wait(10)
    share = {name: 100 * (after[name] - before[name]) / seconds for name in pids}
    return share, 100 * (bare_after - bare_before) / seconds


def baseline_process(code: str) -> tuple[float, int]:
    """(seconds until it says ready, its RSS in KiB then)."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        elapsed = time.monotonic() - started
        if line.strip() != b"ready":
            raise RuntimeError(f"baseline process did not start: {code[:40]!r}")
        return elapsed, rss_kib(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def node_rss_kib(node: Node) -> int:
    pids = list(node.pids().values()) + [node.supervisor().pid()]
    return sum(rss_kib(p) for p in pids if p)


def up_node() -> tuple[Node, float]:
    home = make_home()
    try:
        node = start_node(home, listen=LOOPBACK, up=False)
        proc = run_p2pm(home, "--json", "up", "--timeout", "120", check=True, timeout=180)
    except BaseException:
        destroy_home(home)
        raise
    node.up_output = orjson.loads(proc.stdout)
    return node, float(node.up_output["healthy_after_s"])


def dm_latencies(a: Node, b: Node) -> tuple[list[float], int]:
    """Latencies of up to DM_MESSAGES direct messages, within DM_BUDGET_S (a loaded
    machine measures fewer rather than blowing `make bench`'s budget), and how many
    did not arrive within 30 s."""
    conv = open_direct(a, b)
    lost = 0
    with DeliveryProbe(a, b, conv) as probe:
        probe.warm_up()
        for i in range(WARMUP):
            probe.deliver(f"warm {i}")
        out: list[float] = []
        deadline = time.monotonic() + DM_BUDGET_S
        for i in range(DM_MESSAGES):
            if time.monotonic() > deadline:
                break
            try:
                out.append(probe.deliver(f"m {i}"))
            except TimeoutError:
                lost += 1
        return out, lost


def recovery_s(node: Node, actor: str) -> float:
    old = node.pids()[actor]
    started = time.monotonic()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: node.pids().get(actor) not in (0, old), 60, f"{actor} restarted")
    node.wait_healthy(60)
    return time.monotonic() - started


def run() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    bare_start, bare_rss = baseline_process(BARE)
    host_start, host_rss = baseline_process(LIBP2P_HOST)
    a = b = None
    try:
        a, up_a = up_node()
        b, up_b = up_node()
        rows.append({"name": "node: time to healthy after p2pm up", "value":
                     round(statistics.mean([up_a, up_b]), 2), "unit": "s",
                     "baseline": "one py-libp2p host process listening",
                     "baseline_value": round(host_start, 2)})
        rss = node_rss_kib(a) / 1024
        for name, pid in node_processes(a).items():
            rows.append({"name": f"node: RSS of {name} (idle)",
                         "value": round(rss_kib(pid) / 1024, 1), "unit": "MiB",
                         "baseline": "bare python -c 'import trio, zmq'",
                         "baseline_value": round(bare_rss / 1024, 1)})
        rows.append({"name": "node: RSS of 6 actors + supervisord (idle)",
                     "value": round(rss, 1), "unit": "MiB",
                     "baseline": "bare python -c 'import trio, zmq'",
                     "baseline_value": round(bare_rss / 1024, 1)})
        rows.append({"name": "node: RSS of 6 actors + supervisord (idle)",
                     "value": round(rss, 1), "unit": "MiB",
                     "baseline": "one py-libp2p host process",
                     "baseline_value": round(host_rss / 1024, 1)})

        shares, bare_cpu = idle_cpu(a, IDLE_S)
        rows.append({"name": f"node: idle CPU of 6 actors + supervisord ({IDLE_S:g} s)",
                     "value": round(sum(shares.values()), 2), "unit": "%",
                     "baseline": "bare python -c 'import trio, zmq', same time",
                     "baseline_value": round(bare_cpu, 2)})
        for name, share in shares.items():
            rows.append({"name": f"node: idle CPU of {name}", "value": round(share, 2),
                         "unit": "%", "baseline": "bare python -c 'import trio, zmq'",
                         "baseline_value": round(bare_cpu, 2)})

        b_addrs = addrs(b)
        a.call("transport", "dial", {"addr": b_addrs[0]}, timeout=30.0)
        rtts = a.call("transport", "ping", {"peer_id": b.peer_id, "count": 20},
                      timeout=30.0)["rtts_ms"]
        samples, lost = dm_latencies(a, b)
        lat = [s * 1000 for s in samples]
        if not lat:
            raise RuntimeError(f"no direct message arrived ({lost} sent)")
        ping_p50 = round(statistics.median(rtts), 2)
        rows.append({"name": f"node: DM latency p50 (post -> event on the other node, "
                             f"n={len(lat)})", "value": round(percentile(lat, 0.5), 2),
                     "unit": "ms",
                     "baseline": "libp2p ping RTT p50, same nodes",
                     "baseline_value": ping_p50})
        rows.append({"name": "node: DM latency p99", "value": round(percentile(lat, 0.99), 2),
                     "unit": "ms", "baseline": "libp2p ping RTT p99, same nodes",
                     "baseline_value": round(percentile(rtts, 0.99), 2)})
        rows.append({"name": "node: DMs not arrived within 30 s", "value": lost,
                     "unit": "msgs", "baseline": "", "baseline_value": None})
        rows.append({"name": "node: RSS after the DM run", "value":
                     round(node_rss_kib(a) / 1024, 1), "unit": "MiB",
                     "baseline": "idle, same node", "baseline_value": round(rss, 1)})

        for actor in ACTORS:
            rows.append({"name": f"node: recovery after kill -9 of {actor}",
                         "value": round(recovery_s(a, actor), 2), "unit": "s",
                         "baseline": "time to healthy after up",
                         "baseline_value": round(up_a, 2)})
    finally:
        for node in (a, b):
            if node is not None:
                node.destroy()
    return rows


def main() -> int:
    for row in run():
        print(f"{row['name']:<60} {row['value']:>9} {row['unit']:<4} "
              f"({row['baseline']}: {row['baseline_value']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
