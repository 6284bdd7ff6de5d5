"""Circuit Relay v2 (`/libp2p/circuit/relay/0.2.0/{hop,stop}`): both roles.

As a relay (transport.relay_service = true) the node accepts reservations and splices
circuits between a reserved peer and whoever dials it through us. As a client, a private
node keeps reservations on the relays it knows, advertises
`/<relay addr>/p2p/<relay>/p2p-circuit/p2p/<self>`, accepts circuits the relay opens
to it (STOP), and dials other private nodes through their relays.

Why our own implementation rather than py-libp2p's `relay.circuit_v2`: its relay
signs reservation vouchers with the host's private key (which only our keystore holds),
and its limits were reported as not enforced. Here the limits live in one pure object,
`ReservationTable`, tested without sockets: reservation count and lifetime, circuits
per peer and in total, and each circuit's duration and bytes per direction, enforced
by the splicing loop (`_splice`), which resets both streams when either runs out.

A relayed connection is a Yamux stream on the connection to the relay, secured with
Noise and multiplexed again end to end, then handed to the swarm like any connection;
`RELAYED` marks it so that AutoNAT refuses to dial back over it and DCUtR tries to
replace it. Vouchers are optional in the spec and not issued (the keystore does not
sign in the `libp2p-relay-rsvp` domain).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p.abc import INetConn, INetStream
from libp2p.connection_types import ConnectionType
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb import circuit_pb2 as pb

from p2pm.common.groups import handle_beside_cancel
from p2pm.common.log import get_logger

from .pbio import close_quietly as _close
from .pbio import read_message as _read
from .pbio import reset_quietly as _reset
from .pbio import write_message as _write
from .reuseport import is_circuit

log = get_logger("transport")

HOP_PROTOCOL = "/libp2p/circuit/relay/0.2.0/hop"
STOP_PROTOCOL = "/libp2p/circuit/relay/0.2.0/stop"
HANDSHAKE_TIMEOUT_S = 10.0
SPLICE_CHUNK = 16 * 1024

# The set of muxed connections that run over a relay (see is_relayed).
_RELAYED: weakref.WeakSet[Any] = weakref.WeakSet()


def is_relayed(conn: INetConn | Any) -> bool:
    muxed = getattr(conn, "muxed_conn", conn)
    if muxed in _RELAYED:
        return True
    try:
        return muxed.get_connection_type() == ConnectionType.RELAYED
    except Exception:
        return False


class RelayRefused(Exception):
    """A relay request we refuse; `status` is the circuit v2 status code to send."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# -- the limits (pure) ---------------------------------------------------------------


@dataclass(frozen=True)
class RelayLimits:
    max_reservations: int = 128
    reservation_ttl_s: int = 3600
    max_circuits: int = 64
    max_circuits_per_peer: int = 4
    circuit_duration_s: int = 120
    circuit_data_bytes: int = 1 << 20  # per direction

    @classmethod
    def from_settings(cls, cfg: Any) -> RelayLimits:
        """Limits from the checked [transport] relay_* settings (settings.py)."""
        return cls(**{name: getattr(cfg, f"relay_{name}")
                      for name in cls.__dataclass_fields__})


@dataclass
class Circuit:
    src: ID
    dst: ID
    deadline: float
    data_limit: int


