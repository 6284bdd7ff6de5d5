"""Two transports (each with its keystore) in one trio loop over real loopback TCP:
dial, identify, ping, the stream API (echo, messages, flow control, close and reset),
limits, peer events and bad input. (Restarts need real processes, whose ipc sockets
reconnect: test_transport_processes.py.)"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import zmq
from libp2p.peer.id import ID

from p2pm.common import errors
from p2pm.common.actor import Actor, ActorRuntime, on_event
from p2pm.common.home import Endpoints
from p2pm.common.zmqtrio import AsyncSocket
from p2pm.common.streams.frames import CHUNK, DEFAULT_WINDOW, encode_sid
from p2pm.common.streams import (ProtocolSpec, Stream, StreamClient, StreamError,
                                             StreamReset, open_streams, streams_endpoint)
from tests.helpers.transport_node import LocalNode, open_test_node

ECHO = "/p2pm-test/echo/1.0.0"
MSGS = "/p2pm-test/msgs/1.0.0"


@asynccontextmanager
async def two_nodes(**kw: object) -> AsyncIterator[tuple[LocalNode, LocalNode]]:
    async with open_test_node("a", **kw) as a, open_test_node("b", **kw) as b:  # type: ignore[arg-type]
        yield a, b


async def echo_server(client: StreamClient) -> None:
    async def one(stream: Stream) -> None:
        try:
            async with stream:
                async for chunk in stream:
                    await stream.send(chunk)
        except StreamReset:
            pass

    async with trio.open_nursery() as nursery:
        async for stream in client.inbound():
            nursery.start_soon(one, stream)


async def wait_until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


async def test_dial_identify_and_ping_both_ways() -> None:
    async with two_nodes() as (a, b):
        dialled = await a.call("dial", {"addr": b.addrs[0]})
        assert dialled["peer_id"] == b.peer_id
        # Identify: each side learns the other's protocols and listen address.
        for me, other in ((a, b), (b, a)):
            info: dict = {}

            async def identified() -> bool:
                info.update(await me.call("peer_info", {"peer_id": other.peer_id}))
                return "/ipfs/ping/1.0.0" in info["protocols"]

            with trio.fail_after(5):
                while not await identified():
                    await trio.sleep(0.02)
            assert info["connected"] and info["identified"]
            assert "/ipfs/id/push/1.0.0" in info["protocols"]
            assert any(other.addrs[0].split("/p2p/")[0] in x for x in info["addrs"])
            pong = await me.call("ping", {"peer_id": other.peer_id, "count": 2})
            assert pong["peer_id"] == other.peer_id and pong["rtt_ms"] > 0
        (entry,) = await a.call("peers")
        assert entry["peer_id"] == b.peer_id and entry["direction"] == "outbound"
        (entry,) = await b.call("peers")
        assert entry["peer_id"] == a.peer_id and entry["direction"] == "inbound"
        await a.call("hangup", {"peer_id": b.peer_id})
        await wait_until(lambda: not a.transport.node.host.get_connected_peers())


async def test_bad_rpc_input_is_refused_clearly() -> None:
    async with open_test_node("a") as a:
        cases = [
            ("dial", {"addr": "not a multiaddr"}, errors.BAD_PARAMS),
            ("dial", {"addr": "/ip4/127.0.0.1/tcp/1"}, errors.BAD_PARAMS),  # no /p2p/
            ("dial", {"addr": a.addrs[0]}, errors.BAD_PARAMS),  # ourselves
            ("ping", {"peer_id": "xyz"}, errors.BAD_PARAMS),
            ("hangup", {"peer_id": a.peer_id}, errors.NOT_FOUND),
            ("ping", {"peer_id": "12D3KooWGb2JGNZGzuRLvkLsWRFAGbRXpyyiPz1Hb1d7KSMzXzEY"},
             errors.NOT_FOUND),  # no known address
        ]
        for method, params, code in cases:
            with pytest.raises(errors.BusError) as info:
                await a.call(method, params, retries=0)
            assert info.value.code == code, (method, params, info.value)
        # Nobody listens there: a clear "cannot reach", fast.
        dead = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWGb2JGNZGzuRLvkLsWRFAGbRXpyyiPz1Hb1d7KSMzXzEY"
        with pytest.raises(errors.BusError) as info:
            await a.call("dial", {"addr": dead}, retries=0, timeout=15)
        assert info.value.code == errors.UNAVAILABLE and "cannot reach" in info.value.message
        assert (await a.call("addrs"))["peer_id"] == a.peer_id  # still serving


async def test_connection_limit_answers_a_clear_error() -> None:
    async with open_test_node("a", transport_config={"max_connections": 1}) as a, \
            open_test_node("b") as b, open_test_node("c") as c:
        await a.call("dial", {"addr": b.addrs[0]})
        with pytest.raises(errors.BusError) as info:
            await a.call("dial", {"addr": c.addrs[0]}, retries=0)
        assert info.value.code == errors.LIMIT and "max_connections" in info.value.message


async def test_echo_over_the_stream_api_both_framings() -> None:
    async with two_nodes() as (a, b):
        async with open_streams(b.endpoints, "echoer", {
                ECHO: ProtocolSpec(), MSGS: ProtocolSpec(messages=True, max_message=1000)
        }) as server, open_streams(a.endpoints, "user") as user, \
                trio.open_nursery() as nursery:
            nursery.start_soon(echo_server, server)
            # By full multiaddr: the transport dials first.
            async with user.open(ECHO, addrs=[b.addrs[0]]) as s:
                payload = bytes(range(256)) * 1000
                await s.send(payload)
                got = b""
                while len(got) < len(payload):
                    got += await s.receive()
                assert got == payload and s.peer == b.peer_id
            # Messages arrive whole, one per receive().
            spec = ProtocolSpec(messages=True, max_message=1000)
            async with user.open(MSGS, peer=b.peer_id, spec=spec) as s:
                for size in (0, 1, 999, 1000):
                    await s.send(b"m" * size)
                    assert await s.receive() == b"m" * size
                with pytest.raises(ValueError):
                    await s.send(b"x" * 1001)
            # An unknown protocol: a clear error, nothing left open.
            with pytest.raises(StreamError):
                await user.open_stream("/nobody/1.0.0", peer=b.peer_id)
            nursery.cancel_scope.cancel()


async def test_close_and_reset_propagate() -> None:
    async with two_nodes() as (a, b):
        async with open_streams(b.endpoints, "srv", {ECHO: ProtocolSpec()}) as server, \
                open_streams(a.endpoints, "user") as user:
            # close: the remote reads EOF and can still answer (half-close).
            s = await user.open_stream(ECHO, addrs=[b.addrs[0]])
            inbound = await server.accept()
            await s.send(b"question")
            await s.close()
            assert await inbound.receive() == b"question"
            with pytest.raises(trio.EndOfChannel):
                await inbound.receive()
            await inbound.send(b"answer")
            await inbound.close()
            assert await s.receive() == b"answer"
            with pytest.raises(trio.EndOfChannel):
                await s.receive()
            # Closed both ways: finished everywhere, nothing kept for it.
            assert user.statistics()["streams"] == server.statistics()["streams"] == 0
            await wait_until(lambda: not b.transport.hub.owners["srv"].streams
                             and not a.transport.hub.owners["user"].streams)
            # reset from the opener reaches the acceptor, and the other way round.
            for resetter_is_opener in (True, False):
                s = await user.open_stream(ECHO, peer=b.peer_id)
                inbound = await server.accept()
                resetter, victim = (s, inbound) if resetter_is_opener else (inbound, s)
                await resetter.reset()
                with trio.fail_after(5), pytest.raises(StreamReset):
                    await victim.receive()
            await wait_until(lambda: b.transport.hub.streams_of(
                a.transport.node.peer_id) == 0)


async def test_flow_control_bounds_memory_with_a_slow_receiver() -> None:
    # Below our windows, py-libp2p's Yamux auto-tunes a stream's receive window up to
    # 16 MiB (go-yamux's maximum) while our side still reads fast, so that much may sit
    # in its buffer: the sender must stall there, never reach the end.
    total = 40 * 1024 * 1024
    yamux_max = 16 * 1024 * 1024
    import random  # noqa: PLC0415
    data = random.Random(7).randbytes(total)
    async with two_nodes() as (a, b):
        async with open_streams(b.endpoints, "slow", {ECHO: ProtocolSpec()}) as server, \
                open_streams(a.endpoints, "fast") as user, trio.open_nursery() as nursery:
            s = await user.open_stream(ECHO, peer=b.peer_id, addrs=[b.addrs[0]])
            sent = 0

            async def send_all() -> None:
                nonlocal sent
                for i in range(0, total, CHUNK):
                    await s.send(data[i:i + CHUNK])
                    sent += CHUNK
                await s.close()

            nursery.start_soon(send_all)
            inbound = await server.accept()
            # The receiver reads nothing: the sender must stall long before the end.
            stalled_at = -1
            with trio.fail_after(10):
                while stalled_at != sent:
                    stalled_at = sent
                    await trio.sleep(0.3)
            assert sent <= yamux_max + 4 * DEFAULT_WINDOW + 2 * CHUNK, \
                f"sender was not held back ({sent} bytes sent)"
            assert inbound.buffered <= DEFAULT_WINDOW + CHUNK
            hub_stream = next(iter(b.transport.hub.owners["slow"].streams.values()))
            assert hub_stream.send_credit >= -CHUNK
            # Now read slowly: everything arrives, in order, and buffers stay bounded.
            digest, got = hashlib.sha256(), 0
            with trio.fail_after(60):
                async for chunk in inbound:
                    assert inbound.buffered <= DEFAULT_WINDOW + CHUNK
                    digest.update(chunk)
                    got += len(chunk)
                    if got < total // 16:
                        await trio.sleep(0.002)
            assert got == total
            assert digest.digest() == hashlib.sha256(data).digest()


async def test_an_oversized_message_from_the_peer_resets_the_stream() -> None:
    async with two_nodes() as (a, b):
        async with open_streams(b.endpoints, "strict",
                                {MSGS: ProtocolSpec(messages=True, max_message=100)}) as srv, \
                open_streams(a.endpoints, "loose") as user:
            # The opener frames generously; the acceptor's limit is 100 bytes.
            s = await user.open_stream(MSGS, peer=b.peer_id, addrs=[b.addrs[0]],
                                       spec=ProtocolSpec(messages=True, max_message=10_000))
            inbound = await srv.accept()
            await s.send(b"ok")
            assert await inbound.receive() == b"ok"
            await s.send(b"y" * 5000)
            with trio.fail_after(5), pytest.raises(StreamReset):
                await inbound.receive()
            with trio.fail_after(5), pytest.raises(StreamReset):
                await s.receive()


async def test_streams_per_peer_limit() -> None:
    async with open_test_node("a") as a, \
            open_test_node("b", transport_config={"max_streams_per_peer": 2}) as b:
        async with open_streams(b.endpoints, "srv", {ECHO: ProtocolSpec()}) as server, \
                open_streams(a.endpoints, "user") as user:
            s1 = await user.open_stream(ECHO, addrs=[b.addrs[0]])
            s2 = await user.open_stream(ECHO, peer=b.peer_id)
            await server.accept()
            await server.accept()
            # b resets the third on arrival: the open fails, or the stream is reset.
            with trio.fail_after(10), pytest.raises(StreamError):
                s3 = await user.open_stream(ECHO, peer=b.peer_id)
                await s3.receive()
            assert b.transport.hub.streams_of(a.transport.node.peer_id) == 2
            await s1.reset()
            await s2.reset()


async def test_second_owner_of_a_protocol_is_refused() -> None:
    async with open_test_node("a") as a:
        async with open_streams(a.endpoints, "dht", {ECHO: ProtocolSpec()}), \
                open_streams(a.endpoints, "gossip", {ECHO: ProtocolSpec()}) as other:
            assert "dht" in other.refused[ECHO]


class EventLog(Actor):
    """Subscribes to the transport's peer events, as the dht and gossip will."""

    name = "eventlog"

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, dict]] = []

    @on_event("transport.peer")
    async def _peer(self, topic: str, data: dict) -> None:
        self.events.append((topic, data))


