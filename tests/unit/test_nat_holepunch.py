"""DCUtR's pure parts (no sockets): retry bookkeeping, address choice, and the rules
that keep one connection per peer and make exactly one side the initiator.

py-libp2p's DCUtR keeps a failure count per peer that is never reset while the peer
stays connected: after three failures that peer is never punched again. Ours blocks a
peer only for a cooldown (or until the addresses change), and forgets on success.

The connection rules are checked from both sides at once: each side sees the same
connections with the direction flipped, and the two must agree on what stays."""

from __future__ import annotations

import itertools

import multiaddr
import pytest
import trio
from trio.testing import MockClock

from p2pm.common import errors
from p2pm.services.transport.dcutr import FAILED, OK, YIELDED, HolePunchTracker, punch_addrs
from p2pm.services.transport.dialing import dial_direct
from p2pm.services.transport.peerconns import (ConnView, DialJoin, initiator_wins, kept,
                                               punch_initiator, surplus)
from tests.helpers.stopping import nursery_cut_by_the_stop

SMALL = "12D3KooWA"  # compared as text: only the order matters
LARGE = "12D3KooWZ"


def test_one_run_at_a_time_per_peer() -> None:
    t = HolePunchTracker(cooldown_s=600)
    assert t.begin("p", 0)
    assert not t.begin("p", 1)
    assert t.begin("q", 1)


def test_a_failed_peer_is_retried_after_the_cooldown_not_never() -> None:
    t = HolePunchTracker(cooldown_s=600)
    for round_start in (0, 605, 1210):
        assert t.begin("p", round_start)
        t.end("p", FAILED, round_start + 5)
        assert not t.begin("p", round_start + 300)
    assert t.begin("p", 1815)


def test_a_failure_survives_a_reconnect_but_not_an_address_change() -> None:
    """A symmetric NAT is not punched again on every new circuit; a moved node is."""
    t = HolePunchTracker(cooldown_s=600)
    assert t.begin("p", 0, "a|b")
    t.end("p", FAILED, 5, "a|b")
    assert not t.begin("p", 130, "a|b")  # a new relayed connection, same addresses
    assert t.begin("p", 131, "a2|b")  # our observed address changed


def test_success_clears_and_a_yielded_run_records_nothing() -> None:
    t = HolePunchTracker(cooldown_s=600)
    t.begin("p", 0)
    t.end("p", YIELDED, 1)  # the other side took the initiator's role
    assert t.begin("p", 2)
    t.end("p", FAILED, 3)
    assert not t.begin("p", 4)
    t.failed_at.clear()
    assert t.begin("p", 5)
    t.end("p", OK, 6)
    assert t.begin("p", 7) and "p" not in t.failed_at


def test_failure_records_are_bounded() -> None:
    t = HolePunchTracker(cooldown_s=600)
    for n in range(1100):
        t.begin(f"p{n}", n * 0.01)
        t.end(f"p{n}", FAILED, n * 0.01)
    assert len(t.failed_at) == 1024
    assert "p1099" in t.failed_at and "p0" not in t.failed_at


def test_punch_addresses_are_direct_ipv4_tcp_deduplicated() -> None:
    raw = [multiaddr.Multiaddr(a).to_bytes() for a in (
        "/ip4/198.18.0.12/tcp/4001", "/ip4/198.18.0.12/tcp/4001",
        "/ip4/198.18.0.12/udp/4001/quic-v1",
        "/ip4/198.18.0.2/tcp/4001/p2p/12D3KooWEGiRV8oE6crBS1Tmpohf1sZqxCbj3JFmHDXTti7X3dww"
        "/p2p-circuit")] + [b"garbage"]
    assert [str(a) for a in punch_addrs(raw)] == ["/ip4/198.18.0.12/tcp/4001"]


# -- one connection per peer, from both sides ----------------------------------------

def both_sides(conns: list[tuple[str, bool, str]]) -> tuple[list[ConnView], list[ConnView]]:
    """Connections as (name, relayed, dialled by "S" or "L"), in the order each side
    saw them open; the same connection has the same key on both sides."""
    s, big = [], []
    for n, (name, relayed, dialler) in enumerate(conns):
        key = hash(name)
        s.append(ConnView(key, relayed, dialler == "S", n))
        big.append(ConnView(key, relayed, dialler == "L", n))
    return s, big


def agree(conns: list[tuple[str, bool, str]]) -> tuple[set[int], bool, bool]:
    """(what stays, S initiates, L initiates) after both sides applied the rules."""
    s, big = both_sides(conns)
    stays_s = {c.key for c in kept(SMALL, LARGE, s)}
    stays_l = {c.key for c in kept(LARGE, SMALL, big)}
    stays = stays_s & stays_l  # what neither side closes
    assert stays, "the two sides closed every connection between them"
    return stays, punch_initiator(SMALL, LARGE, s), punch_initiator(LARGE, SMALL, big)