@dataclass
class ReservationTable:
    """Who holds a reservation until when, and which circuits are open. Time comes in
    as `now`; refusals are RelayRefused with the status to answer."""

    limits: RelayLimits
    reservations: dict[ID, float] = field(default_factory=dict)
    circuits: list[Circuit] = field(default_factory=list)
    refused: int = 0

    def expire(self, now: float) -> None:
        self.reservations = {p: t for p, t in self.reservations.items() if t > now}

    def reserve(self, peer: ID, now: float) -> int:
        """Grant or renew; returns the expiry (unix seconds, as sent on the wire)."""
        self.expire(now)
        if peer not in self.reservations and \
                len(self.reservations) >= self.limits.max_reservations:
            self.refused += 1
            raise RelayRefused(pb.RESERVATION_REFUSED, "reservation limit reached")
        expires = int(now + self.limits.reservation_ttl_s)
        self.reservations[peer] = expires
        return expires

    def has_reservation(self, peer: ID, now: float) -> bool:
        return self.reservations.get(peer, 0) > now

    def open_circuit(self, src: ID, dst: ID, now: float) -> Circuit:
        if not self.has_reservation(dst, now):
            self.refused += 1
            raise RelayRefused(pb.NO_RESERVATION, f"{dst} has no reservation here")
        if src == dst:
            self.refused += 1
            raise RelayRefused(pb.PERMISSION_DENIED, "a circuit to oneself")
        if len(self.circuits) >= self.limits.max_circuits:
            self.refused += 1
            raise RelayRefused(pb.RESOURCE_LIMIT_EXCEEDED, "circuit limit reached")
        for peer in (src, dst):
            if sum(peer in (c.src, c.dst) for c in self.circuits) \
                    >= self.limits.max_circuits_per_peer:
                self.refused += 1
                raise RelayRefused(pb.RESOURCE_LIMIT_EXCEEDED,
                                   f"circuit limit per peer reached for {peer}")
        circuit = Circuit(src, dst, now + self.limits.circuit_duration_s,
                          self.limits.circuit_data_bytes)
        self.circuits.append(circuit)
        return circuit

    def close_circuit(self, circuit: Circuit) -> None:
        if circuit in self.circuits:
            self.circuits.remove(circuit)


# -- wire helpers --------------------------------------------------------------------


def circuit_addr(relay_addr: multiaddr.Multiaddr | str, relay: ID) -> multiaddr.Multiaddr:
    """`<relay transport addr>/p2p/<relay>/p2p-circuit` (the caller appends /p2p/self)."""
    text = str(relay_addr).split("/p2p/")[0]
    return multiaddr.Multiaddr(f"{text}/p2p/{relay}/p2p-circuit")


def relay_of(addr: multiaddr.Multiaddr | str) -> tuple[ID, multiaddr.Multiaddr] | None:
    """(relay peer id, relay transport addr) of a circuit address."""
    text = str(addr)
    if "/p2p-circuit" not in text:
        return None
    head = text.split("/p2p-circuit")[0]
    if "/p2p/" not in head:
        return None
    transport, relay = head.rsplit("/p2p/", 1)
    try:
        return ID.from_base58(relay), multiaddr.Multiaddr(transport) if transport else None
    except Exception:
        return None


# -- the relay (hop) -------------------------------------------------------------------