async def subscribed(nursery: trio.Nursery, actor: EventLog, endpoints: Endpoints) -> None:
    """Serve `actor` and return once its subscription is live: PUB/SUB joins
    asynchronously and drops what is published before, so wait for the transport's
    first heartbeat (subscribed with the rest, so it arrives only once they hold)."""
    runtime = ActorRuntime(actor, endpoints)
    await nursery.start(runtime.serve)
    await wait_until(lambda: runtime.counters["events_received"] > 0)


async def test_peer_events_connected_identified_disconnected() -> None:
    async with two_nodes() as (a, b):
        log = EventLog()
        async with trio.open_nursery() as nursery:
            await subscribed(nursery, log, a.endpoints)
            await a.call("dial", {"addr": b.addrs[0]})
            await wait_until(lambda: any(t.endswith("identified") for t, _ in log.events))
            await a.call("hangup", {"peer_id": b.peer_id})
            await wait_until(lambda: any(t.endswith("disconnected") for t, _ in log.events))
            by_topic = {t: d for t, d in log.events}
            assert by_topic["transport.peer.connected"]["peer_id"] == b.peer_id
            assert by_topic["transport.peer.connected"]["direction"] == "outbound"
            ident = by_topic["transport.peer.identified"]
            assert ident["peer_id"] == b.peer_id and "/ipfs/ping/1.0.0" in ident["protocols"]
            assert ident["addrs"]
            assert by_topic["transport.peer.disconnected"] == {"peer_id": b.peer_id}
            # A peer met again is identified again: its protocols may have changed, and
            # the dht learns of it only from this event.
            await a.call("dial", {"addr": b.addrs[0]})
            await wait_until(lambda: [t for t, _ in log.events].count(
                "transport.peer.identified") == 2)
            nursery.cancel_scope.cancel()


