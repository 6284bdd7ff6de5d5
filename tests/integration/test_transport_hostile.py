"""A hostile peer against the transport's muxer and stream limits: a py-libp2p host that
writes raw Yamux frames past the receive window (into a stream the node has finished
with, and into a fresh one), and one that opens streams as fast as it can.

What a user would notice if these broke: a node whose memory grows until it is killed,
or whose honest peers stop getting through while a stranger floods it."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.host.ping import PingService
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

from p2pm.services.transport import yamux_guard as yg
from tests.helpers.transport_node import open_test_node
from tests.helpers import await_for
from tests.integration.test_transport_processes import ProcNode

LOOPBACK = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
IDENTIFY = "/ipfs/id/1.0.0"
WINDOW = yg.DEFAULT_WINDOW
CHUNK = 60 * 1024  # under Noise's 64 KiB message limit with the header
DEADLINE = 20.0
FLOOD_S = 10.0
RSS_BOUND_MIB = 32


@asynccontextmanager
async def hostile_host() -> AsyncIterator[IHost]:
    host = new_host()
    async with host.run(listen_addrs=LOOPBACK):
        yield host


async def write_frame(conn: Any, type_: int, flags: int, sid: int, payload: bytes) -> None:
    # The attacker's own Yamux also writes (window updates, pings, ACKs): its frame
    # lock keeps our raw frames whole between them.
    await conn._write_frame(yg.encode_header(type_, flags, sid, len(payload)) + payload)


async def finished_identify_stream(host: IHost, node_id: ID) -> Any:
    """An identify stream the node has answered and closed: it will never read it."""
    stream = await host.new_stream(node_id, [IDENTIFY])  # type: ignore[list-item]
    with trio.fail_after(DEADLINE):
        try:
            while await stream.read():
                pass
        except Exception:
            pass  # EOF: the node closed its side
    return stream


async def overrun(stream: Any) -> None:
    """Fill the stream's whole window (what the node granted so far), then one byte
    more."""
    conn, sid = stream.muxed_conn, stream.muxed_stream.stream_id
    left, flags = stream.muxed_stream.send_window, 0
    while left:
        n = min(CHUNK, left)
        await write_frame(conn, yg.TYPE_DATA, flags, sid, bytes(n))
        flags, left = 0, left - n
    await write_frame(conn, yg.TYPE_DATA, 0, sid, b"x")


async def test_an_overrun_resets_the_stream_and_a_repeat_offender_is_disconnected() -> None:
    async with open_test_node("p2pm") as node, hostile_host() as bad:
        node_id = ID.from_base58(node.peer_id)
        await bad.connect(info_from_p2p_addr(multiaddr.Multiaddr(node.addrs[0])))
        stream = await finished_identify_stream(bad, node_id)
        await overrun(stream)
        with trio.fail_after(DEADLINE):
            while not stream.muxed_stream.reset_received:
                await trio.sleep(0.02)
        # One overrun costs the stream, not the connection.
        assert len(await PingService(bad).ping(node_id, 2)) == 2
        status = await node.call("sys.status")
        assert status["limits"]["muxer"]["overrun_resets"] == 1
        print("after one overrun:", status["limits"]["muxer"])
        # Two more overruns (the third strike): disconnected.
        for _ in range(2):
            stream = await finished_identify_stream(bad, node_id)
            await overrun(stream)

        async def disconnected() -> bool:
            peers = await node.call("peers")
            return not bad.get_network().get_connections(node_id) and \
                str(bad.get_id()) not in {p["peer_id"] for p in peers}

        await await_for(disconnected, "the offender's connection to close", DEADLINE)
        muxer = (await node.call("sys.status"))["limits"]["muxer"]
        print("after three overruns:", muxer)
        assert muxer["overrun_resets"] == 2 and muxer["disconnects"] == 1
        assert muxer["strikes"] == 3


async def test_a_stream_open_flood_is_refused_and_the_connection_keeps_working() -> None:
    async with open_test_node("p2pm") as node, hostile_host() as bad:
        node_id = ID.from_base58(node.peer_id)
        await bad.connect(info_from_p2p_addr(multiaddr.Multiaddr(node.addrs[0])))
        conn = bad.get_network().get_connections(node_id)[0].muxed_conn
        for sid in range(20_001, 20_001 + 2 * 600, 2):
            await write_frame(conn, yg.TYPE_WINDOW_UPDATE, yg.FLAG_SYN, sid, b"")

        async def refused() -> bool:
            muxer = (await node.call("sys.status"))["limits"]["muxer"]
            return muxer["streams_refused_rate"] + muxer["streams_refused_count"] >= 200

        await await_for(refused, "stream opens past the limits to be refused", DEADLINE)
        muxer = (await node.call("sys.status"))["limits"]["muxer"]
        print("after 600 stream opens:", muxer)
        assert muxer["streams_accepted"] <= 300 + 10  # the burst, plus what refilled
        # Refused streams are not strikes: the connection still carries pings.
        with trio.fail_after(DEADLINE):
            while True:
                try:
                    assert len(await PingService(bad).ping(node_id, 1)) == 1
                    break
                except Exception:
                    await trio.sleep(0.2)  # until the open-rate bucket refills


async def test_a_protocol_opened_too_often_is_refused_per_peer() -> None:
    """identify push (burst 10, 1/s): a stranger that pushes 40 times in a row gets
    its streams reset past the burst, and only its own; its connection stays."""
    push = "/ipfs/id/push/1.0.0"
    async with open_test_node("p2pm") as node, hostile_host() as bad:
        node_id = ID.from_base58(node.peer_id)
        await bad.connect(info_from_p2p_addr(multiaddr.Multiaddr(node.addrs[0])))
        for _ in range(40):
            try:
                stream = await bad.new_stream(node_id, [push])  # type: ignore[list-item]
                await stream.close()
            except Exception:
                pass  # a refused stream may be reset before we close it

        async def refused() -> Any:
            rates = (await node.call("sys.status"))["limits"]["rates"]
            return rates if rates["identify_push"]["refused"] >= 25 else None

        rates = await await_for(refused, "pushes past the burst to be refused", DEADLINE)
        print("identify push table:", rates["identify_push"])
        assert rates["identify_push"]["allowed"] <= 15  # the burst, plus what refilled
        assert rates["identify_push"]["keys"] == 1  # one peer, one bucket
        assert rates["ping"]["refused"] == 0
        assert len(await PingService(bad).ping(node_id, 2)) == 2


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@pytest.fixture
def proc_nodes() -> Iterator[list[ProcNode]]:
    made = [ProcNode(), ProcNode()]
    try:
        for node in made:
            node.start("keystore")
            node.start("transport")
        yield made
    finally:
        for node in made:
            node.destroy()


async def flood(target: str, addr: str, mode: str, until: float,
                tally: dict[str, int]) -> None:
    """Write past the window at full speed until `until`, reconnecting whenever the
    node drops us. `mode`: "finished" (an answered identify stream) or "fresh" (a
    stream opened by the flood's own SYN)."""
    node_id = ID.from_base58(target)
    fresh_ids = itertools.count(30_001, 2)
    payload = bytes(CHUNK)
    async with hostile_host() as bad:
        while trio.current_time() < until:
            try:
                with trio.fail_after(DEADLINE):
                    await bad.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
                tally["connections"] += 1
                conn = bad.get_network().get_connections(node_id)[0].muxed_conn
                if mode == "finished":
                    sid, flags = (await finished_identify_stream(bad, node_id)
                                  ).muxed_stream.stream_id, 0
                else:
                    sid, flags = next(fresh_ids), yg.FLAG_SYN
                while trio.current_time() < until and not conn.is_closed:
                    await write_frame(conn, yg.TYPE_DATA, flags, sid, payload)
                    tally["bytes"] += len(payload)
                    flags = 0
            except Exception:
                pass  # dropped, as it should be
            # Go again on a new connection (py-libp2p may still list the dead one).
            with trio.move_on_after(5):
                await bad.disconnect(node_id)
            await trio.sleep(0.05)


@pytest.mark.slow
async def test_a_window_flood_for_10s_leaves_rss_bounded_and_pings_flowing(
        proc_nodes: list[ProcNode]) -> None:
    a, b = proc_nodes
    ida, _ = await a.wait_up(), await b.wait_up()
    await b.call("dial", {"addr": ida["addrs"][0]})
    before = (await b.call("ping", {"peer_id": ida["peer_id"], "count": 10}))["rtts_ms"]
    pid = a.procs["transport"].pid
    rss_before = rss_mib(pid)
    during: list[float] = []
    failed_pings = 0
    rss_max = rss_before
    tally = {"bytes": 0, "connections": 0}
    until = trio.current_time() + FLOOD_S
    async with trio.open_nursery() as nursery:
        for mode in ("finished", "fresh"):
            nursery.start_soon(flood, ida["peer_id"], ida["addrs"][0], mode, until, tally)
        while trio.current_time() < until:
            try:
                pong = await b.call("ping", {"peer_id": ida["peer_id"]}, timeout=5.0,
                                    retries=0)
                during.append(pong["rtt_ms"])
            except Exception as exc:
                failed_pings += 1
                print("ping failed:", type(exc).__name__, exc)
            rss_max = max(rss_max, rss_mib(pid))
            # Three pings a second: under the node's per-peer ping rate (limits.py).
            await trio.sleep(0.3)
    rss_after = rss_mib(pid)
    muxer = (await a.call("sys.status"))["limits"]["muxer"]
    print(f"\ntransport RSS before {rss_before:.1f} MiB, max during {rss_max:.1f} MiB, "
          f"after {rss_after:.1f} MiB; flood {tally['bytes'] / 2**20:.0f} MiB over "
          f"{tally['connections']} connections in {FLOOD_S:g}s")
    print(f"ping p50 before {statistics.median(before):.2f} ms, during "
          f"{statistics.median(during) if during else float('nan'):.2f} ms "
          f"({len(during)} answered, {failed_pings} failed)")
    print("muxer counters:", muxer)
    assert tally["bytes"] > 32 * 2**20, "the flood never got going"
    assert rss_max - rss_before <= RSS_BOUND_MIB
    assert muxer["overrun_resets"] + muxer["disconnects"] >= 1
    # The honest peer kept getting through.
    assert len(during) >= 10 and failed_pings <= len(during) // 10, failed_pings
    # ...and is still connected afterwards.
    assert (await b.call("ping", {"peer_id": ida["peer_id"]}))["rtt_ms"] > 0