def test_crossed_circuits_keep_the_smaller_ids_and_the_larger_punches() -> None:
    for order in itertools.permutations([("by-S", True, "S"), ("by-L", True, "L")]):
        stays, s_inits, l_inits = agree(list(order))
        assert stays == {hash("by-S")}
        assert (s_inits, l_inits) == (False, True)  # L accepted the circuit that stays
    assert initiator_wins(LARGE, SMALL) and not initiator_wins(SMALL, LARGE)


def test_one_circuit_the_side_that_accepted_it_punches() -> None:
    for dialler, expect in (("S", (False, True)), ("L", (True, False))):
        stays, s_inits, l_inits = agree([("c", True, dialler)])
        assert stays == {hash("c")} and (s_inits, l_inits) == expect


def test_duplicates_of_one_dialler_only_the_dialler_closes() -> None:
    conns = [("first", True, "L"), ("second", True, "L")]
    s, big = both_sides(conns)
    assert surplus(SMALL, LARGE, s) == []  # S might keep the wrong one: it waits
    assert surplus(LARGE, SMALL, big) == [hash("second")]
    stays, s_inits, l_inits = agree(conns)
    assert stays == {hash("first")} and (s_inits, l_inits) == (True, False)


def test_three_circuits_end_as_one_whatever_the_order() -> None:
    circuits = [("a", True, "S"), ("b", True, "L"), ("c", True, "S")]
    for order in itertools.permutations(circuits):
        stays, s_inits, l_inits = agree(list(order))
        first_by_s = next(name for name, _, d in order if d == "S")
        assert stays == {hash(first_by_s)}
        assert (s_inits, l_inits) == (False, True)


def test_a_direct_connection_retires_every_relayed_one_and_nobody_punches() -> None:
    conns = [("relayed", True, "S"), ("punched", False, "L"), ("other", True, "L")]
    s, big = both_sides(conns)
    assert sorted(surplus(SMALL, LARGE, s)) == sorted([hash("relayed"), hash("other")])
    assert sorted(surplus(LARGE, SMALL, big)) == sorted([hash("relayed"), hash("other")])
    stays, s_inits, l_inits = agree(conns)
    assert stays == {hash("punched")} and not s_inits and not l_inits


def test_no_connection_nothing_to_do() -> None:
    assert surplus(SMALL, LARGE, []) == [] and not punch_initiator(SMALL, LARGE, [])


# -- dials that join one under way (virtual time: MockClock jumps while all wait) ----

