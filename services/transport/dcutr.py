"""DCUtR (`/libp2p/dcutr`): turn a relayed connection into a direct one by hole punching.

Roles follow the spec: B, the peer that accepted the relayed connection, opens the
stream and sends CONNECT with its observed addresses, timing the round trip; A answers
CONNECT with its own; B sends SYNC and waits half the round trip; A dials B's addresses
as soon as SYNC arrives, B dials A's when its timer expires. Both dial from their
listening port (reuseport.py), so the two SYNs leave through the NATs' existing
mappings and cross: a TCP simultaneous open. On that one connection A is the Noise
initiator and B the responder (`dial_addr_as_responder`). B makes up to 3 attempts
per relayed connection.

Retries: `HolePunchTracker` holds who is being punched and who failed. py-libp2p's
DCUtR counts failures per peer and never forgets them while the peer stays connected
(a peer that failed 3 times is given up for good). Here a failed run blocks new runs
for `cooldown_s` only, and a success, or the peer disconnecting, clears the record.

After the direct connection forms, the relayed one is closed after a short grace, so
new streams go direct and the relay's circuit budget is freed.
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

from p2pm.common.log import get_logger

from .host import dial_addr_once
from .pbio import close_quietly, read_message, reset_quietly, write_message
from .relay import is_relayed
from .reuseport import is_circuit

log = get_logger("transport")

PROTOCOL = "/libp2p/dcutr"
MAX_ADDRS = 8
ATTEMPTS = 3
PUNCH_TIMEOUT_S = 6.0
STREAM_TIMEOUT_S = 10.0
RELAY_GRACE_S = 1.0
RETRY_PAUSE_S = 1.0


@dataclass
class HolePunchTracker:
    """Whether a hole-punch run may start for a peer. Time comes in as `now`."""

    cooldown_s: float = 600.0
    running: set[str] = field(default_factory=set)
    failed_at: dict[str, float] = field(default_factory=dict)

    def begin(self, peer: str, now: float) -> bool:
        if peer in self.running:
            return False
        failed = self.failed_at.get(peer)
        if failed is not None and now - failed < self.cooldown_s:
            return False
        self.failed_at.pop(peer, None)
        self.running.add(peer)
        return True

    def end(self, peer: str, ok: bool, now: float) -> None:
        self.running.discard(peer)
        if ok:
            self.failed_at.pop(peer, None)
        else:
            self.failed_at[peer] = now

    def forget(self, peer: str) -> None:
        """The peer disconnected: a new relayed connection starts afresh."""
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
                 on_direct: Callable[[ID, INetConn], None], cooldown_s: float) -> None:
        self.host = host
        self.own_addrs = own_addrs
        self.source_for = source_for
        self.on_direct = on_direct
        self.tracker = HolePunchTracker(cooldown_s)
        self.counters = {"runs": 0, "attempts": 0, "upgraded": 0, "failed": 0,
                         "served": 0}

    def status(self) -> dict[str, Any]:
        return {**self.counters, "running": len(self.tracker.running),
                "cooling_down": len(self.tracker.failed_at)}

    def has_direct(self, peer: ID) -> INetConn | None:
        for conn in self.host.get_network().get_connections(peer):
            if not is_relayed(conn) and not getattr(conn, "is_closed", False):
                return conn
        return None

    def _mine(self) -> list[bytes]:
        return [a.to_bytes() for a in punch_addrs([a.to_bytes() for a in self.own_addrs()])]

    # B: the peer that accepted the relayed connection --------------------------------
    async def upgrade(self, peer: ID) -> bool:
        if not self.tracker.begin(str(peer), trio.current_time()):
            return False
        self.counters["runs"] += 1
        ok = False
        try:
            for attempt in range(1, ATTEMPTS + 1):
                if self.has_direct(peer) is not None:
                    ok = True
                    break
                if not self.host.get_network().get_connections(peer):
                    break  # the relayed connection is gone: nothing to upgrade
                self.counters["attempts"] += 1
                try:
                    ok = await self._attempt(peer)
                except Exception as exc:
                    log.info("dcutr.attempt_error", peer_id=str(peer), attempt=attempt,
                             error=str(exc) or type(exc).__name__)
                log.info("dcutr.attempt", peer_id=str(peer), attempt=attempt, ok=ok)
                if ok:
                    break
                # A dial of ours or theirs from the same ports (the dht's, say) can hold
                # the 4-tuple for a moment: give it that moment before the next try.
                if attempt < ATTEMPTS:
                    await trio.sleep(RETRY_PAUSE_S * attempt)
        finally:
            self.tracker.end(str(peer), ok, trio.current_time())
            self.counters["upgraded" if ok else "failed"] += 1
        return ok

    async def _attempt(self, peer: ID) -> bool:
        mine = self._mine()
        if not mine:
            raise ValueError("no observed address of our own to offer")
        stream = await self.host.new_stream(peer, [PROTOCOL])
        try:
            with trio.fail_after(STREAM_TIMEOUT_S):
                start = trio.current_time()
                await write_message(stream, pb.HolePunch(type=pb.HolePunch.CONNECT, ObsAddrs=mine))
                reply = await read_message(stream, pb.HolePunch)
                rtt = trio.current_time() - start
                if reply.type != pb.HolePunch.CONNECT:
                    raise ValueError(f"expected CONNECT, got type {reply.type}")
                theirs = punch_addrs(list(reply.ObsAddrs))
                if not theirs:
                    raise ValueError("the peer offered no address to punch to")
                await write_message(stream, pb.HolePunch(type=pb.HolePunch.SYNC))
        finally:
            await close_quietly(stream)
        await trio.sleep(rtt / 2)
        return await self._punch(peer, theirs, initiator=False)

    # A: the peer that dialled through the relay --------------------------------------
    async def handle(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
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
            won.append(conn)
            scope.cancel()

        with trio.move_on_after(PUNCH_TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                for addr in addrs:
                    nursery.start_soon(one, addr, nursery.cancel_scope)
        conn = won[0] if won else self.has_direct(peer)
        if conn is None:
            log.info("dcutr.punch_failed", peer_id=str(peer), addrs=len(addrs))
            return False
        log.info("dcutr.direct", peer_id=str(peer), role="A" if initiator else "B")
        self.on_direct(peer, conn)
        return True

    async def close_relayed_later(self, peer: ID) -> None:
        """Once a direct connection is up, the relayed ones go after a grace period
        (streams opened on them meanwhile get that long to finish)."""
        await trio.sleep(RELAY_GRACE_S)
        if self.has_direct(peer) is None:
            return
        for conn in list(self.host.get_network().get_connections(peer)):
            if is_relayed(conn):
                with trio.move_on_after(5):
                    try:
                        await conn.close()
                    except Exception:
                        pass
