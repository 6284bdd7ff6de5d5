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
from p2pm.common.settings import ConfigError
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
    node drops us, each time as a new peer (the node boxes a peer ID it cut off).
    `mode`: "finished" (an answered identify stream) or "fresh" (a stream opened by
    the flood's own SYN)."""
    node_id = ID.from_base58(target)
    fresh_ids = itertools.count(30_001, 2)
    payload = bytes(CHUNK)
    while trio.current_time() < until:
        async with hostile_host() as bad:
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
            # Go again as a new peer (py-libp2p may still list the dead connection).
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
    limits = (await a.call("sys.status"))["limits"]
    muxer = limits["muxer"]
    print(f"\ntransport RSS before {rss_before:.1f} MiB, max during {rss_max:.1f} MiB, "
          f"after {rss_after:.1f} MiB; flood {tally['bytes'] / 2**20:.0f} MiB over "
          f"{tally['connections']} connections in {FLOOD_S:g}s")
    print(f"ping p50 before {statistics.median(before):.2f} ms, during "
          f"{statistics.median(during) if during else float('nan'):.2f} ms "
          f"({len(during)} answered, {failed_pings} failed)")
    print("muxer counters:", muxer, "penalty box:", limits["penalty"])
    assert tally["bytes"] > 32 * 2**20, "the flood never got going"
    assert rss_max - rss_before <= RSS_BOUND_MIB
    assert muxer["overrun_resets"] + muxer["disconnects"] >= 1
    # Every peer ID it cut off is boxed (each reconnect came as a new one).
    assert limits["penalty"]["offences"] == muxer["disconnects"]
    # The honest peer kept getting through.
    assert len(during) >= 10 and failed_pings <= len(during) // 10, failed_pings
    # ...and is still connected afterwards.
    assert (await b.call("ping", {"peer_id": ida["peer_id"]}))["rtt_ms"] > 0


async def strike_out(bad: IHost, node_id: ID) -> None:
    """Three overruns on answered identify streams: the third costs the connection."""
    for _ in range(3):
        await overrun(await finished_identify_stream(bad, node_id))
    with trio.fail_after(DEADLINE):
        while bad.get_network().get_connections(node_id):
            await trio.sleep(0.05)


async def test_an_offender_that_reconnects_is_refused_until_its_term_ends() -> None:
    async with open_test_node("p2pm") as node, hostile_host() as bad:
        node_id = ID.from_base58(node.peer_id)
        info = info_from_p2p_addr(multiaddr.Multiaddr(node.addrs[0]))
        box = node.transport.node.policy.box  # type: ignore[union-attr]
        box.first_s = 3.0  # the default minute, shortened to keep the test short
        await bad.connect(info)
        await strike_out(bad, node_id)
        # Reconnecting at once gets nowhere: refused at muxer negotiation.
        for _ in range(3):
            with trio.move_on_after(5):
                await bad.disconnect(node_id)
            with pytest.raises(Exception):
                await bad.connect(info)
                assert len(await PingService(bad).ping(node_id, 1)) == 1
        penalty = (await node.call("sys.status"))["limits"]["penalty"]
        print("while boxed:", penalty)
        assert penalty["boxed"] == 1 and penalty["offences"] == 1
        assert penalty["refused"] >= 3
        # Once the term is over it is let in again (and a second offence would double it).
        async def let_in() -> bool:
            try:
                with trio.move_on_after(5):
                    await bad.disconnect(node_id)
                # The attacker's own py-libp2p remembers the refusals; make it dial.
                bad.get_network()._negative_peer_cache.clear()  # type: ignore[attr-defined]
                await bad.connect(info)
                return len(await PingService(bad).ping(node_id, 1)) == 1
            except Exception as exc:
                print("let_in:", type(exc).__name__, exc)
                return False

        await await_for(let_in, "the offender to be let in after its term", DEADLINE)
        assert (await node.call("sys.status"))["limits"]["penalty"]["boxed"] == 0
        await strike_out(bad, node_id)
        assert box.status(trio.current_time())["boxed"] == 1
        assert box.refuses(bad.get_id(), trio.current_time()) > box.first_s


async def test_identify_is_retried_while_the_peer_stays_connected() -> None:
    """A peer whose first identify answer fails (reset, as under load) is identified
    by a retry a second later: without it the node never learns the peer's protocols,
    and the dht and gossip, which learn of peers only from identify, never use it."""
    async with open_test_node("p2pm") as node, hostile_host() as flaky:
        served = 0
        answer = flaky.get_mux().handlers[IDENTIFY]  # type: ignore[index]

        async def first_fails(stream: Any) -> None:
            nonlocal served
            served += 1
            if served == 1:
                await stream.reset()
                return
            await answer(stream)

        flaky.set_stream_handler(IDENTIFY, first_fails)  # type: ignore[arg-type]
        await flaky.connect(info_from_p2p_addr(multiaddr.Multiaddr(node.addrs[0])))

        async def identified() -> Any:
            for peer in await node.call("peers"):
                if peer["peer_id"] == str(flaky.get_id()) and \
                        "/ipfs/ping/1.0.0" in peer["protocols"]:
                    return peer
            return None

        peer = await await_for(identified, "the node to identify the flaky peer", DEADLINE)
        print("identified after", served, "identify requests:", peer["protocols"])
        assert served == 2


async def hold_unread(addr: str, target: str, streams: int, per_stream: int,
                      tally: dict[str, int], release: trio.Event) -> None:
    """One connection that opens ping streams, writes `per_stream` bytes into each
    within the windows granted and never reads an echo: once the node's echoes fill
    our window its ping handlers stop reading, and what we send sits unread at the
    node. Each connection stays under the per-connection cap."""
    node_id = ID.from_base58(target)
    async with hostile_host() as bad:
        with trio.move_on_after(DEADLINE):
            await bad.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))

            async def fill() -> None:
                try:
                    stream = await bad.new_stream(node_id, [PING])  # type: ignore[list-item]
                    for _ in range(per_stream // CHUNK):
                        await stream.write(bytes(CHUNK))
                        tally["bytes"] += CHUNK
                except Exception:
                    tally["reset"] += 1  # the node reset it: the budget at work

            async with trio.open_nursery() as nursery:
                for _ in range(streams):
                    nursery.start_soon(fill)
        tally["done"] += 1
        await release.wait()  # the connection stays, and what it sent stays unread


PING = "/ipfs/ping/1.0.0"
BUDGET_MIB = 4


@pytest.mark.slow
async def test_many_connections_under_their_cap_stay_within_the_node_budget() -> None:
    """12 connections each holding ~2 MiB unread (a quarter of the 8 MiB per-connection
    cap) want 24 MiB together; the node's budget here is 4 MiB. The heaviest pay, the
    node's unread total never passes the budget, and an honest peer keeps pinging while
    the attackers are sending and while they sit on the budget."""
    node_proc = ProcNode(f"mux_budget_mib = {BUDGET_MIB}\n")
    try:
        node_proc.start("keystore")
        node_proc.start("transport")
        ident = await node_proc.wait_up()
        pid = node_proc.procs["transport"].pid
        rss_before = rss_mib(pid)
        tally = {"bytes": 0, "reset": 0, "done": 0}
        rtts: list[float] = []
        during = 0
        rss_max = rss_before
        async with hostile_host() as honest:
            node_id = ID.from_base58(ident["peer_id"])
            await honest.connect(info_from_p2p_addr(multiaddr.Multiaddr(ident["addrs"][0])))
            release = trio.Event()
            async with trio.open_nursery() as nursery:
                for _ in range(12):
                    nursery.start_soon(hold_unread, ident["addrs"][0], ident["peer_id"],
                                       8, 256 * 1024 + 4 * CHUNK, tally, release)
                started = trio.current_time()
                held = 0
                while held < 10:
                    with trio.fail_after(10):
                        rtts += [float(r) for r in await PingService(honest).ping(node_id, 1)]
                    if tally["done"] < 12:
                        during = len(rtts)
                    else:
                        held += 1
                    rss_max = max(rss_max, rss_mib(pid))
                    await trio.sleep(0.3)
                attack_s = trio.current_time() - started
                held_status = (await node_proc.call("sys.status"))["limits"]["budget"]
                release.set()
            limits = (await node_proc.call("sys.status"))["limits"]
        budget = limits["budget"]
        print(f"\ntransport RSS before {rss_before:.1f} MiB, max {rss_max:.1f} MiB; "
              f"sent {tally['bytes'] / 2**20:.1f} MiB, {tally['reset']} streams reset")
        print("budget:", budget, "muxer:", limits["muxer"])
        print(f"honest pings: {len(rtts)} ({during} while the attack sent, then 10 while "
              f"it held {held_status['unread'] / 2**20:.1f} MiB; {attack_s:.0f}s), "
              f"p50 {statistics.median(rtts):.1f} ms")
        assert tally["bytes"] > 2 * BUDGET_MIB * 2**20, "the attack never got going"
        assert budget["cap"] == BUDGET_MIB * 2**20
        assert budget["peak"] <= budget["cap"]
        assert budget["short"] >= 1 and budget["sheds"] + budget["self_resets"] >= 1
        assert rss_max - rss_before <= RSS_BOUND_MIB
        # Every honest ping was answered (a failure raised above), with the budget
        # nearly all held by the attackers.
        assert during >= 1 and held_status["unread"] >= budget["cap"] // 2
    finally:
        node_proc.destroy()


@pytest.mark.parametrize("bad", [2, 5000, "64", 1.5, True])
async def test_a_node_budget_out_of_range_is_refused_naming_the_key(bad: Any) -> None:
    with pytest.raises(ConfigError, match="transport.mux_budget_mib"):
        async with open_test_node("p2pm", transport_config={"mux_budget_mib": bad}):
            pass


async def test_a_node_budget_in_range_is_used() -> None:
    async with open_test_node("p2pm", transport_config={"mux_budget_mib": 16}) as node:
        status = await node.call("sys.status")
        assert status["problem"] is None
        assert status["limits"]["budget"] == {
            "cap": 16 * 2**20, "unread": 0, "peak": 0, "connections": 0, "short": 0,
            "sheds": 0, "shed_bytes": 0, "self_resets": 0}