class FakePeer:
    """A peer a dial reaches after `delay` seconds; `dials` records each dial."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.dials: list[frozenset[str]] = []
        self.up = False

    async def dial(self, addrs: frozenset[str]) -> None:
        self.dials.append(addrs)
        await trio.sleep(self.delay)
        self.up = True

    def connected(self) -> bool:
        return self.up


def test_a_second_dial_joins_the_first() -> None:
    async def main() -> None:
        joiner = DialJoin()
        peer = FakePeer(0.5)
        dials, dial = peer.dials, peer.dial

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(joiner.dial, "peer", frozenset({"a", "b"}), dial,
                                   peer.connected)
        assert dials == [frozenset({"a", "b"})] and joiner.joined == 4
        await joiner.dial("peer", frozenset({"a", "b"}), dial, peer.connected)
        assert len(dials) == 1 and not joiner.dialling("peer")

    trio.run(main, clock=MockClock(autojump_threshold=0))


def test_joiners_share_the_failure_and_new_addresses_are_dialled_at_once() -> None:
    async def main() -> None:
        joiner = DialJoin()
        dials: list[tuple[float, frozenset[str]]] = []

        async def failing(addrs: frozenset[str]) -> None:
            dials.append((trio.current_time(), addrs))
            await trio.sleep(0.2)
            raise errors.unavailable("no answer")

        outcomes: list[str] = []

        async def one(addrs: set[str]) -> None:
            try:
                await joiner.dial("peer", frozenset(addrs), failing, lambda: False)
            except errors.BusError as exc:
                outcomes.append(exc.message)

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, {"a", "b"})
            await trio.sleep(0.05)
            nursery.start_soon(one, {"a"})  # nothing new: waits, shares the failure
            nursery.start_soon(one, {"a", "c"})  # "c" is new: dialled now, alone
        assert outcomes == ["no answer"] * 3
        assert [addrs for _, addrs in dials] == [frozenset({"a", "b"}), frozenset({"c"})]
        assert dials[1][0] - start < 0.1  # not after the first dial gave up

    trio.run(main, clock=MockClock(autojump_threshold=0))


def test_the_first_dial_that_connects_stops_the_others() -> None:
    async def main() -> None:
        joiner = DialJoin()
        up = {"connected": False}

        async def dial(addrs: frozenset[str]) -> None:
            if "home" in addrs:
                await trio.sleep(10)  # a home address the NAT drops
                raise errors.unavailable("no answer in 10s")
            await trio.sleep(0.1)  # a relay circuit
            up["connected"] = True

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(joiner.dial, "peer", frozenset({"home"}), dial,
                               lambda: up["connected"])
            await trio.sleep(0.01)
            await joiner.dial("peer", frozenset({"home", "circuit"}), dial,
                              lambda: up["connected"])
        assert up["connected"] and trio.current_time() - start < 1

    trio.run(main, clock=MockClock(autojump_threshold=0))


def test_a_cancelled_first_dial_lets_a_joiner_dial() -> None:
    async def main() -> None:
        joiner = DialJoin()
        peer = FakePeer(0.3)

        async def impatient() -> None:
            with trio.move_on_after(0.1):  # the first caller's own timeout
                await joiner.dial("peer", frozenset({"a"}), peer.dial, peer.connected)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(impatient)
            await trio.sleep(0.01)
            await joiner.dial("peer", frozenset({"a"}), peer.dial, peer.connected)
        assert peer.up and len(peer.dials) == 2

    trio.run(main, clock=MockClock(autojump_threshold=0))


@pytest.mark.parametrize("exc", [ValueError("boom"), errors.not_found("no addrs")])
def test_a_failure_is_a_bus_error_for_everyone(exc: Exception) -> None:
    async def main() -> None:
        joiner = DialJoin()

        async def failing(addrs: frozenset[str]) -> None:
            await trio.sleep(0.1)
            raise exc

        seen: list[str] = []

        async def one() -> None:
            try:
                await joiner.dial("peer", frozenset({"a"}), failing, lambda: False)
            except errors.BusError as err:
                seen.append(err.code)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one)
            await trio.sleep(0.01)
            nursery.start_soon(one)
        code = exc.code if isinstance(exc, errors.BusError) else errors.UNAVAILABLE
        assert seen == [code, code] and not joiner.dialling("peer")

    trio.run(main, clock=MockClock(autojump_threshold=0))


def test_a_dial_cut_short_by_another_that_connected_ends_connected_not_in_its_error() -> None:
    """The home-address dial is a race of its own (a nursery per address): stopped
    because the circuit connected, one of its attempts fails as it is cancelled, and
    the race ends in a group of that failure and Cancelled. Its caller is connected
    all the same and must return, not raise the failure of a dial nobody needs."""
    async def main() -> None:
        joiner = DialJoin()
        up = {"connected": False}

        async def dial(addrs: frozenset[str]) -> None:
            if "home" not in addrs:
                await trio.sleep(0.1)  # a relay circuit
                up["connected"] = True
                return
            await nursery_cut_by_the_stop(OSError("socket closed while connecting"))

        outcomes: list[str] = []

        async def caller(addrs: set[str]) -> None:
            await joiner.dial("peer", frozenset(addrs), dial, lambda: up["connected"])
            outcomes.append("connected")

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(caller, {"home"})
                await trio.sleep(0.01)
                nursery.start_soon(caller, {"home", "circuit"})
        assert outcomes == ["connected", "connected"] and not joiner.dialling("peer")

    trio.run(main, clock=MockClock(autojump_threshold=0))


class RacingNetwork:
    """A swarm whose dial of `lan` waits until cancelled and then fails (its socket
    closed under it), while `wan` connects after 0.3 s."""

    def __init__(self) -> None:
        self.conns: list[str] = []

    async def dial_addr(self, addr: multiaddr.Multiaddr, peer: object) -> str:
        if "10.0.0.2" in str(addr):
            await nursery_cut_by_the_stop(OSError("socket closed while connecting"))
        await trio.sleep(0.3)
        self.conns.append(str(addr))
        return str(addr)

    def get_connections(self, peer: object) -> list[str]:
        return self.conns


def test_the_direct_address_that_connects_wins_though_a_slower_one_fails_as_it_stops() -> None:
    """The first address (a home LAN one) is still dialling when the public one
    connects; stopped, its dial fails as it is cancelled. The dial has won and must
    return, not raise that address's failure."""
    async def main() -> None:
        network = RacingNetwork()
        lan = multiaddr.Multiaddr("/ip4/10.0.0.2/tcp/4001")
        wan = multiaddr.Multiaddr("/ip4/203.0.113.7/tcp/4001")
        with trio.fail_after(5):
            await dial_direct(network, "peer", [lan], [wan])
        assert network.conns == ["/ip4/203.0.113.7/tcp/4001"]

    trio.run(main, clock=MockClock(autojump_threshold=0))