class RelayService:
    """Serves HOP: RESERVE and CONNECT, with the table's limits."""

    def __init__(self, host: Any, limits: RelayLimits,
                 public_addrs: Callable[[], list[multiaddr.Multiaddr]]) -> None:
        self.host = host
        self.table = ReservationTable(limits)
        self.public_addrs = public_addrs
        self.counters = {"reservations_granted": 0, "circuits_opened": 0,
                         "circuits_ended_by_limit": 0,
                         "bytes_relayed": 0, "bad_requests": 0}

    def status(self) -> dict[str, Any]:
        self.table.expire(time.time())
        return {"reservations": len(self.table.reservations),
                "circuits": len(self.table.circuits), "refused": self.table.refused,
                **self.counters}

    async def handle_hop(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                msg = await _read(stream, pb.HopMessage)
            if is_relayed(stream.muxed_conn):
                raise RelayRefused(pb.PERMISSION_DENIED, "no relaying over a relay")
            if msg.type == pb.HopMessage.RESERVE:
                await self._reserve(stream, peer)
            elif msg.type == pb.HopMessage.CONNECT:
                await self._connect(stream, peer, msg)
                return  # _connect owns the stream from here
            else:
                raise RelayRefused(pb.UNEXPECTED_MESSAGE, f"hop message type {msg.type}")
        except Exception as exc:
            await self._status(stream, self._refused(peer, exc))
        except BaseExceptionGroup as group:
            # A circuit's stream (opened through the swarm's nurseries) failed as the
            # relay stopped: counted and logged, and the Cancelled goes on up instead
            # of the whole group escaping into the host (see common/groups.py). The
            # close is shielded, so it still happens, as on the other paths.
            await _close(stream)
            handle_beside_cancel(group, lambda exc: self._refused(peer, exc))
        await _close(stream)

    def _refused(self, peer: ID, exc: Exception) -> int:
        """Count and log why a hop request failed; the status that answers it."""
        if isinstance(exc, RelayRefused):
            log.info("relay.refused", peer_id=str(peer), status=exc.status, reason=exc.reason)
            return exc.status
        self.counters["bad_requests"] += 1
        log.info("relay.bad_request", peer_id=str(peer), error=str(exc) or type(exc).__name__)
        return pb.MALFORMED_MESSAGE

    async def _status(self, stream: INetStream, status: int) -> None:
        with trio.move_on_after(2):
            try:
                await _write(stream, pb.HopMessage(type=pb.HopMessage.STATUS, status=status))
            except Exception:
                pass

    def _limit(self) -> Any:
        lim = self.table.limits
        return pb.Limit(duration=lim.circuit_duration_s, data=lim.circuit_data_bytes)

    async def _reserve(self, stream: INetStream, peer: ID) -> None:
        expires = self.table.reserve(peer, time.time())
        me = self.host.get_id()
        addrs = [multiaddr.Multiaddr(f"{str(a).split('/p2p/')[0]}/p2p/{me}").to_bytes()
                 for a in self.public_addrs()]
        await _write(stream, pb.HopMessage(
            type=pb.HopMessage.STATUS, status=pb.OK, limit=self._limit(),
            reservation=pb.Reservation(expire=expires, addrs=addrs)))
        self.counters["reservations_granted"] += 1
        log.info("relay.reserved", peer_id=str(peer), expires=expires)

    async def _connect(self, src_stream: INetStream, src: ID, msg: Any) -> None:
        try:
            dst = ID(msg.peer.id)
        except Exception:
            raise RelayRefused(pb.MALFORMED_MESSAGE, "CONNECT without a valid peer") from None
        circuit = self.table.open_circuit(src, dst, time.time())
        dst_stream = None
        try:
            try:
                with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                    dst_stream = await self.host.new_stream(dst, [STOP_PROTOCOL])
                    await _write(dst_stream, pb.StopMessage(
                        type=pb.StopMessage.CONNECT, peer=pb.PeerId(id=src.to_bytes()),
                        limit=self._limit()))
                    reply = await _read(dst_stream, pb.StopMessage)
            except Exception as exc:
                raise RelayRefused(pb.CONNECTION_FAILED,
                                   f"cannot reach {dst}: {exc or type(exc).__name__}") from None
            if reply.type != pb.StopMessage.STATUS or reply.status != pb.OK:
                raise RelayRefused(pb.CONNECTION_FAILED, f"{dst} refused (status "
                                                         f"{reply.status})")
            await _write(src_stream, pb.HopMessage(type=pb.HopMessage.STATUS, status=pb.OK,
                                                   limit=self._limit()))
            self.counters["circuits_opened"] += 1
            log.info("relay.circuit_open", src=str(src), dst=str(dst))
            ended_by_limit = await _splice(src_stream, dst_stream, circuit, self.counters,
                                           time.time())
            if ended_by_limit:
                self.counters["circuits_ended_by_limit"] += 1
            log.info("relay.circuit_closed", src=str(src), dst=str(dst),
                     limit_reached=ended_by_limit)
        except RelayRefused as exc:
            log.info("relay.refused", peer_id=str(src), status=exc.status, reason=exc.reason)
            await self._status(src_stream, exc.status)
            await _close(src_stream)
        finally:
            self.table.close_circuit(circuit)
            await _reset(src_stream)
            await _reset(dst_stream)


async def _splice(a: INetStream, b: INetStream, circuit: Circuit,
                  counters: dict[str, int], now: float) -> bool:
    """Copy both ways until either side ends, the duration is over, or a direction
    used up its bytes; True if a limit ended it."""
    limited = False

    async def pump(src: INetStream, dst: INetStream, scope: trio.CancelScope) -> None:
        nonlocal limited
        budget = circuit.data_limit
        try:
            while True:
                data = await src.read(min(SPLICE_CHUNK, budget) or 1)
                if not data:
                    break
                if len(data) > budget:
                    limited = True
                    break
                budget -= len(data)
                counters["bytes_relayed"] += len(data)
                await dst.write(data)
                if budget == 0:
                    limited = True
                    break
        except Exception:
            pass
        scope.cancel()

    remaining = max(0.0, circuit.deadline - now)
    with trio.move_on_after(remaining) as timer:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, a, b, nursery.cancel_scope)
            nursery.start_soon(pump, b, a, nursery.cancel_scope)
    return limited or timer.cancelled_caught