async def test_garbage_on_the_stream_socket_changes_nothing() -> None:
    async with open_test_node("a") as a:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(streams_endpoint(a.endpoints))
        rogue = AsyncSocket(sock)
        try:
            for frames in ([b"junk"], [b"R", b"12345678", b"not json"],
                           [b"R", encode_sid(0), b'{"owner": 5}'],
                           [b"O", encode_sid(1), b"{}"],  # not registered
                           [b"D", encode_sid(99), b"data"], [b"Z", encode_sid(0), b""],
                           [b"R", encode_sid(0), b'{"owner": "x", "instance": "i", '
                                                 b'"protocols": {"bad": {}}}']):
                await rogue.send_multipart(frames)
            # An OPEN before registering is answered with a reset, not silence.
            with trio.fail_after(5):
                reply = await rogue.recv_multipart()
            assert reply[0] == b"X"
            await wait_until(lambda: a.transport.hub.counters["bad_frames"] >= 4)
            assert not a.transport.hub.owners
            async with open_streams(a.endpoints, "fine", {ECHO: ProtocolSpec()}) as ok:
                assert ok.epoch and not ok.refused
        finally:
            rogue.close(linger_ms=0)


async def test_ipv6_listener_and_wildcards_advertise_concrete_addresses() -> None:
    async with open_test_node("a", listen=["/ip4/0.0.0.0/tcp/0", "/ip6/::/tcp/0"]) as a, \
            open_test_node("b", listen=["/ip4/127.0.0.1/tcp/0", "/ip6/::1/tcp/0"]) as b:
        assert a.addrs and not any("/0.0.0.0/" in x or "/ip6/::/" in x for x in a.addrs)
        (v6,) = [x for x in b.addrs if x.startswith("/ip6/::1/")]
        await a.call("dial", {"addr": v6})
        (entry,) = await a.call("peers")
        assert entry["remote_addr"].startswith("/ip6/::1/"), entry
        assert (await a.call("ping", {"peer_id": b.peer_id}))["rtt_ms"] > 0