# -- one punch at a time between two peers (fakes for the host and the relayed stream) --

class Pipe:
    """One direction of a stream: bytes written come out of read(n)."""

    def __init__(self) -> None:
        self.send, self.recv = trio.open_memory_channel[bytes](100)
        self.buf = b""

    async def read(self, n: int = -1) -> bytes:
        if not self.buf:
            self.buf = await self.recv.receive()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


class RelayedConn:
    def __init__(self, peer: object) -> None:
        self.peer_id = peer
        self.is_closed = False

    def get_connection_type(self) -> object:
        from libp2p.network.connection.raw_connection import ConnectionType
        return ConnectionType.RELAYED


class RelayedStream:
    """Our end of a DCUtR stream the peer opened over its circuit to us."""

    def __init__(self, peer: object) -> None:
        self.muxed_conn = RelayedConn(peer)
        self.inbound, self.outbound = Pipe(), Pipe()

    async def read(self, n: int = -1) -> bytes:
        return await self.inbound.read(n)

    async def write(self, data: bytes) -> None:
        await self.outbound.send.send(data)

    async def close(self) -> None:
        pass

    async def reset(self) -> None:
        pass


class FakeHost:
    def __init__(self, me: str, peer: object) -> None:
        self.me, self.conns = me, {peer: [RelayedConn(peer)]}
        self.streams_opened: list[object] = []

    def get_id(self) -> str:
        return self.me

    def get_network(self) -> "FakeHost":
        return self

    def get_connections(self, peer: object) -> list[object]:
        return self.conns.get(peer, [])

    def get_peerstore(self) -> "FakeHost":
        return self

    def addrs(self, peer: object) -> list[multiaddr.Multiaddr]:
        return [multiaddr.Multiaddr("/ip4/203.0.113.9/tcp/4001")]

    async def new_stream(self, peer: object, protocols: list[str]) -> object:
        self.streams_opened.append(peer)
        raise ConnectionError("the peer refused: its punch of us is under way")


@pytest.mark.parametrize("me", [SMALL, LARGE])
def test_a_run_does_not_start_while_we_answer_the_peers_punch(me: str) -> None:
    """The peer's CONNECT arrives first and we answer as A; our own run (we accepted
    a circuit of theirs too) comes up before their SYNC. It must wait for that punch,
    not open a second one the peer refuses: that left a run of ours retrying while
    the connection was already direct (test_one_sided_add_punches_once, in the lab)."""
    from libp2p.relay.circuit_v2.pb import dcutr_pb2 as pb
    from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes

    from p2pm.services.transport.dcutr import DCUtR

    peer = SMALL if me == LARGE else LARGE
    host = FakeHost(me, peer)
    direct: list[object] = []
    dcutr = DCUtR(host, lambda: [multiaddr.Multiaddr("/ip4/198.51.100.2/tcp/4001")],
                  lambda addr: None, lambda p, c: direct.append(c), 600.0,
                  initiator=lambda p: True)

    async def punched(p: object, addrs: list[multiaddr.Multiaddr], initiator: bool) -> bool:
        await trio.sleep(0.2)  # the crossing SYNs
        conn = RelayedConn(p)
        conn.get_connection_type = lambda: None  # type: ignore[method-assign]
        host.conns[p].append(conn)
        dcutr.on_direct(p, conn)
        return True

    dcutr._punch = punched  # type: ignore[method-assign]

    async def main() -> None:
        stream = RelayedStream(peer)

        async def send(msg: object) -> None:
            await stream.inbound.send.send(encode_varint_prefixed(msg.SerializeToString()))

        upgraded: list[bool] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dcutr.handle, stream)
            await send(pb.HolePunch(type=pb.HolePunch.CONNECT,
                                    ObsAddrs=[multiaddr.Multiaddr(
                                        "/ip4/203.0.113.9/tcp/4001").to_bytes()]))
            reply = pb.HolePunch()
            reply.ParseFromString(await read_varint_prefixed_bytes(stream.outbound))
            assert reply.type == pb.HolePunch.CONNECT

            async def run() -> None:
                upgraded.append(await dcutr.upgrade(peer))

            nursery.start_soon(run)
            await trio.sleep(0.5)  # the peer's round trip before its SYNC
            await send(pb.HolePunch(type=pb.HolePunch.SYNC))
        assert upgraded == [True] and len(direct) == 1
        assert host.streams_opened == [] and dcutr.counters["runs"] == 0, dcutr.counters

    trio.run(main, clock=MockClock(autojump_threshold=0))
