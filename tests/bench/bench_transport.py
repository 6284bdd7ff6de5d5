"""Transport benchmark: connect time, stream round trip and throughput through the
stream API, each next to raw py-libp2p measured in the same run.

    python -m tests.bench.bench_transport

Everything runs in one trio loop on loopback (two p2pm transports with their keystores
over inproc endpoints; two `new_host()` hosts for the baselines), so both sides of every
figure share the same CPU. The API figures include the owner library, the stream
socket and the transport's pump; the raw ones are a py-libp2p stream used directly.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.io.utils import read_exactly
from libp2p.peer.peerinfo import info_from_p2p_addr

from p2pm.common.log import setup_logging
from p2pm.common.streams import ProtocolSpec, open_streams
from tests.helpers.transport_node import open_test_node

ECHO = "/p2pm-bench/echo/1.0.0"
SINK = "/p2pm-bench/sink/1.0.0"
CONNECTS = 10
ROUND_TRIPS = 500
NEW_STREAMS = 200
MESSAGE = b"x" * 64
BULK = 32 * 1024 * 1024
WRITE = 64 * 1024
LOOPBACK = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


@asynccontextmanager
async def raw_pair() -> AsyncIterator[tuple[IHost, IHost]]:
    a, b = new_host(), new_host()

    async def echo(stream: INetStream) -> None:
        try:
            while True:
                data = await stream.read(65536)
                if not data:
                    break
                await stream.write(data)
        except Exception:
            pass

    async def sink(stream: INetStream) -> None:
        got = 0
        try:
            while got < BULK:
                got += len(await stream.read(1 << 20))
            await stream.write(b"k")
        except Exception:
            pass

    b.set_stream_handler(ECHO, echo)  # type: ignore[arg-type]
    b.set_stream_handler(SINK, sink)  # type: ignore[arg-type]
    async with a.run(LOOPBACK), b.run(LOOPBACK):
        yield a, b


async def raw_connect_ms(a: IHost, b: IHost) -> list[float]:
    samples = []
    info = info_from_p2p_addr(b.get_addrs()[0])
    for _ in range(CONNECTS):
        start = time.perf_counter()
        await a.connect(info)
        samples.append((time.perf_counter() - start) * 1000)
        await a.disconnect(b.get_id())
        await trio.sleep(0.02)
    return samples


async def raw_rtt_ms(a: IHost, b: IHost) -> list[float]:
    stream = await a.new_stream(b.get_id(), [ECHO])  # type: ignore[list-item]
    samples = []
    for _ in range(ROUND_TRIPS):
        start = time.perf_counter()
        await stream.write(MESSAGE)
        await read_exactly(stream, len(MESSAGE))
        samples.append((time.perf_counter() - start) * 1000)
    await stream.close()
    return samples


async def raw_new_stream_ms(a: IHost, b: IHost) -> list[float]:
    samples = []
    for _ in range(NEW_STREAMS):
        start = time.perf_counter()
        stream = await a.new_stream(b.get_id(), [ECHO])  # type: ignore[list-item]
        await stream.write(MESSAGE)
        await read_exactly(stream, len(MESSAGE))
        await stream.close()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


async def raw_throughput(a: IHost, b: IHost) -> float:
    stream = await a.new_stream(b.get_id(), [SINK])  # type: ignore[list-item]
    chunk = b"y" * WRITE
    start = time.perf_counter()
    for _ in range(BULK // WRITE):
        await stream.write(chunk)
    await read_exactly(stream, 1)
    return BULK / (time.perf_counter() - start) / 1e6


async def api_measurements() -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with open_test_node("bench-a") as a, open_test_node("bench-b") as b:
        out["connect"] = []
        for _ in range(CONNECTS):
            out["connect"].append((await a.call("dial", {"addr": b.addrs[0]}))["connect_ms"])
            await a.call("hangup", {"peer_id": b.peer_id})
            with trio.fail_after(5):
                while a.transport.node.host.get_connected_peers():
                    await trio.sleep(0.005)
        await a.call("dial", {"addr": b.addrs[0]})
        async with open_streams(b.endpoints, "server", {ECHO: ProtocolSpec(),
                                                       SINK: ProtocolSpec()}) as server, \
                open_streams(a.endpoints, "client") as client, trio.open_nursery() as nursery:

            async def serve() -> None:
                async for stream in server.inbound():
                    nursery.start_soon(handle, stream)

            async def handle(stream: Any) -> None:
                if stream.protocol == ECHO:
                    async for data in stream:
                        await stream.send(data)
                else:
                    got = 0
                    while got < BULK:
                        got += len(await stream.receive())
                    await stream.send(b"k")
                await stream.close()

            nursery.start_soon(serve)
            async with client.open(ECHO, peer=b.peer_id) as s:
                out["rtt"] = []
                for _ in range(ROUND_TRIPS):
                    start = time.perf_counter()
                    await s.send(MESSAGE)
                    got = b""
                    while len(got) < len(MESSAGE):
                        got += await s.receive()
                    out["rtt"].append((time.perf_counter() - start) * 1000)
            out["new_stream"] = []
            for _ in range(NEW_STREAMS):
                start = time.perf_counter()
                async with client.open(ECHO, peer=b.peer_id) as s:
                    await s.send(MESSAGE)
                    got = b""
                    while len(got) < len(MESSAGE):
                        got += await s.receive()
                out["new_stream"].append((time.perf_counter() - start) * 1000)
            async with client.open(SINK, peer=b.peer_id) as s:
                chunk = b"y" * WRITE
                start = time.perf_counter()
                for _ in range(BULK // WRITE):
                    await s.send(chunk)
                await s.receive()
                out["mbps"] = BULK / (time.perf_counter() - start) / 1e6
            nursery.cancel_scope.cancel()
    return out


async def measure() -> list[dict[str, Any]]:
    api = await api_measurements()
    async with raw_pair() as (a, b):
        raw_connect = await raw_connect_ms(a, b)
        await a.connect(info_from_p2p_addr(b.get_addrs()[0]))
        raw_rtt = await raw_rtt_ms(a, b)
        raw_new = await raw_new_stream_ms(a, b)
        raw_mbps = await raw_throughput(a, b)
    return [
        {"name": "transport connect p50 (loopback, Noise+Yamux)", "value": round(p50(api["connect"]), 2),
         "unit": "ms", "baseline": "py-libp2p new_host() connect p50",
         "baseline_value": round(p50(raw_connect), 2)},
        {"name": "stream round trip p50 (64 B, stream API)", "value": round(p50(api["rtt"]), 3),
         "unit": "ms", "baseline": "raw py-libp2p stream", "baseline_value": round(p50(raw_rtt), 3)},
        {"name": "stream round trip p99 (64 B, stream API)",
         "value": round(statistics.quantiles(api["rtt"], n=100)[98], 3), "unit": "ms",
         "baseline": "raw py-libp2p stream",
         "baseline_value": round(statistics.quantiles(raw_rtt, n=100)[98], 3)},
        {"name": "new stream + 64 B echo + close p50 (stream API)",
         "value": round(p50(api["new_stream"]), 3), "unit": "ms",
         "baseline": "raw py-libp2p stream", "baseline_value": round(p50(raw_new), 3)},
        {"name": f"stream throughput ({WRITE // 1024} KiB writes, stream API)",
         "value": round(api["mbps"], 1), "unit": "MB/s", "baseline": "raw py-libp2p stream",
         "baseline_value": round(raw_mbps, 1)},
    ]


def run() -> list[dict[str, Any]]:
    return trio.run(measure)


def main() -> int:
    setup_logging("ERROR")
    for row in run():
        print(f"{row['name']:<52} {row['value']:>9} {row['unit']:<5} "
              f"({row['baseline']}: {row['baseline_value']} {row['unit']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