async def test_a_receiver_paused_longer_than_yamux_patience_keeps_its_stream() -> None:
    # py-libp2p's Yamux write errors out after 5 s of shut window; the pump must wait.
    async with two_nodes() as (a, b):
        async with open_streams(b.endpoints, "sleepy", {ECHO: ProtocolSpec()}) as server, \
                open_streams(a.endpoints, "eager") as user, trio.open_nursery() as nursery:
            s = await user.open_stream(ECHO, addrs=[b.addrs[0]])
            total = 24 * 1024 * 1024

            async def send_all() -> None:
                for _ in range(total // CHUNK):
                    await s.send(b"z" * CHUNK)
                await s.close()

            nursery.start_soon(send_all)
            inbound = await server.accept()
            await trio.sleep(6.5)
            got = 0
            with trio.fail_after(60):
                async for chunk in inbound:
                    got += len(chunk)
            assert got == total


async def test_bad_transport_settings_are_refused_before_anything_starts() -> None:
    from p2pm.common.config import ConfigError

    for listen, transport, complaint in (
            (["/ip4/127.0.0.1/tcp/0", "garbage"], {}, "transport.listen: 'garbage'"),
            (["/ip4/1.2.3.4"], {}, "transport.listen: '/ip4/1.2.3.4' is not supported"),
            (["/ip4/127.0.0.1/udp/4001/quic-v1"], {}, "speaks TCP only"),
            (None, {"max_connections": 0}, "transport.max_connections"),
            (None, {"bootstrap": ["/ip4/127.0.0.1/tcp/1"]}, "must end in /p2p/<peer id>"),
            (None, {"keepalive_interval_s": "often"}, "transport.keepalive_interval_s"),
            (None, {"keepalive_timeout_s": -1}, "transport.keepalive_timeout_s")):
        with pytest.raises(ConfigError, match=re.escape(complaint)):
            async with open_test_node("a", listen=listen, transport_config=transport):
                raise AssertionError("a transport started on a bad setting")


async def test_a_listen_address_in_use_is_reported() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with open_test_node("a", listen=[f"/ip4/127.0.0.1/tcp/{port}",
                                               "/ip4/127.0.0.1/tcp/0"]) as a:
            status = await a.call("sys.status")
            assert "listening on 1 of the 2" in status["problem"]
            assert len(a.addrs) == 1 and f"/tcp/{port}/" not in a.addrs[0]


async def test_addresses_learnt_elsewhere_make_a_peer_dialable_by_id() -> None:
    async with two_nodes() as (a, b):
        bare = b.addrs[0].split("/p2p/")[0]
        for bad in ({"peer_id": b.peer_id, "addrs": []},
                    {"peer_id": b.peer_id, "addrs": ["nope"]},
                    {"peer_id": b.peer_id, "addrs": [a.addrs[0]]},  # names another peer
                    {"peer_id": a.peer_id, "addrs": [bare]}):
            with pytest.raises(errors.BusError) as info:
                await a.call("add_addrs", bad, retries=0)
            assert info.value.code == errors.BAD_PARAMS
        assert not a.transport.node.host.get_connected_peers()  # nothing dialled
        added = await a.call("add_addrs", {"peer_id": b.peer_id, "addrs": [bare]})
        assert added == {"peer_id": b.peer_id, "added": 1}
        assert (await a.call("ping", {"peer_id": b.peer_id}))["rtt_ms"] > 0


async def test_peers_dialling_each_other_at_once_both_connect() -> None:
    """Two nodes that dial each other at the same moment (two gossip actors after an
    invite) both succeed at once; from the listening port the two SYNs would merge
    into one TCP connection with two Noise initiators, and both dials would hang."""
    from p2pm.services.transport.reuseport import local_port

    async with two_nodes() as (a, b):
        for _ in range(3):
            with trio.fail_after(8):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(a.call, "dial", {"addr": b.addrs[0]})
                    nursery.start_soon(b.call, "dial", {"addr": a.addrs[0]})
            assert (await a.call("ping", {"peer_id": b.peer_id}))["rtt_ms"] > 0
            assert (await b.call("ping", {"peer_id": a.peer_id}))["rtt_ms"] > 0
            # Ordinary dials leave from an ephemeral port, never the listening one.
            for me in (a, b):
                node = me.transport.node
                assert node is not None
                listen = int(me.addrs[0].split("/tcp/")[1].split("/")[0])
                for conns in node.host.get_network().get_connections_map().values():
                    for conn in conns:
                        port = local_port(conn)
                        assert port is not None
                        if conn.muxed_conn.is_initiator:
                            assert port != listen
            await a.call("hangup", {"peer_id": b.peer_id})
            await wait_until(lambda: not a.transport.node.host.get_connected_peers()
                             and not b.transport.node.host.get_connected_peers())


async def test_a_protocol_registered_after_identify_is_pushed_to_connected_peers() -> None:
    async with two_nodes() as (a, b):
        await a.call("dial", {"addr": b.addrs[0]})

        async def b_protocols() -> list[str]:
            return (await a.call("peer_info", {"peer_id": b.peer_id}))["protocols"]

        await wait_until(lambda: a.transport.node.host.get_peerstore().get_protocols(
            ID.from_base58(b.peer_id)))
        assert MSGS not in await b_protocols()
        log = EventLog()
        async with trio.open_nursery() as nursery:
            await subscribed(nursery, log, a.endpoints)
            async with open_streams(b.endpoints, "late", {MSGS: ProtocolSpec(messages=True)}):
                with trio.fail_after(5):
                    while MSGS not in await b_protocols():
                        await trio.sleep(0.05)
                # ... and announced to a's actors, as a fresh identify would be.
                await wait_until(lambda: any(
                    t == "transport.peer.identified" and MSGS in d["protocols"]
                    for t, d in log.events))
            nursery.cancel_scope.cancel()
        # The owner left: the protocol is withdrawn the same way.
        with trio.fail_after(5):
            while MSGS in await b_protocols():
                await trio.sleep(0.05)
