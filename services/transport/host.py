"""Building the node's libp2p host: TCP listeners, Noise only, Yamux (Mplex as a
fallback), identify, identify-push and ping, connection limits, per-peer stream limits,
and the four places where py-libp2p 0.8.1 needs adjusting (key custody, dial latency,
Noise writes that a cancellation cut short, Yamux buffering whatever a peer sends).

Every use of a py-libp2p private attribute lives in this file, each with why.

The muxer is py-libp2p's Yamux with its receive loop replaced (`BoundedYamux`): the
rules for what a peer's bytes may cost are in yamux_guard.py, which also says why we
patch the receive side rather than run a muxer of our own. Mplex stays as a fallback
(peers that offer nothing else): py-libp2p's Mplex queues one message per stream and
stops reading the connection while it is full, so it is bounded already.

Everything that signs with the identity goes through the keystore (see custody.py):
`open_host` obtains the Noise signature before the host exists and re-signs the peer
record whenever the advertised addresses change. The host only ever advertises addresses
for which a keystore-signed record is installed (`addrs_factory`), so identify always
finds a matching cached record and never asks the key to sign in the event loop.

This is the one module that touches py-libp2p's private attributes and methods (the
other transport modules call the public wrappers here: `P2pmHost.is_identified`,
`P2pmHost.push_identify_to_all`, `dial_addr_once`), each with a comment saying why
0.8.1 leaves no public way; an upgrade of py-libp2p is checked here.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import trio
from libp2p import new_swarm
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.host.basic_host import BasicHost
from libp2p.identity.identify_push.identify_push import ID_PUSH as IDENTIFY_PUSH
from libp2p.identity.identify_push.identify_push import identify_push_handler_for
from libp2p.io.exceptions import IOException
from libp2p.io.utils import read_exactly
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.config import ConnectionConfig
from libp2p.peer.envelope import make_unsigned, seal_record
from libp2p.peer.id import ID
from libp2p.peer.peer_record import PeerRecord
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.secure_session import SecureSession
from libp2p.transport.tcp.tcp import TCP
from libp2p.utils.address_validation import expand_wildcard_address

from p2pm.common.log import get_logger
from p2pm.common.streams.frames import decode_uvarint

from .custody import NOISE_DOMAIN, PEER_RECORD_DOMAIN, CustodyError, KeystoreBackedKey
from . import yamux_guard as yg
from .limits import PeerLimits
from .reuseport import ReuseportTCP, listening_port, local_port

log = get_logger("transport")

CLOSE_TIMEOUT_S = 5.0  # closing the swarm when the host stops
# A frame that began to go out and is not taken by the peer within this closes the
# connection (keepalive would have closed it by then: its pings wait behind the frame).
STALLED_WRITE_S = 30.0

# (domain, data, payload_type) -> signature; the keystore's `sign` RPC.
Signer = Callable[[str, bytes, bytes | None], Awaitable[bytes]]


# Waits before asking a connected peer to identify itself again after an attempt that
# failed (the stream could not open or the answer timed out, as under heavy load).
IDENTIFY_RETRY_S = (1.0, 3.0, 9.0)


class P2pmHost(BasicHost):
    """BasicHost plus one hook, `on_identified(peer_id)`, called whenever what the
    peerstore knows of a connected peer's protocols changed: after identify on each
    new connection and after each identify-push from it (py-libp2p has no event for
    either). The owners of protocols (the dht above all) learn of peers only from it,
    so identify is also retried while the peer stays connected, and is run again on
    every new connection rather than trusting protocols cached from an earlier one."""

    on_identified: Callable[[ID], None] | None = None

    def __init__(self, *args: Any, limits: PeerLimits, **kwargs: Any) -> None:
        self.limits = limits
        super().__init__(*args, **kwargs)
        # BasicHost puts identify and ping into its multiselect directly, past
        # set_stream_handler: route them through it so that they are limited too.
        for proto, handler in list(self.multiselect.handlers.items()):
            if handler is not None:
                self.set_stream_handler(proto, handler)
        handle_push = identify_push_handler_for(self, use_varint_format=True)

        async def on_push(stream: INetStream) -> None:
            peer = stream.muxed_conn.peer_id
            await handle_push(stream)
            if self.get_network().get_connections(peer):
                self._announce(peer)

        self.set_stream_handler(IDENTIFY_PUSH, on_push)

    def set_stream_handler(self, protocol_id: Any, stream_handler: Any) -> None:
        """Every handler runs behind the per-peer rate of its protocol (limits.py)."""
        super().set_stream_handler(protocol_id, self._limited(str(protocol_id),
                                                              stream_handler))

    def _limited(self, proto: str, handler: Callable[[INetStream], Awaitable[None]]
                 ) -> Callable[[INetStream], Awaitable[None]]:
        async def handle(stream: INetStream) -> None:
            peer = stream.muxed_conn.peer_id
            if not self.limits.allow_protocol(peer, proto, trio.current_time()):
                log.debug("transport.stream_limited", peer=str(peer), protocol=proto)
                await stream.reset()
                return
            try:
                await handler(stream)
            finally:
                muxed = getattr(stream, "muxed_stream", None)
                if isinstance(muxed, BoundedStream):
                    muxed.handler_done()

        return handle

    async def _swarm_stream_handler(self, net_stream: INetStream) -> None:
        # Every new inbound stream of every muxer enters here (BasicHost's private
        # entry point, before protocol negotiation). BoundedYamux counted its streams
        # against the per-peer open rate already; an Mplex connection's are counted
        # here, so a peer cannot escape the limit by choosing the fallback muxer.
        if not isinstance(net_stream.muxed_conn, BoundedYamux) and not \
                self.limits.stream_open.allow(net_stream.muxed_conn.peer_id,
                                              trio.current_time()):
            await net_stream.reset()
            return
        await super()._swarm_stream_handler(net_stream)

    def _announce(self, peer: ID) -> None:
        if self.on_identified is not None:
            self.on_identified(peer)

    def _has_cached_protocols(self, peer_id: ID) -> bool:
        return peer_id in self._identified_peers

    async def _identify_peer(self, peer_id: ID, *, reason: str) -> None:
        for delay in (0.0, *IDENTIFY_RETRY_S):
            await trio.sleep(delay)
            if not self.get_network().get_connections(peer_id):
                return
            await super()._identify_peer(peer_id, reason=reason)
            if peer_id in self._identified_peers:
                self._announce(peer_id)
                return
        log.warning("transport.identify_failed", peer=str(peer_id),
                    attempts=1 + len(IDENTIFY_RETRY_S))

    # py-libp2p's private state, reached only here (see the module docstring) ---------
    def is_identified(self, peer_id: ID) -> bool:
        """Whether identify completed with this connected peer. py-libp2p 0.8.1 keeps
        that only in BasicHost._identified_peers and offers no accessor."""
        return peer_id in self._identified_peers

    async def push_identify_to_all(self) -> None:
        """Send identify-push to every connected peer (our addresses or protocols
        changed). BasicHost._push_identify_to_all_peers is the only way py-libp2p
        0.8.1 has; it calls it itself only when a handler is set, not for addresses."""
        await self._push_identify_to_all_peers()

    def observed_addrs(self) -> list[multiaddr.Multiaddr]:
        """Our addresses as identify's peers observed them (one observer is enough).
        py-libp2p 0.8.1 keeps them in BasicHost._observed_addr_manager, not exposed."""
        manager = getattr(self, "_observed_addr_manager", None)
        if manager is None:
            return []
        return list(manager.addrs(min_observers=1))

    def forget_dial_failures(self, peer_id: ID) -> None:
        """Drop the swarm's memory of failed dials to `peer_id`, so an explicit dial
        tries again at once. Swarm._negative_peer_cache has no public way in 0.8.1."""
        cache = getattr(self.get_network(), "_negative_peer_cache", None)
        if cache is not None:
            cache.evict(str(peer_id))

    def get_addrs(self) -> list[multiaddr.Multiaddr]:
        # BasicHost strips everything from the first /p2p/ before appending ours,
        # which turns a circuit address (/.../p2p/RELAY/p2p-circuit) into the relay's
        # own address. What we advertise never carries our /p2p/ yet: append it.
        me = multiaddr.Multiaddr(f"/p2p/{self.get_id()}")
        factory = self._addrs_factory
        return [a.encapsulate(me) for a in (factory([]) if factory else [])]

    async def _identify_peer(self, peer_id: ID, *, reason: str) -> None:
        await super()._identify_peer(peer_id, reason=reason)
        if self.on_identified is not None and peer_id in self._identified_peers:
            self.on_identified(peer_id)


class BoundedStream(YamuxStream):
    """A Yamux stream whose window stops growing at the guard's maximum, and whose
    incoming data is dropped once nobody will read it.

    py-libp2p auto-tunes a window up to 16 MiB while its reader keeps up; a stalled
    reader then leaves that much buffered per stream. `_apply_autotune_epoch` (private)
    is where it doubles the target, so the cap goes there."""

    conn: "BoundedYamux"
    abandoned = False

    def _apply_autotune_epoch(self, buffered: int) -> int:
        if self.target_recv_window * 2 > self.conn.guard.limits.max_stream_window:
            self.epoch_start = trio.current_time()
            return 0
        return super()._apply_autotune_epoch(buffered)

    def handler_done(self) -> None:
        """The inbound handler returned. If it also closed its side, no code of ours
        holds the stream any more: what the peer still sends (within its window) is
        discarded instead of buffered until the connection ends, and what is buffered
        is dropped. We send no reset: the peer may not have read our answer yet."""
        if self.send_closed and not self.closed:
            self.abandoned = True
            buffer = self.conn.stream_buffers.get(self.stream_id)
            if buffer is not None:
                buffer.clear()


class BoundedYamux(Yamux):
    """py-libp2p's Yamux with its receive loop (`handle_incoming`) replaced by one that
    asks a ReceiveGuard about every frame before reading its body (yamux_guard.py).

    Sending, stream reads and window updates stay py-libp2p's. The loop keeps the
    state py-libp2p's streams read: `streams`, `stream_buffers` and `stream_events`
    (their read path waits on those), `recv_window` (their window updates add to it),
    `_finalize_stream_locked` (drops a stream's bookkeeping once it is closed both ways
    and drained), `_cleanup_on_error` (ends the connection and tells the swarm),
    `_write_frame` (its write lock: our frames must not interleave with the streams'),
    `_read_data_body` (a frame body with py-libp2p's read timeout), and
    `_rtt`/`_ping_event`/`_ping_sent_time` (its RTT measurement, which auto-tuning reads).
    py-libp2p's muxer negotiation builds `Yamux` itself whatever class the muxer
    options name, so `BoundedMuxers` adopts each new one, before it starts, by
    changing its class (`adopt`)."""

    guard: yg.ReceiveGuard
    _inbound: set[int]

    @classmethod
    def adopt(cls, conn: Yamux, limits: yg.GuardLimits, open_rate: Any,
              stats: yg.MuxStats) -> "BoundedYamux":
        conn.__class__ = cls
        assert isinstance(conn, BoundedYamux)
        conn.guard = yg.ReceiveGuard(conn.peer_id, limits, open_rate, stats)
        conn._inbound = set()
        return conn

    async def open_stream(self) -> YamuxStream:
        stream = await super().open_stream()
        stream.__class__ = BoundedStream
        return stream

    async def handle_incoming(self) -> None:
        reason = "closed"
        try:
            while not self.event_shutting_down.is_set():
                header = yg.decode_header(await read_exactly(self.secured_conn,
                                                             yg.HEADER_SIZE))
                if header.type in (yg.TYPE_DATA, yg.TYPE_WINDOW_UPDATE):
                    decision = await self._on_stream_frame(header)
                    if decision.verdict is yg.Verdict.GO_AWAY:
                        reason = decision.reason
                        await self._go_away(decision.reason)
                        return
                elif header.type == yg.TYPE_PING:
                    await self._on_ping(header)
                else:
                    reason = f"go-away {header.length} from the peer"
                    return
        except yg.YamuxProtocolError as exc:
            reason = str(exc)
            await self._go_away(self.guard.on_protocol_error(reason).reason)
        except Exception as exc:  # the connection broke (EOF, a bad Noise frame...)
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            log.debug("transport.yamux_ended", peer=str(self.peer_id), reason=reason)
            if not self.event_closed.is_set():
                await self._cleanup_on_error()

    async def _go_away(self, reason: str) -> None:
        log.warning("transport.yamux_disconnect", peer=str(self.peer_id), reason=reason)
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await self._write_frame(yg.encode_header(yg.TYPE_GO_AWAY, 0, 0,
                                                     yg.GO_AWAY_PROTOCOL_ERROR))

    async def _on_ping(self, header: yg.Header) -> None:
        if header.flags & yg.FLAG_SYN:
            await self._write_frame(yg.encode_header(yg.TYPE_PING, yg.FLAG_ACK, 0,
                                                     header.length))
        elif header.flags & yg.FLAG_ACK:
            rtt = trio.current_time() - self._ping_sent_time
            self._rtt = rtt if self._rtt == 0.0 else (self._rtt + rtt) / 2
            self._ping_event.set()

    async def _on_stream_frame(self, h: yg.Header) -> yg.Decision:
        sid, now = h.stream_id, trio.current_time()
        stream = self.streams.get(sid)
        is_new = bool(h.flags & yg.FLAG_SYN) and stream is None
        if is_new:
            self._inbound &= self.streams.keys()  # py-libp2p drops closed streams
            decision = self.guard.on_open(now, len(self._inbound))
            if decision.verdict is not yg.Verdict.ACCEPT:
                await self._skip_body(h)
                await self._send_reset(sid, decision.reason)
                return decision
            stream = BoundedStream(sid, self, False)
            async with self.streams_lock:
                self.streams[sid] = stream
                self.stream_buffers[sid] = bytearray()
                self.stream_events[sid] = trio.Event()
            self._inbound.add(sid)
        elif h.flags & yg.FLAG_SYN:
            await self._skip_body(h)
            return self.guard.on_protocol_error(f"a second SYN for stream {sid}")
        if h.type == yg.TYPE_DATA:
            live = stream is not None and not stream.closed and not stream.recv_closed
            credit = stream.recv_window if live else None
            buffered = sum(len(b) for b in self.stream_buffers.values())
            decision = self.guard.on_data(h.length, credit, buffered, now)
            if decision.verdict is yg.Verdict.ACCEPT:
                data = await self._read_data_body(h.length) if h.length else b""
                assert stream is not None
                stream.recv_window -= len(data)
                if stream.abandoned:
                    self.guard.stats.bump("discarded_bytes", len(data))
                else:
                    self.stream_buffers[sid].extend(data)
            else:
                await self._skip_body(h)
                if decision.verdict is yg.Verdict.GO_AWAY:
                    return decision
                if decision.verdict is yg.Verdict.RESET:
                    assert stream is not None
                    await self._reset_stream(stream, decision.reason)
                    return decision
                if stream is None or stream.closed:
                    return decision
        elif stream is not None and not stream.closed:
            async with stream.window_lock:
                stream.send_window += h.length
        if stream is None:
            return yg.DISCARD
        if h.flags & yg.FLAG_FIN:
            stream.recv_closed = True
            stream.closed = stream.closed or stream.send_closed
        if h.flags & yg.FLAG_RST:
            stream.closed = stream.reset_received = True
        event = self.stream_events.get(sid)
        if event is not None:
            event.set()
        if stream.closed:
            await self._forget(stream)
        if is_new and not stream.closed:
            await self._write_frame(yg.encode_header(yg.TYPE_WINDOW_UPDATE, yg.FLAG_ACK,
                                                     sid, 0))
            await self.new_stream_send_channel.send(stream)
        return yg.ACCEPT

    async def _skip_body(self, h: yg.Header) -> None:
        """Read and drop a DATA frame's body in pieces, never holding it whole."""
        left = h.length if h.type == yg.TYPE_DATA else 0
        while left:
            left -= len(await self._read_data_body(min(left, 64 * 1024)))

    async def _send_reset(self, sid: int, reason: str) -> None:
        log.debug("transport.yamux_reset", peer=str(self.peer_id), stream=sid,
                  reason=reason)
        await self._write_frame(yg.encode_header(yg.TYPE_WINDOW_UPDATE, yg.FLAG_RST,
                                                 sid, 0))

    async def _reset_stream(self, stream: YamuxStream, reason: str) -> None:
        """Reset a stream we will take nothing more of: its buffer goes at once. Logged
        at debug (counted in sys.status): a peer gets two before its disconnect, which
        is the line worth a warning."""
        log.debug("transport.yamux_overrun", peer=str(self.peer_id),
                    stream=stream.stream_id, reason=reason)
        stream.closed = stream.send_closed = stream.recv_closed = True
        stream.reset_received = True
        self.stream_buffers.get(stream.stream_id, bytearray()).clear()
        event = self.stream_events.get(stream.stream_id)
        if event is not None:
            event.set()
        await self._forget(stream)
        await self._send_reset(stream.stream_id, reason)

    async def _forget(self, stream: YamuxStream) -> None:
        async with self.streams_lock:
            self._finalize_stream_locked(stream, fully_closed=True)


class BoundedMuxers(MuxerMultistream):
    """The upgrader's muxer negotiation, handing out BoundedYamux connections."""

    guard_args: tuple[yg.GuardLimits, Any, yg.MuxStats]

    async def new_conn(self, conn: Any, peer_id: ID) -> Any:
        muxed = await super().new_conn(conn, peer_id)
        if type(muxed) is Yamux:
            BoundedYamux.adopt(muxed, *self.guard_args)
        return muxed


class ConnectionWatcher(INotifee):
    """Forwards swarm connection events to plain callbacks."""

    def __init__(self, connected: Callable[[INetConn], None],
                 disconnected: Callable[[INetConn], None]) -> None:
        self._connected = connected
        self._disconnected = disconnected

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._connected(conn)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._disconnected(conn)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, maddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, maddr: multiaddr.Multiaddr) -> None:
        return None


async def dial_addr_once(network: Any, addr: multiaddr.Multiaddr, peer: ID,
                         source: tuple[str, int] | None) -> INetConn:
    """One dial of one address, from `source`, without the swarm's retries and address
    fan-out: what a hole punch needs (DCUtR dials every address at once and the first
    to connect wins). Swarm.dial_addr_as_responder is the public form for the
    responder; py-libp2p 0.8.1 has none for the initiator but the private
    Swarm._dial_addr_single_attempt."""
    return await network._dial_addr_single_attempt(addr, peer, source)


def connection_config(max_connections: int) -> ConnectionConfig:
    """Limits for the swarm, plus the dial-latency fix.

    py-libp2p's `Swarm.dial_peer` starts one dial per address class and, after starting
    each, waits up to 250 ms (go-libp2p's happy-eyeballs DialDelay) for it to *fail*
    before starting the next; a success does not end that wait unless the number of
    connections reached `max_connections_per_peer`, whose default is 3. So every
    connect paid the full 250 ms even on loopback. With one connection per peer (which
    is all we want: Yamux multiplexes everything over it) the first successful dial
    cancels the wait at once, while a slow or failing first address still gets its
    fallback after 250 ms. Measured in tests/bench/bench_transport.py.

    `min_connections`/`low_watermark` are 0: which peers to keep is the dht's and
    gossip's decision, not the swarm's (see ManualDialsOnly).
    """
    return ConnectionConfig(
        max_connections=max_connections, max_connections_per_peer=1,
        min_connections=0, low_watermark=0, high_watermark=max_connections,
    )


class CancelSafeSession(SecureSession):
    """A Noise session whose writes, once begun, go out whole.

    Noise spends a frame's nonce when it encrypts it, before the bytes reach the
    socket, and py-libp2p's write can be cancelled in between (or halfway through the
    bytes). The peer then fails to decrypt every later frame and drops the connection
    with every stream and relayed circuit on it: one stream's timeout, or a circuit torn
    down while data flowed the other way, broke all the others (found with js-libp2p
    reserved on a p2pm relay). So a write is shielded from its caller's cancellation,
    for at most STALLED_WRITE_S; a frame the peer has not taken by then closes the
    connection, which also frees the writers queued behind it."""

    async def write(self, data: bytes) -> None:
        with trio.CancelScope(shield=True,
                              deadline=trio.current_time() + STALLED_WRITE_S) as scope:
            await super().write(data)
        if scope.cancelled_caught:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                await self.close()
            raise IOException(f"the peer took no frame for {STALLED_WRITE_S:g}s; "
                              f"connection closed")


class CancelSafeNoise(NoiseTransport):
    """Noise whose sessions are CancelSafeSessions."""

    async def secure_inbound(self, conn: Any) -> Any:
        return _cancel_safe(await super().secure_inbound(conn))

    async def secure_outbound(self, conn: Any, peer_id: ID) -> Any:
        return _cancel_safe(await super().secure_outbound(conn, peer_id))


def _cancel_safe(session: Any) -> Any:
    if type(session) is SecureSession:
        session.__class__ = CancelSafeSession
    return session


class ManualDialsOnly(AutoConnector):
    """The swarm's auto-connector dials peers from the peerstore until the connection
    count reaches the midpoint of the watermarks (128 of our 256): it would dial every
    address the dht ever stored. Never started, it does nothing; `maybe_connect` and the
    on-disconnect trigger check `_started` first."""

    async def start(self) -> None:
        self._started = False
        self._shutdown_event = trio.Event()


def parse_unsigned_envelope(data: bytes) -> tuple[str, bytes, bytes]:
    """Split RFC 0002's signed byte string into (domain, payload_type, payload)."""
    fields: list[bytes] = []
    pos = 0
    for _ in range(3):
        size, used = decode_uvarint(data, pos)
        if not used or pos + used + size > len(data):
            raise CustodyError("not an RFC 0002 envelope to sign")
        fields.append(bytes(data[pos + used:pos + used + size]))
        pos += used + size
    if pos != len(data):
        raise CustodyError("trailing bytes after an RFC 0002 envelope")
    return fields[0].decode(), fields[1], fields[2]


class NodeHost:
    """The running host and the custody glue around it."""

    def __init__(self, host: P2pmHost, key: KeystoreBackedKey, signer: Signer,
                 mux_stats: yg.MuxStats | None = None) -> None:
        self.host = host
        self.mux_stats = mux_stats or yg.MuxStats()
        self.key = key
        self.signer = signer
        self.advertised: list[multiaddr.Multiaddr] = []
        # Addresses NAT traversal adds to the record (relay circuits, confirmed public).
        self.extra_addrs: Callable[[], list[multiaddr.Multiaddr]] = lambda: []
        self._record_lock = trio.Lock()

    def tcp(self) -> ReuseportTCP | None:
        for transport in self.host.get_network().transport_manager.get_transports():
            if isinstance(transport, ReuseportTCP):
                return transport
        return None

    def limits_status(self) -> dict[str, Any]:
        """For sys.status: the muxer's counters and each per-peer table's."""
        return {"muxer": dict(self.mux_stats.counters),
                "rates": self.host.limits.status()}

    @property
    def peer_id(self) -> ID:
        return self.host.get_id()

    def full_addrs(self) -> list[str]:
        return [str(a) for a in self.host.get_addrs()]

    async def refresh_record(self) -> bool:
        """Re-sign the peer record through the keystore if the candidate addresses
        changed; True if a new record was installed."""
        async with self._record_lock:
            candidates = []
            for addr in self.host.get_transport_addrs():
                # A wildcard listener (0.0.0.0, ::) is reachable at each interface's
                # address, and at none of its own: advertise the concrete ones.
                if str(addr).startswith(("/ip4/0.0.0.0/", "/ip6/::/")):
                    candidates += [a for a in expand_wildcard_address(addr)
                                   if str(a) not in {str(c) for c in candidates}]
                else:
                    candidates.append(addr)
            obs = self.host._observed_addr_manager
            if obs is not None:
                seen = {str(a) for a in candidates}
                candidates += [a for a in obs.addrs() if str(a) not in seen]
            seen = {str(a) for a in candidates}
            candidates += [a for a in self.extra_addrs() if str(a) not in seen]
            if {str(a) for a in candidates} == {str(a) for a in self.advertised} \
                    and self.host.get_peerstore().get_local_record() is not None:
                return False
            full = [a.encapsulate(multiaddr.Multiaddr(f"/p2p/{self.peer_id}"))
                    for a in candidates]
            record = PeerRecord(self.peer_id, full)
            unsigned = make_unsigned(record.domain(), record.codec(), record.marshal_record())
            signature = await self.signer(PEER_RECORD_DOMAIN, record.marshal_record(),
                                          record.codec())
            self.key.add_record_signature(unsigned, signature)
            self.host.get_peerstore().set_local_record(seal_record(record, self.key))
            self.advertised = candidates
            log.info("transport.record_signed", addrs=len(candidates), seq=record.seq)
            return True


def _build(key: KeystoreBackedKey, noise_private: Any, max_connections: int,
           node: list[NodeHost], limits: PeerLimits, stats: yg.MuxStats) -> P2pmHost:
    key_pair = KeyPair(key, key.get_public_key())
    swarm = new_swarm(
        key_pair=key_pair,
        # Noise only: new_host's default also offers TLS, secio and plaintext, and
        # negotiates plaintext with a peer that asks for it.
        sec_opt={NOISE_PROTOCOL_ID: CancelSafeNoise(key_pair, noise_privkey=noise_private)},
        # Yamux first (made a BoundedYamux by BoundedMuxers), Mplex as a fallback.
        muxer_opt={YAMUX_PROTOCOL_ID: Yamux, MPLEX_PROTOCOL_ID: Mplex},
        connection_config=connection_config(max_connections),
    )
    swarm.auto_connector.__class__ = ManualDialsOnly  # type: ignore[attr-defined]
    muxers = swarm.upgrader.muxer_multistream
    muxers.__class__ = BoundedMuxers
    muxers.guard_args = (yg.GuardLimits(), limits.stream_open, stats)
    for transport in swarm.transport_manager.get_transports():
        if isinstance(transport, TCP):
            ReuseportTCP.adopt(transport)  # dial from the listening port (hole punching)
    # The constructor reads get_addrs() through this before `node` is filled in.
    return P2pmHost(
        network=swarm, limits=limits,
        addrs_factory=lambda _candidates: list(node[0].advertised) if node else [],
    )


@asynccontextmanager
async def open_host(public_key: bytes, signer: Signer, listen: Sequence[str],
                    max_connections: int) -> AsyncIterator[NodeHost]:
    """Build the host with a keystore-backed identity and listen on `listen`."""
    key = KeystoreBackedKey(public_key)
    noise = new_x25519_key_pair()
    noise_public = noise.public_key.to_bytes()
    key.add_noise_signature(noise_public, await signer(NOISE_DOMAIN, noise_public, None))

    trio_thread = threading.get_ident()
    token = trio.lowlevel.current_trio_token()

    async def sign_envelope(data: bytes) -> bytes:
        domain, payload_type, payload = parse_unsigned_envelope(data)
        if domain != PEER_RECORD_DOMAIN:
            raise CustodyError(f"refusing to sign an envelope in domain {domain!r}")
        signature = await signer(domain, payload, payload_type)
        key.add_record_signature(data, signature)
        return signature

    def bridged_sign(data: bytes) -> bytes:
        # BasicHost's constructor signs a peer record synchronously; we build the host
        # in a worker thread so that one signature can come from the keystore.
        if threading.get_ident() == trio_thread:
            raise CustodyError("a signature the keystore did not make in advance")
        return trio.from_thread.run(sign_envelope, data, trio_token=token)

    node: list[NodeHost] = []
    key.fallback = bridged_sign
    # Per-peer tables hold a few times the connections we allow (ratelimit.py).
    limits = PeerLimits(max_peers=4 * max_connections)
    stats = yg.MuxStats()
    try:
        host = await trio.to_thread.run_sync(_build, key, noise.private_key,
                                             max_connections, node, limits, stats)
    finally:
        key.fallback = None
    nh = NodeHost(host, key, signer, stats)
    node.append(nh)
    addrs = [multiaddr.Multiaddr(a) for a in listen]
    try:
        async with host.run(listen_addrs=addrs):
            tcp = nh.tcp()
            bound = listening_port(list(host.get_transport_addrs()))
            if tcp is not None and bound is not None:
                tcp.source_ip4, tcp.source_port = bound
                _observe_listening_port_only(host, bound[1])
            await nh.refresh_record()
            yield nh
    finally:
        # Cancelled (how an actor stops), host.run() leaves the swarm's listeners
        # serving from a trio system task, and its connections open: a host started
        # again in the same process (tests, benchmarks) would find its port taken, and
        # peers dialling the old port would reach a host that is gone.
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
            await host.get_network().close()


def _observe_listening_port_only(host: BasicHost, port: int) -> None:
    """Keep identify's observed addresses to connections on our listening port.

    Most dials leave from an ephemeral port (reuseport.py); what a peer observes for
    those is a NAT mapping nobody can dial back. py-libp2p records it anyway (it
    matches observations to listeners by IP alone), and we would offer it to AutoNAT
    and DCUtR and advertise it. The manager is private to BasicHost (0.8.1), and
    record_observation its only hook."""
    manager = getattr(host, "_observed_addr_manager", None)
    if manager is None:
        return
    record = manager.record_observation

    def record_if_listening_port(conn: Any, observed: Any, local_addrs: Any) -> None:
        if local_port(conn) != port:
            log.debug("transport.observation_skipped", observed=str(observed),
                      reason="ephemeral local port")
            return
        record(conn, observed, local_addrs)

    manager.record_observation = record_if_listening_port


PING_PROTOCOL = "/ipfs/ping/1.0.0"
PING_SIZE = 32


async def ping_rtt_ms(host: BasicHost, peer_id: ID, timeout: float = 10.0) -> float:
    """One /ipfs/ping/1.0.0 round trip in milliseconds, with sub-millisecond resolution
    (py-libp2p's PingService rounds to whole milliseconds, useless on loopback)."""
    with trio.fail_after(timeout):
        stream = await host.new_stream(peer_id, [PING_PROTOCOL])  # type: ignore[list-item]
        try:
            payload = os.urandom(PING_SIZE)
            start = time.perf_counter()
            await stream.write(payload)
            echoed = await read_exactly(stream, PING_SIZE)
            rtt = (time.perf_counter() - start) * 1000
        finally:
            with trio.CancelScope(shield=True):
                await stream.close()
    if echoed != payload:
        raise ValueError("the peer answered ping with different bytes")
    return rtt
