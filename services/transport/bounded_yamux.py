"""Our Yamux: py-libp2p's with its receive loop replaced, so that what a peer's bytes
may cost is bounded (per stream, per connection, node-wide), and offenders are boxed.

This module reaches into py-libp2p 0.8.1's Yamux internals (each use is listed in
`BoundedYamux`'s docstring): it is host.py's sibling for that one purpose, kept apart
so that host.py stays readable. No other module outside host.py uses py-libp2p private
attributes. The rules themselves are sans-IO, elsewhere: yamux_guard.py (per frame),
mux_budget.py (the node-wide budget and who pays), penalty.py (who is refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio
from libp2p.io.utils import read_exactly
from libp2p.peer.id import ID
from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream
from libp2p.transport.exceptions import MuxerUpgradeFailure

from p2pm.common.log import get_logger
from p2pm.common.ratelimit import RateTable

from . import yamux_guard as yg
from .mux_budget import NodeBudget, shed_plan
from .penalty import PenaltyBox

log = get_logger("transport")

CLOSE_TIMEOUT_S = 5.0  # sending a go-away to a peer that may not read


@dataclass(frozen=True)
class MuxPolicy:
    """What every connection of one host shares: the per-frame limits, the per-peer
    open rate, the counters, the node-wide budget and the penalty box."""

    limits: yg.GuardLimits
    open_rate: RateTable
    stats: yg.MuxStats
    budget: NodeBudget
    box: PenaltyBox

    def status(self, now: float) -> dict[str, Any]:
        return {"muxer": dict(self.stats.counters), "budget": self.budget.status(),
                "penalty": self.box.status(now)}


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
    policy: MuxPolicy
    _inbound: set[int]

    @classmethod
    def adopt(cls, conn: Yamux, policy: MuxPolicy) -> "BoundedYamux":
        conn.__class__ = cls
        assert isinstance(conn, BoundedYamux)
        conn.policy = policy
        conn.guard = yg.ReceiveGuard(conn.peer_id, policy.limits, policy.open_rate,
                                     policy.stats)
        conn._inbound = set()
        return conn

    def unread(self) -> int:
        return sum(len(b) for b in self.stream_buffers.values())

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
            self.policy.budget.drop(self)
            if not self.event_closed.is_set():
                await self._cleanup_on_error()

    async def _go_away(self, reason: str) -> None:
        """Cut the peer off for breaking the rules, and box it (penalty.py)."""
        term = self.policy.box.punish(self.peer_id, trio.current_time())
        log.warning("transport.yamux_disconnect", peer=str(self.peer_id), reason=reason,
                    refused_for_s=term)
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
            if decision.verdict is yg.Verdict.ACCEPT and h.length and stream is not None \
                    and not stream.abandoned:
                decision = self._within_budget(h.length, buffered)
            if decision.verdict is yg.Verdict.ACCEPT:
                data = await self._read_data_body(h.length) if h.length else b""
                assert stream is not None
                stream.recv_window -= len(data)
                if stream.abandoned:
                    self.guard.stats.bump("discarded_bytes", len(data))
                else:
                    self.stream_buffers[sid].extend(data)
                    self.policy.budget.report(self, buffered + len(data))
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

    def _within_budget(self, length: int, buffered: int) -> yg.Decision:
        """The node-wide budget's rule (mux_budget.py): while `length` more bytes would
        take the node over, the connection furthest over its fair share pays."""
        budget = self.policy.budget
        budget.report(self, buffered)
        if budget.fits(length):
            return yg.ACCEPT
        budget.counters["short"] += 1
        conns = budget.connections()
        for conn in conns:  # exact figures before anyone pays
            if isinstance(conn, BoundedYamux):
                budget.report(conn, conn.unread())
        for _ in range(len(conns) + 1):
            payer = budget.payer(self, length)
            if payer is None:
                return yg.ACCEPT
            if payer is self or not isinstance(payer, BoundedYamux):
                break
            payer.shed(budget.share(self))
        budget.counters["self_resets"] += 1
        self.guard.stats.bump("budget_resets")
        self.guard.stats.bump("discarded_bytes", length)
        return yg.Decision(yg.Verdict.RESET, "node buffer budget: this connection "
                           "holds the most over its share")

    def shed(self, keep: int) -> None:
        """Reset streams, largest buffer first, until this connection holds at most
        `keep` unread bytes. Called from another connection's receive loop: buffers
        are dropped here and now, the RST frames go out from this connection's own
        nursery (this peer may be slow to read; the caller must not wait on it)."""
        sizes = {sid: len(b) for sid, b in self.stream_buffers.items()}
        plan = [self.streams[sid] for sid in shed_plan(sizes, keep) if sid in self.streams]
        freed = 0
        for stream in plan:
            freed += len(self.stream_buffers.get(stream.stream_id, b""))
            self._mark_reset(stream)
        budget = self.policy.budget
        budget.counters["sheds"] += 1
        budget.counters["shed_bytes"] += freed
        budget.report(self, self.unread())
        log.warning("transport.budget_shed", peer=str(self.peer_id), streams=len(plan),
                    freed=freed, share=keep)
        if self._nursery is not None and plan:
            self._nursery.start_soon(self._finish_resets, plan)

    async def _finish_resets(self, streams: list[YamuxStream]) -> None:
        try:
            for stream in streams:
                await self._forget(stream)
                with trio.move_on_after(CLOSE_TIMEOUT_S):
                    await self._send_reset(stream.stream_id, "node buffer budget")
        except Exception as exc:  # the connection went meanwhile
            log.debug("transport.budget_shed_unsent", peer=str(self.peer_id),
                      error=f"{type(exc).__name__}: {exc}")

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
        self._mark_reset(stream)
        await self._forget(stream)
        await self._send_reset(stream.stream_id, reason)

    def _mark_reset(self, stream: YamuxStream) -> None:
        """The stream is reset from our side: its buffer goes, its reader wakes."""
        stream.closed = stream.send_closed = stream.recv_closed = True
        stream.reset_received = True
        self.stream_buffers.get(stream.stream_id, bytearray()).clear()
        event = self.stream_events.get(stream.stream_id)
        if event is not None:
            event.set()

    async def _forget(self, stream: YamuxStream) -> None:
        async with self.streams_lock:
            self._finalize_stream_locked(stream, fully_closed=True)


class BoundedMuxers(MuxerMultistream):
    """The upgrader's muxer negotiation, handing out BoundedYamux connections, and
    refusing a peer in the penalty box (its Noise handshake told us who it is)."""

    policy: MuxPolicy

    async def new_conn(self, conn: Any, peer_id: ID) -> Any:
        left = self.policy.box.refuses(peer_id, trio.current_time())
        if left:
            log.info("transport.peer_refused", peer=str(peer_id),
                     reason="penalty box", seconds_left=round(left, 1))
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                await conn.close()
            raise MuxerUpgradeFailure(f"peer {peer_id} is refused for {left:.0f}s more "
                                      f"(it broke the muxer's rules)")
        muxed = await super().new_conn(conn, peer_id)
        if type(muxed) is Yamux:
            BoundedYamux.adopt(muxed, self.policy)
        return muxed

