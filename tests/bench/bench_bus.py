"""Bus benchmark: request/reply latency and event throughput for one hop between two
processes, through the actor runtime and through raw pyzmq in the same run.

    python -m tests.bench.bench_bus

The raw baseline is the floor: blocking pyzmq DEALER/ROUTER echo and PUB/SUB with no
envelope, no validation and no event loop. The gap is what the runtime costs.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import trio
import zmq

from p2pm.common.client import open_client
from p2pm.common.home import Endpoints
from p2pm.common.zmqtrio import AsyncSocket

PEER = Path(__file__).resolve().parent.parent / "integration" / "bus_peer.py"
REQUESTS = 5_000
EVENTS = 100_000

RAW_SERVER = textwrap.dedent("""
    import sys, zmq
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER); router.bind(sys.argv[1] + "/raw.rpc")
    pub = ctx.socket(zmq.PUB); pub.setsockopt(zmq.SNDHWM, 200000)
    pub.bind(sys.argv[1] + "/raw.events")
    poller = zmq.Poller(); poller.register(router, zmq.POLLIN)
    while True:
        frames = router.recv_multipart()
        if frames[-1].startswith(b"blast"):
            n = int(frames[-1].split()[1])
            router.send_multipart(frames)
            for i in range(n):
                pub.send_multipart([b"raw.blast.item", b'{"i": %d}' % i])
        else:
            router.send_multipart(frames)
""")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def raw_rpc(base: str) -> list[float]:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(base + "/raw.rpc")
    sock.send_multipart([b"", b"warm"])
    sock.recv_multipart()
    times = []
    payload = b'{"id":"0123456789abcdef","method":"echo","params":{"value":1}}'
    for _ in range(REQUESTS):
        t = time.perf_counter()
        sock.send_multipart([b"", payload])
        sock.recv_multipart()
        times.append(time.perf_counter() - t)
    sock.close(0)
    return times


def asyncio_rpc(base: str) -> list[float]:
    """The same round trip from a zmq.asyncio client: the event-loop integration pyzmq
    ships, which ours (trio over zmq.FD) should match."""
    import asyncio

    import zmq.asyncio

    async def main() -> list[float]:
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.connect(base + "/raw.rpc")
        payload = b'{"id":"0123456789abcdef","method":"echo","params":{"value":1}}'
        await sock.send_multipart([b"", b"warm"])
        await sock.recv_multipart()
        times = []
        for _ in range(REQUESTS):
            t = time.perf_counter()
            await sock.send_multipart([b"", payload])
            await sock.recv_multipart()
            times.append(time.perf_counter() - t)
        sock.close(0)
        ctx.term()
        return times

    return asyncio.run(main())


def trio_rpc(base: str) -> list[float]:
    """The same round trip from our trio AsyncSocket, without the runtime around it."""

    async def main() -> list[float]:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.connect(base + "/raw.rpc")
        asock = AsyncSocket(sock)
        payload = b'{"id":"0123456789abcdef","method":"echo","params":{"value":1}}'
        await asock.send_multipart([b"", b"warm"])
        await asock.recv_multipart()
        times = []
        for _ in range(REQUESTS):
            t = time.perf_counter()
            await asock.send_multipart([b"", payload])
            await asock.recv_multipart()
            times.append(time.perf_counter() - t)
        asock.close(0)
        return times

    return trio.run(main)


def raw_events(base: str) -> float:
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 200_000)
    sub.setsockopt(zmq.SUBSCRIBE, b"raw.blast")
    sub.connect(base + "/raw.events")
    req = ctx.socket(zmq.DEALER)
    req.connect(base + "/raw.rpc")
    # Probe until the subscription is live, then measure one burst.
    while True:
        req.send_multipart([b"", b"blast 1"])
        req.recv_multipart()
        if sub.poll(200):
            sub.recv_multipart()
            break
    req.send_multipart([b"", b"blast %d" % EVENTS])
    req.recv_multipart()
    sub.recv_multipart()
    t = time.perf_counter()
    for _ in range(EVENTS - 1):
        sub.recv_multipart()
    rate = (EVENTS - 1) / (time.perf_counter() - t)
    sub.close(0)
    req.close(0)
    return rate


async def runtime_rpc(ep: Endpoints) -> list[float]:
    async with open_client(zmq.Context.instance(), ep.rpc("buspeer"), "buspeer") as c:
        await c.call("sys.ping", timeout=0.5, retries=40)
        times = []
        for _ in range(REQUESTS):
            t = time.perf_counter()
            await c.call("echo", {"value": 1})
            times.append(time.perf_counter() - t)
        return times


async def runtime_events(ep: Endpoints) -> float:
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 200_000)
    sub.setsockopt(zmq.SUBSCRIBE, b"buspeer.")
    sub.connect(ep.events("buspeer"))
    asub = AsyncSocket(sub)
    try:
        while (await asub.recv_multipart())[0] != b"buspeer.sys.heartbeat":
            pass
        async with open_client(ctx, ep.rpc("buspeer"), "buspeer") as c:
            await c.call("blast", {"count": EVENTS})
        while (await asub.recv_multipart())[0] != b"buspeer.blast.item":
            pass
        t = time.perf_counter()
        got = 1
        while got < EVENTS:
            if (await asub.recv_multipart())[0] == b"buspeer.blast.item":
                got += 1
        return (EVENTS - 1) / (time.perf_counter() - t)
    finally:
        asub.close(0)


def run() -> list[dict[str, Any]]:
    run_dir = Path(tempfile.mkdtemp(prefix="p2pm-bench-", dir="/tmp"))
    base = f"ipc://{run_dir}"
    procs = [
        subprocess.Popen([sys.executable, "-c", RAW_SERVER, base], start_new_session=True),
        subprocess.Popen([sys.executable, str(PEER), base], start_new_session=True),
    ]
    try:
        raw_times = raw_rpc(base)
        aio_times = asyncio_rpc(base)
        trio_times = trio_rpc(base)
        raw_rate = raw_events(base)
        ep = Endpoints(base)
        rt_times = trio.run(runtime_rpc, ep)
        rt_rate = trio.run(runtime_events, ep)
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        shutil.rmtree(run_dir, ignore_errors=True)

    def us(v: float) -> float:
        return round(v * 1e6, 1)

    return [
        {"name": "bus request/reply p50 (one hop, ipc)", "value": us(statistics.median(rt_times)),
         "unit": "µs", "baseline": "raw pyzmq DEALER/ROUTER",
         "baseline_value": us(statistics.median(raw_times))},
        {"name": "bus request/reply p99 (one hop, ipc)", "value": us(percentile(rt_times, 0.99)),
         "unit": "µs", "baseline": "raw pyzmq DEALER/ROUTER",
         "baseline_value": us(percentile(raw_times, 0.99))},
        {"name": "trio AsyncSocket round trip p50 (client side only, ipc)",
         "value": us(statistics.median(trio_times)), "unit": "µs",
         "baseline": "zmq.asyncio client", "baseline_value": us(statistics.median(aio_times))},
        {"name": "bus events per second (one hop, ipc)", "value": round(rt_rate),
         "unit": "events/s", "baseline": "raw pyzmq PUB/SUB", "baseline_value": round(raw_rate)},
    ]


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']}: {row['value']} {row['unit']} "
              f"(baseline {row['baseline']}: {row['baseline_value']} {row['unit']})")
