"""DCUtR (`/libp2p/dcutr`): turn a relayed connection into a direct one by hole punching.

Roles follow the spec: B, the peer that accepted the relayed connection, opens the
stream and sends CONNECT with its observed addresses, timing the round trip; A answers
CONNECT with its own; B sends SYNC and waits half the round trip; A dials B's addresses
as soon as SYNC arrives, B dials A's when its timer expires. Both dial from their
listening port (reuseport.py), so the two SYNs leave through the NATs' existing
mappings and cross: a TCP simultaneous open. On that one connection A is the Noise
initiator and B the responder (`dial_addr_as_responder`). B makes up to 3 attempts
per run, a fresh CONNECT/SYNC (and round trip) each.

Exactly one side is B. When both sides dialled through the relay at once, each
accepted a circuit; peerconns.py keeps one circuit by a rule both compute alike, and
B is the side that accepted the one kept (`initiator` says whether we are it, and is
asked again before every attempt). Should both have started anyway (the second
circuit landed after the first punch began), the CONNECT that meets a run of ours is
settled by `peerconns.initiator_wins`: the larger peer ID goes on as B and refuses
the other's stream; the smaller abandons its run (neither a success nor a failure)
and answers as A.

Retries: `HolePunchTracker` holds who is being punched and who failed. py-libp2p's
DCUtR counts failures per peer and never forgets them while the peer stays connected
(a peer that failed 3 times is given up for good). Here a failed run blocks new runs
to that peer for `cooldown_s`, unless the addresses on either side changed (a moved
laptop may well be punchable now); a success clears the record. A reconnect does not
(a symmetric NAT would otherwise be punched again on every new circuit, every
relay duration limit).

When the direct connection stands, peerconns.py retires the relayed one (after a
grace for its streams), so new streams go direct and the relay's budget is freed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p.abc import INetConn, INetStream
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb import dcutr_pb2 as pb

from p2pm.common.groups import first_error, handle_beside_cancel
from p2pm.common.log import get_logger

from .host import dial_addr_once
from .pbio import close_quietly, read_message, reset_quietly, write_message
from .peerconns import initiator_wins
from .relay import is_relayed
from .reuseport import is_circuit

log = get_logger("transport")

PROTOCOL = "/libp2p/dcutr"
MAX_ADDRS = 8
ATTEMPTS = 3
PUNCH_TIMEOUT_S = 6.0
STREAM_TIMEOUT_S = 10.0
RETRY_PAUSE_S = 1.0
MAX_FAILED = 1024  # failure records kept; past that the oldest is forgotten

OK, FAILED, YIELDED = "ok", "failed", "yielded"


@dataclass
class HolePunchTracker:
    """Whether a hole-punch run may start for a peer. Time comes in as `now`;
    `addrs` is what both sides had to offer (a change lifts a failure's cooldown)."""

    cooldown_s: float = 600.0
    running: set[str] = field(default_factory=set)
    # peer -> (when the run failed, the addresses it tried); at most MAX_FAILED.
    failed_at: dict[str, tuple[float, str]] = field(default_factory=dict)

    def begin(self, peer: str, now: float, addrs: str = "") -> bool:
        if peer in self.running:
            return False
        failed = self.failed_at.get(peer)
        if failed is not None and now - failed[0] < self.cooldown_s and failed[1] == addrs:
            return False
        self.failed_at.pop(peer, None)
        self.running.add(peer)
        return True

    def end(self, peer: str, outcome: str, now: float, addrs: str = "") -> None:
        self.running.discard(peer)
        if outcome == FAILED:
            self.failed_at.pop(peer, None)
            self.failed_at[peer] = (now, addrs)
            self.failed_at = {p: f for p, f in self.failed_at.items()
                              if now - f[0] < self.cooldown_s}
            while len(self.failed_at) > MAX_FAILED:
                del self.failed_at[next(iter(self.failed_at))]
        elif outcome == OK:
            self.failed_at.pop(peer, None)


def punch_addrs(raw: list[bytes]) -> list[multiaddr.Multiaddr]:
    """The peer's addresses worth punching to: IPv4 TCP, not relayed, deduplicated."""
    out: list[multiaddr.Multiaddr] = []
    for item in raw[:32]:
        try:
            addr = multiaddr.Multiaddr(str(multiaddr.Multiaddr(item)))  # parse now
            ip = addr.value_for_protocol("ip4")
            port = int(addr.value_for_protocol("tcp"))
        except Exception:
            continue
        if is_circuit(addr) or not ip or not 0 < port < 65536:
            continue
        bare = multiaddr.Multiaddr(f"/ip4/{ip}/tcp/{port}")
        if all(str(bare) != str(a) for a in out):
            out.append(bare)
    return out[:MAX_ADDRS]


class DCUtR:
    def __init__(self, host: Any, own_addrs: Callable[[], list[multiaddr.Multiaddr]],
                 source_for: Callable[[multiaddr.Multiaddr], tuple[str, int] | None],
                 on_direct: Callable[[ID, INetConn], None], cooldown_s: float,
                 initiator: Callable[[ID], bool]) -> None:
        self.host = host
        self.own_addrs = own_addrs
        self.source_for = source_for
        self.on_direct = on_direct
        self.initiator = initiator  # whether we are B for this peer, by peerconns' rule
        self.tracker = HolePunchTracker(cooldown_s)
        self._runs: dict[str, trio.CancelScope] = {}  # one per running peer
        self._serving: dict[str, int] = {}  # peers whose punch we answer as A now: streams
        self.counters = {"runs": 0, "attempts": 0, "upgraded": 0, "failed": 0,
                         "yielded": 0, "refused": 0, "served": 0}

    def status(self) -> dict[str, Any]:
        return {**self.counters, "running": len(self.tracker.running),
                "cooling_down": len(self.tracker.failed_at)}

    def has_direct(self, peer: ID) -> INetConn | None:
        for conn in self.host.get_network().get_connections(peer):
            if not is_relayed(conn) and not getattr(conn, "is_closed", False):
                return conn
        return None

    def _relayed(self, peer: ID) -> bool:
        return any(is_relayed(c) and not getattr(c, "is_closed", False)
                   for c in self.host.get_network().get_connections(peer))

    def _mine(self) -> list[bytes]:
        return [a.to_bytes() for a in punch_addrs([a.to_bytes() for a in self.own_addrs()])]

    def _addrs_key(self, peer: ID) -> str:
        try:
            theirs = [a.to_bytes() for a in self.host.get_peerstore().addrs(peer)]
        except Exception:
            theirs = []
        return " ".join(sorted(str(multiaddr.Multiaddr(a)) for a in self._mine())) + " | " + \
            " ".join(sorted(str(a) for a in punch_addrs(theirs)))

    # B: the peer that accepted the relayed connection --------------------------------
    async def upgrade(self, peer: ID) -> bool:
        # A punch we are serving as A (the peer started before it saw what we see)
        # goes first: if it works there is nothing left to do.
        while str(peer) in self._serving:
            await trio.sleep(0.1)
        if self.has_direct(peer) is not None:
            return True
        key = self._addrs_key(peer)
        if not self.tracker.begin(str(peer), trio.current_time(), key):
            return False
        self.counters["runs"] += 1
        outcome = FAILED
        with trio.CancelScope() as scope:
            self._runs[str(peer)] = scope
            try:
                outcome = await self._run(peer)
            finally:
                del self._runs[str(peer)]
        if scope.cancelled_caught:
            outcome = YIELDED
        self.tracker.end(str(peer), outcome, trio.current_time(), key)
        self.counters[{OK: "upgraded", FAILED: "failed", YIELDED: "yielded"}[outcome]] += 1
        if outcome == FAILED:
            log.info("dcutr.gave_up", peer_id=str(peer), attempts=ATTEMPTS,
                     cooldown_s=self.tracker.cooldown_s)
        return outcome == OK

    async def _run(self, peer: ID) -> str:
        for attempt in range(1, ATTEMPTS + 1):
            if self.has_direct(peer) is not None:
                return OK
            if not self._relayed(peer):
                return YIELDED  # the relayed connection is gone: nothing to upgrade
            if not self.initiator(peer):
                log.info("dcutr.not_initiator", peer_id=str(peer), attempt=attempt)
                return YIELDED
            self.counters["attempts"] += 1
            ok = False
            try:
                ok = await self._attempt(peer)
            except* Exception as group:  # the punch's nursery: see common/groups.py
                exc = first_error(group)
                log.info("dcutr.attempt_error", peer_id=str(peer), attempt=attempt,
                         error=str(exc) or type(exc).__name__)
            log.info("dcutr.attempt", peer_id=str(peer), attempt=attempt, ok=ok)
            if ok:
                return OK
            # A dial of ours or theirs from the same ports can hold the 4-tuple for a
            # moment: give it that moment before the next try.
            if attempt < ATTEMPTS:
                await trio.sleep(RETRY_PAUSE_S * attempt)
        return FAILED

    async def _attempt(self, peer: ID) -> bool:
        mine = self._mine()
        if not mine:
            raise ValueError("no observed address of our own to offer")
        stream = await self.host.new_stream(peer, [PROTOCOL])
        try:
            with trio.fail_after(STREAM_TIMEOUT_S):
                start = trio.current_time()
                await write_message(stream, pb.HolePunch(type=pb.HolePunch.CONNECT,
                                                         ObsAddrs=mine))
                reply = await read_message(stream, pb.HolePunch)
                rtt = trio.current_time() - start
                if reply.type != pb.HolePunch.CONNECT:
                    raise ValueError(f"expected CONNECT, got type {reply.type}")
                theirs = punch_addrs(list(reply.ObsAddrs))
                if not theirs:
                    raise ValueError("the peer offered no address to punch to")
                await write_message(stream, pb.HolePunch(type=pb.HolePunch.SYNC))
                # The timer starts as SYNC leaves: A dials when it arrives, half a
                # round trip from now. Closing the stream must not delay our dial.
                dial_at = trio.current_time() + rtt / 2
        finally:
            await close_quietly(stream)
        log.info("dcutr.sync", peer_id=str(peer), rtt_ms=round(rtt * 1000, 1),
                 addrs=" ".join(str(a) for a in theirs))
        await trio.sleep_until(dial_at)
        return await self._punch(peer, theirs, initiator=False)

    # A: the peer that dialled through the relay --------------------------------------
    async def handle(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        running = self._runs.get(str(peer))
        if running is not None:
            # Both sides started as B (their circuits crossed): one rule, both sides.
            if initiator_wins(str(self.host.get_id()), str(peer)):
                self.counters["refused"] += 1
                log.info("dcutr.conflict", peer_id=str(peer), kept="ours")
                await reset_quietly(stream)
                return
            log.info("dcutr.conflict", peer_id=str(peer), kept="theirs")
            running.cancel()
        # From here on a run of ours waits for this one (upgrade): marked before the
        # first await, so a run cannot start between the peer's CONNECT and SYNC and
        # be refused by the peer's rule while this punch is under way.
        self._serving[str(peer)] = self._serving.get(str(peer), 0) + 1
        try:
            await self._serve(stream, peer)
        finally:
            self._serving[str(peer)] -= 1
            if not self._serving[str(peer)]:
                del self._serving[str(peer)]

    async def _serve(self, stream: INetStream, peer: ID) -> None:
        try:
            if not is_relayed(stream.muxed_conn):
                raise ValueError("DCUtR over a direct connection")
            with trio.fail_after(STREAM_TIMEOUT_S):
                msg = await read_message(stream, pb.HolePunch)
                if msg.type != pb.HolePunch.CONNECT:
                    raise ValueError(f"expected CONNECT, got type {msg.type}")
                theirs = punch_addrs(list(msg.ObsAddrs))
                await write_message(stream, pb.HolePunch(type=pb.HolePunch.CONNECT,
                                                         ObsAddrs=self._mine()))
                sync = await read_message(stream, pb.HolePunch)
                if sync.type != pb.HolePunch.SYNC:
                    raise ValueError(f"expected SYNC, got type {sync.type}")
        except Exception as exc:
            log.info("dcutr.bad_stream", peer_id=str(peer), error=str(exc) or type(exc).__name__)
            await reset_quietly(stream)
            return
        self.counters["served"] += 1
        await close_quietly(stream)
        if theirs:
            await self._punch(peer, theirs, initiator=True)

    # both --------------------------------------------------------------------------------
    async def _punch(self, peer: ID, addrs: list[multiaddr.Multiaddr], initiator: bool) -> bool:
        """Dial every address at once from the listening port; the first connection
        wins and the other dials are cancelled."""
        network = self.host.get_network()
        won: list[INetConn] = []

        async def one(addr: multiaddr.Multiaddr, scope: trio.CancelScope) -> None:
            source = self.source_for(addr)
            try:
                if initiator:
                    conn = await dial_addr_once(network, addr, peer, source)
                else:
                    conn = await network.dial_addr_as_responder(addr, peer, source)
            except Exception as exc:
                log.debug("dcutr.dial_failed", addr=str(addr), error=str(exc))
                return
            except BaseExceptionGroup as group:
                # Cancelled as another address won, while this dial failed: without
                # this the failure would come out of the punch, and a punch that won
                # would end in an error.
                handle_beside_cancel(group, lambda exc: log.debug(
                    "dcutr.dial_failed", addr=str(addr), error=str(exc)))
            won.append(conn)
            scope.cancel()

        with trio.move_on_after(PUNCH_TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                for addr in addrs:
                    nursery.start_soon(one, addr, nursery.cancel_scope)
        conn = won[0] if won else self.has_direct(peer)
        if conn is None:
            log.info("dcutr.punch_failed", peer_id=str(peer), addrs=len(addrs),
                     role="A" if initiator else "B")
            return False
        log.info("dcutr.direct", peer_id=str(peer), role="A" if initiator else "B")
        self.on_direct(peer, conn)
        return True
