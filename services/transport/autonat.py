"""AutoNAT v1 (`/libp2p/autonat/1.0.0`): am I reachable from outside? Both roles.

Client: every so often the node asks a few connected peers to dial it back at its
addresses. One successful dial-back proves reachability (the server really connected
and completed Noise with our key); failures make the node private. Confidence (0..3)
decides how many contrary answers it takes to flip an established verdict, as in
go-libp2p, so one flaky server does not toggle the state.

Server: answers DIAL requests with limits the spec asks for. It dials only addresses
on the IP it observes the requester at (so nobody can aim us at a third party), never
over a relayed connection (the observed IP there is the relay's), at most
`autonat_max_per_peer` requests per peer and `autonat_max_total` in all per minute. A
dial-back is a fresh TCP connection from an ephemeral port plus a Noise handshake
that must authenticate the requester's peer id; it is then closed, never handed to
the swarm.

The pure parts (`ReachabilityTracker`, `DialBackLimiter`, `dialback_addrs`) take time
as an argument and are tested without sockets.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p.abc import INetStream
from libp2p.host.autonat.pb import autonat_pb2 as pb
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID

from p2pm.common.groups import handle_beside_cancel
from p2pm.common.log import get_logger

from .pbio import close_quietly, read_message, write_message
from .relay import is_relayed
from .reuseport import is_circuit

log = get_logger("transport")

PROTOCOL = "/libp2p/autonat/1.0.0"
MAX_ADDRS = 16
WINDOW_S = 60.0
MAX_CONFIDENCE = 3

UNKNOWN, PUBLIC, PRIVATE = "unknown", "public", "private"


# -- pure parts ----------------------------------------------------------------------


@dataclass
class ReachabilityTracker:
    """Turns dial-back answers into unknown/public/private."""

    state: str = UNKNOWN
    confidence: int = 0

    def record(self, reachable: bool) -> bool:
        """One answer (True: the server reached us); True if the state changed."""
        previous = self.state
        if reachable:
            if self.state == PUBLIC:
                self.confidence = min(self.confidence + 1, MAX_CONFIDENCE)
            else:
                self.state, self.confidence = PUBLIC, 0
        elif self.state == PUBLIC and self.confidence > 0:
            self.confidence -= 1
        elif self.state == PRIVATE:
            self.confidence = min(self.confidence + 1, MAX_CONFIDENCE)
        else:
            self.state, self.confidence = PRIVATE, 0
        return self.state != previous


@dataclass
class DialBackLimiter:
    """Requests allowed per peer and in total within a sliding window."""

    max_per_peer: int
    max_total: int
    window_s: float = WINDOW_S
    _all: deque[float] = field(default_factory=deque)
    _by_peer: dict[str, deque[float]] = field(default_factory=dict)

    def allow(self, peer: str, now: float) -> bool:
        horizon = now - self.window_s
        while self._all and self._all[0] <= horizon:
            self._all.popleft()
        for key in list(self._by_peer):
            q = self._by_peer[key]
            while q and q[0] <= horizon:
                q.popleft()
            if not q:
                del self._by_peer[key]
        mine = self._by_peer.get(peer)
        if len(self._all) >= self.max_total or (mine and len(mine) >= self.max_per_peer):
            return False
        self._all.append(now)
        self._by_peer.setdefault(peer, deque()).append(now)
        return True


def _ip_port(addr: multiaddr.Multiaddr) -> tuple[str, int] | None:
    try:
        return addr.value_for_protocol("ip4"), int(addr.value_for_protocol("tcp"))
    except Exception:
        return None


def dialback_addrs(requested: list[bytes], observed_ip: str) -> list[multiaddr.Multiaddr]:
    """The requested addresses a server may dial: TCP on the requester's observed IPv4
    address, not relayed, without duplicates, at most MAX_ADDRS."""
    out: list[multiaddr.Multiaddr] = []
    for raw in requested[:64]:
        try:
            addr = multiaddr.Multiaddr(str(multiaddr.Multiaddr(raw)))  # parse now, not lazily
        except Exception:
            continue
        if is_circuit(addr):
            continue
        ip_port = _ip_port(addr)
        if ip_port is None or ip_port[0] != observed_ip or not 0 < ip_port[1] < 65536:
            continue
        bare = multiaddr.Multiaddr(f"/ip4/{ip_port[0]}/tcp/{ip_port[1]}")
        if all(str(bare) != str(a) for a in out):
            out.append(bare)
        if len(out) >= MAX_ADDRS:
            break
    return out


# -- the service -----------------------------------------------------------------------


class AutoNAT:
    """Server handler plus client probes, around one host."""

    def __init__(self, host: Any, *, serve: bool, max_per_peer: int, max_total: int,
                 dial_timeout_s: float,
                 candidate_addrs: Callable[[], list[multiaddr.Multiaddr]]) -> None:
        self.host = host
        self.serve = serve
        self.limiter = DialBackLimiter(max_per_peer, max_total)
        self.dial_timeout_s = dial_timeout_s
        self.candidate_addrs = candidate_addrs
        self.tracker = ReachabilityTracker()
        self.confirmed: list[str] = []  # our addresses a server reached
        self.counters = {"served_ok": 0, "served_dial_error": 0, "served_refused": 0,
                         "served_bad": 0, "probes": 0, "probe_ok": 0, "probe_failed": 0,
                         "probe_no_answer": 0}

    def status(self) -> dict[str, Any]:
        return {"reachability": self.tracker.state, "confidence": self.tracker.confidence,
                "confirmed_addrs": list(self.confirmed), **self.counters}

    # server --------------------------------------------------------------------------
    async def handle(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        try:
            with trio.fail_after(10):
                msg = await read_message(stream, pb.Message)
                status, text, addr = await self._answer(stream, peer, msg)
                response = pb.Message.DialResponse(status=status, statusText=text)
                if addr is not None:
                    response.addr = addr.to_bytes()
                await write_message(stream, pb.Message(type=pb.Message.DIAL_RESPONSE,
                                                dialResponse=response))
        except Exception as exc:
            self.counters["served_bad"] += 1
            log.info("autonat.bad_request", peer_id=str(peer), error=str(exc) or type(exc).__name__)
        finally:
            await close_quietly(stream)

    async def _answer(self, stream: INetStream, peer: ID,
                      msg: Any) -> tuple[int, str, multiaddr.Multiaddr | None]:
        if msg.type != pb.Message.DIAL or not msg.HasField("dial"):
            self.counters["served_bad"] += 1
            return pb.Message.E_BAD_REQUEST, "expected DIAL", None
        if msg.dial.peer.HasField("id") and msg.dial.peer.id != peer.to_bytes():
            self.counters["served_bad"] += 1
            return pb.Message.E_BAD_REQUEST, "peer id does not match the connection", None
        if not self.serve:
            self.counters["served_refused"] += 1
            return pb.Message.E_DIAL_REFUSED, "dial-backs are off here", None
        if is_relayed(stream.muxed_conn):
            self.counters["served_refused"] += 1
            return pb.Message.E_DIAL_REFUSED, "no dial-back over a relayed connection", None
        observed = _observed_ip(stream)
        if observed is None:
            self.counters["served_refused"] += 1
            return pb.Message.E_DIAL_REFUSED, "cannot tell the requester's address", None
        if not self.limiter.allow(str(peer), time.monotonic()):
            self.counters["served_refused"] += 1
            log.info("autonat.throttled", peer_id=str(peer))
            return pb.Message.E_DIAL_REFUSED, "too many requests", None
        addrs = dialback_addrs(list(msg.dial.peer.addrs), observed)
        if not addrs:
            self.counters["served_dial_error"] += 1
            return pb.Message.E_DIAL_ERROR, "no dialable address on the observed IP", None
        for addr in addrs:
            if await self._dial_back(peer, addr):
                self.counters["served_ok"] += 1
                log.info("autonat.dialback_ok", peer_id=str(peer), addr=str(addr))
                return pb.Message.OK, "", addr
        self.counters["served_dial_error"] += 1
        log.info("autonat.dialback_failed", peer_id=str(peer), tried=len(addrs))
        return pb.Message.E_DIAL_ERROR, "dial-back failed", None

    async def _dial_back(self, peer: ID, addr: multiaddr.Multiaddr) -> bool:
        ip_port = _ip_port(addr)
        assert ip_port is not None
        upgrader = self.host.get_network().upgrader
        with trio.move_on_after(self.dial_timeout_s):
            try:
                tcp = await trio.open_tcp_stream(*ip_port)
            except OSError:
                return False
            raw = RawConnection(TrioTCPStream(tcp), True)
            try:
                secured = await upgrader.upgrade_security(raw, True, peer)
                await secured.close()
                return True
            except Exception:
                return False
            finally:
                with trio.CancelScope(shield=True):
                    await tcp.aclose()
        return False

    # client --------------------------------------------------------------------------
    def _no_answer(self, peer: ID, exc: Exception) -> None:
        self.counters["probe_no_answer"] += 1
        log.info("autonat.no_answer", peer_id=str(peer), error=str(exc) or type(exc).__name__)

    def servers(self) -> list[ID]:
        """Connected peers that speak AutoNAT over a direct connection."""
        network = self.host.get_network()
        store = self.host.get_peerstore()
        out = []
        for peer in self.host.get_connected_peers():
            conns = network.get_connections(peer)
            if not conns or all(is_relayed(c) for c in conns):
                continue
            try:
                if PROTOCOL in [str(p) for p in store.get_protocols(peer)]:
                    out.append(peer)
            except Exception:
                continue
        return out

    async def probe(self, peer: ID) -> bool | None:
        """Ask `peer` to dial us back: True reachable, False not, None no verdict."""
        self.counters["probes"] += 1
        addrs = [a.to_bytes() for a in self.candidate_addrs() if not is_circuit(a)]
        request = pb.Message(type=pb.Message.DIAL, dial=pb.Message.Dial(
            peer=pb.Message.PeerInfo(id=self.host.get_id().to_bytes(), addrs=addrs)))
        try:
            with trio.fail_after(self.dial_timeout_s * 3 + 5):
                stream = await self.host.new_stream(peer, [PROTOCOL])
                try:
                    await write_message(stream, request)
                    reply = await read_message(stream, pb.Message)
                finally:
                    await close_quietly(stream)
        except Exception as exc:
            self._no_answer(peer, exc)
            return None
        except BaseExceptionGroup as group:  # the swarm's dial nursery, as the actor stops
            handle_beside_cancel(group, lambda exc: self._no_answer(peer, exc))
        status = reply.dialResponse.status
        if status == pb.Message.OK:
            self.counters["probe_ok"] += 1
            try:
                addr = str(multiaddr.Multiaddr(reply.dialResponse.addr))
                if addr not in self.confirmed:
                    self.confirmed = [addr, *self.confirmed][:4]
            except Exception:
                pass
            return True
        if status == pb.Message.E_DIAL_ERROR:
            self.counters["probe_failed"] += 1
            return False
        self.counters["probe_no_answer"] += 1
        log.info("autonat.refused", peer_id=str(peer), status=status,
                 text=reply.dialResponse.statusText)
        return None

    def record(self, reachable: bool) -> bool:
        changed = self.tracker.record(reachable)
        if not reachable and self.tracker.state == PRIVATE:
            self.confirmed = []
        return changed


def _observed_ip(stream: INetStream) -> str | None:
    """The requester's IPv4 address as this connection sees it."""
    try:
        remote = stream.muxed_conn.get_remote_address()  # type: ignore[attr-defined]
    except Exception:
        return None
    if not remote or ":" in str(remote[0]):
        return None
    return str(remote[0])