# -- the client ----------------------------------------------------------------------


@dataclass
class Reservation:
    relay: ID
    relay_addr: multiaddr.Multiaddr
    expires: float
    renewed_at: float


class RelayClient:
    """Reserves slots, accepts circuits (STOP) and dials through relays."""

    def __init__(self, host: Any, on_relayed_inbound: Callable[[ID, INetConn], None],
                 crossing: Callable[[ID], bool] = lambda _src: False) -> None:
        self.host = host
        self.reservations: dict[ID, Reservation] = {}
        self.on_relayed_inbound = on_relayed_inbound
        # Whether a circuit from this peer would cross one we are dialling to it, and
        # ours is the one to keep (see NatManager.crossing): refused, so it never forms.
        self.crossing = crossing
        self.counters = {"reserve_ok": 0, "reserve_failed": 0, "circuits_in": 0,
                         "circuits_out": 0, "stop_refused": 0, "crossing_refused": 0}

    def status(self) -> dict[str, Any]:
        now = time.time()
        return {"reservations": [
            {"relay": str(r.relay), "expires_in_s": round(r.expires - now)}
            for r in self.reservations.values() if r.expires > now], **self.counters}

    def advertised(self) -> list[multiaddr.Multiaddr]:
        now = time.time()
        return [circuit_addr(r.relay_addr, r.relay) for r in self.reservations.values()
                if r.expires > now]

    async def reserve(self, relay: ID, relay_addr: multiaddr.Multiaddr) -> Reservation:
        """One RESERVE on an existing connection to the relay."""
        stream = await self.host.new_stream(relay, [HOP_PROTOCOL])
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                await _write(stream, pb.HopMessage(type=pb.HopMessage.RESERVE))
                reply = await _read(stream, pb.HopMessage)
        finally:
            await _close(stream)
        if reply.type != pb.HopMessage.STATUS or reply.status != pb.OK:
            self.counters["reserve_failed"] += 1
            raise RelayRefused(reply.status, f"relay {relay} refused the reservation "
                                             f"(status {reply.status})")
        now = time.time()
        expires = float(reply.reservation.expire) if reply.HasField("reservation") else 0.0
        if expires <= now:
            self.counters["reserve_failed"] += 1
            raise RelayRefused(pb.MALFORMED_MESSAGE, "reservation already expired")
        res = Reservation(relay, relay_addr, expires, now)
        self.reservations[relay] = res
        self.counters["reserve_ok"] += 1
        log.info("relay.reservation", relay=str(relay), expires_in_s=round(expires - now))
        return res

    def drop(self, relay: ID) -> None:
        if self.reservations.pop(relay, None) is not None:
            log.info("relay.reservation_lost", relay=str(relay))

    async def handle_stop(self, stream: INetStream) -> None:
        relay = stream.muxed_conn.peer_id
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                msg = await _read(stream, pb.StopMessage)
            if msg.type != pb.StopMessage.CONNECT:
                raise RelayRefused(pb.UNEXPECTED_MESSAGE, "expected CONNECT")
            if relay not in self.reservations or is_relayed(stream.muxed_conn):
                raise RelayRefused(pb.PERMISSION_DENIED, "no reservation with this relay")
            src = ID(msg.peer.id)
            if self.crossing(src):
                self.counters["crossing_refused"] += 1
                raise RelayRefused(pb.CONNECTION_FAILED, "our own circuit to this peer "
                                                         "is under way")
            await _write(stream, pb.StopMessage(type=pb.StopMessage.STATUS, status=pb.OK))
        except Exception as exc:
            self.counters["stop_refused"] += 1
            status = exc.status if isinstance(exc, RelayRefused) else pb.MALFORMED_MESSAGE
            log.info("relay.stop_refused", relay=str(relay), error=str(exc))
            with trio.move_on_after(2):
                try:
                    await _write(stream, pb.StopMessage(type=pb.StopMessage.STATUS,
                                                        status=status))
                except Exception:
                    pass
            await _close(stream)
            return
        addr = circuit_addr(self.reservations[relay].relay_addr, relay)
        raw = RawConnection(stream, False, _relayed_type(), [addr])
        network = self.host.get_network()
        try:
            muxed = await network.upgrade_inbound_raw_conn(raw, addr)
        except Exception as exc:
            log.info("relay.inbound_upgrade_failed", peer_id=str(src), error=str(exc))
            await _reset(stream)
            return
        except BaseExceptionGroup as group:  # the swarm's nurseries, as the host stops
            await _reset(stream)  # shielded: still happens, as on the path above
            handle_beside_cancel(group, lambda exc: log.info(
                "relay.inbound_upgrade_failed", peer_id=str(src), error=str(exc)))
        _RELAYED.add(muxed)
        self.counters["circuits_in"] += 1
        log.info("relay.inbound_circuit", peer_id=str(muxed.peer_id), relay=str(relay))
        conns = [c for c in network.get_connections(muxed.peer_id) if c.muxed_conn is muxed]
        if conns:
            self.on_relayed_inbound(muxed.peer_id, conns[0])
        # The stream handler's task is this connection's lifetime: returning early
        # would let the host close the stream under it.
        closed = getattr(muxed, "event_closed", None)
        if closed is not None:
            await closed.wait()
        else:
            while not muxed.is_closed:
                await trio.sleep(1.0)

    async def dial(self, peer: ID, relay: ID) -> INetConn:
        """Open a circuit to `peer` through `relay` (connected already) and upgrade it."""
        stream = await self.host.new_stream(relay, [HOP_PROTOCOL])
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                await _write(stream, pb.HopMessage(type=pb.HopMessage.CONNECT,
                                                   peer=pb.PeerId(id=peer.to_bytes())))
                reply = await _read(stream, pb.HopMessage)
            if reply.type != pb.HopMessage.STATUS or reply.status != pb.OK:
                raise RelayRefused(reply.status, f"relay {relay} could not connect us to "
                                                 f"{peer} (status {reply.status})")
            addr = multiaddr.Multiaddr(f"/p2p/{relay}/p2p-circuit/p2p/{peer}")
            raw = RawConnection(stream, True, _relayed_type(), [addr])
            conn = await self.host.get_network().upgrade_outbound_raw_conn(raw, peer)
        except BaseException:
            await _reset(stream)
            raise
        _RELAYED.add(conn.muxed_conn)
        self.counters["circuits_out"] += 1
        log.info("relay.outbound_circuit", peer_id=str(peer), relay=str(relay))
        return conn


def _relayed_type() -> ConnectionType:
    return ConnectionType.RELAYED


def split_addrs(addrs: list[multiaddr.Multiaddr]) -> tuple[list[multiaddr.Multiaddr],
                                                           list[multiaddr.Multiaddr]]:
    """(direct addresses, circuit addresses)."""
    direct = [a for a in addrs if not is_circuit(a)]
    return direct, [a for a in addrs if is_circuit(a)]
