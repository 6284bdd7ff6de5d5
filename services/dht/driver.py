"""The I/O loop around one `KadCore`: streams in, streams out, the clock.

Theory of operation
-------------------
The core says what to send; the driver does it through the transport's stream API:
open `/ipfs/kad/1.0.0` (or take an idle stream to that peer), write the request, read
one reply, keep the stream for the next request to the same peer (go-libp2p reuses
streams the same way; py-libp2p's server reads requests until EOF, like ours). One-way
requests (ADD_PROVIDER) close their stream. Every `SendRequest` runs in its own task, bounded
by the request's deadline; the outcome goes back to the core (`handle_reply` or
`handle_failure`) and whatever the core answers is performed in turn. A reset after
the request was written counts as a refusal (the peer is alive and said no), anything
before or a silence as a failure.

Inbound streams are served in their own tasks: each message is a request for the
core, answered on the same stream until the remote closes it (py-libp2p and go-libp2p
reuse streams). A request the core rejects resets the stream, as the spec says; a
stream idle for `INBOUND_IDLE_S` is reset; at most `MAX_INBOUND` streams are served at
once, beyond that new ones are reset at once, so a flood costs a reset each.

Waiting for a result: `run_operation(start, want)` starts an operation and waits for
its result action (`LookupDone`, `PutDone`, `ProvideDone`). Since trio is single-
threaded and the core never awaits, every task may call the core directly.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import trio

from p2pm.common.log import get_logger
from p2pm.common.streams import ProtocolSpec, Stream, StreamClient, StreamError, StreamReset

from .convert import addr_text, peer_id_bytes, peer_id_text
from .core import (Action, CancelRequest, KadCore, LookupDone, ProvideDone, PutDone,
                   RequestRejected, SendRequest)
from .messages import MAX_MESSAGE_BYTES, Peer, encode_message

KAD_PROTOCOL = "/ipfs/kad/1.0.0"
KAD_SPEC = ProtocolSpec(messages=True, max_message=MAX_MESSAGE_BYTES)
MAX_INBOUND = 128
INBOUND_IDLE_S = 30.0
PROBE_EVERY_S = 60.0  # at most one probe of a given peer in this time
IDLE_CLOSE_S = 20.0  # an outbound stream unused this long is closed
MAX_IDLE_PER_PEER = 3
TICK_MAX_S = 1.0

log = get_logger("dht")

Result = LookupDone | PutDone | ProvideDone


class KadDriver:
    def __init__(self, core: KadCore, streams: StreamClient,
                 rng: random.Random | None = None) -> None:
        self.core = core
        self.streams = streams
        self.rng = rng or random.Random()
        # What identify told us: peers that speak the protocol, and everyone's addresses.
        self.servers: set[bytes] = set()
        self.addrs: dict[bytes, tuple[bytes, ...]] = {}
        self._nursery: trio.Nursery | None = None
        self._scopes: dict[int, trio.CancelScope] = {}
        self._waiters: dict[tuple[int, type], tuple[trio.Event, list[Result]]] = {}
        self._probed: dict[bytes, float] = {}
        self._idle: dict[bytes, list[tuple[Stream, float]]] = {}
        self._inbound = 0
        self.counters = {"requests_sent": 0, "requests_failed": 0, "requests_refused": 0,
                         "inbound_streams": 0, "inbound_requests": 0,
                         "inbound_rejected": 0, "inbound_refused_busy": 0}

    # -- running -------------------------------------------------------------------------

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._clock)
            nursery.start_soon(self._accept)
            task_status.started(self)

    async def _clock(self) -> None:
        while True:
            self.perform(self.core.tick(time.time(), self.rng))
            self._reap_idle()
            delay = self.core.next_deadline() - time.time()
            await trio.sleep(min(max(delay, 0.005), TICK_MAX_S))

    def peer_identified(self, peer: Peer, is_server: bool, now: float) -> None:
        """Identify told us about a connected peer: its addresses, and whether it
        serves the DHT (then it is a routing-table candidate)."""
        self.addrs[peer.id] = peer.addrs
        self.core.peer_connected(peer)
        if is_server:
            self.servers.add(peer.id)
            self.core.add_peer(peer, now)

    def peer_gone(self, peer_id: bytes) -> None:
        """A peer disconnected. What identify said is only kept for connected peers
        (bounded by the transport's connection limit); the table keeps its own."""
        self.core.peer_disconnected(peer_id)
        self.addrs.pop(peer_id, None)
        self.servers.discard(peer_id)

    def perform(self, actions: list[Action]) -> None:
        assert self._nursery is not None, "perform() needs a running driver"
        for action in actions:
            if isinstance(action, SendRequest):
                self._nursery.start_soon(self._request, action)
            elif isinstance(action, CancelRequest):
                scope = self._scopes.pop(action.request_id, None)
                if scope is not None:
                    scope.cancel()
            else:
                slot = self._waiters.get((action.op_id, type(action)))
                if slot is not None and not slot[0].is_set():
                    slot[1].append(action)
                    slot[0].set()
                if isinstance(action, LookupDone) and action.purpose == "refresh":
                    log.debug("dht.refreshed", closest=len(action.result.closest),
                              queried=action.result.queried)

    async def run_operation(self, start: Callable[[float], tuple[int, list[Action]]],
                            want: type, timeout: float) -> Any:
        """Start an operation with `start(now)` and wait for its `want` action."""
        op_id, actions = start(time.time())
        event: trio.Event = trio.Event()
        box: list[Result] = []
        self._waiters[(op_id, want)] = (event, box)
        try:
            self.perform(actions)
            with trio.move_on_after(timeout):
                await event.wait()
        finally:
            del self._waiters[(op_id, want)]
        if not box:
            raise TimeoutError(f"no result within {timeout:g}s")
        return box[0]

    # -- peers ---------------------------------------------------------------------------

    def peer(self, peer_id: bytes) -> Peer:
        """The best Peer we can make for `peer_id`: table entry, else identify's view."""
        known = self.core.routing.get(peer_id)
        if known is not None and known.addrs:
            return known
        return Peer(peer_id, self.addrs.get(peer_id, ()))

    def probe(self, peer: Peer) -> None:
        """Ask `peer` one FIND_NODE (rate-limited); an answer puts it in the table."""
        now = time.time()
        if now - self._probed.get(peer.id, float("-inf")) < PROBE_EVERY_S:
            return
        self._probed[peer.id] = now
        if len(self._probed) > 4096:
            self._probed = {p: t for p, t in self._probed.items() if now - t < PROBE_EVERY_S}
        self.perform([self.core.probe(peer, now)])

    # -- outbound ------------------------------------------------------------------------

    async def _request(self, req: SendRequest) -> None:
        self.counters["requests_sent"] += 1
        outcome: tuple[str, Any] = ("failed", None)
        with trio.CancelScope() as scope:
            self._scopes[req.request_id] = scope
            with trio.move_on_after(max(0.0, req.deadline - time.time())):
                outcome = await self._exchange(req)
        self._scopes.pop(req.request_id, None)
        if scope.cancel_called or not req.expects_reply:
            return  # cancelled by the core (the answer is no longer wanted), or one-way
        now = time.time()
        kind, value = outcome
        if kind == "reply":
            self.perform(self.core.handle_reply(req.request_id, value, now))
            return
        self.counters["requests_refused" if kind == "refused" else "requests_failed"] += 1
        self.perform(self.core.handle_failure(req.request_id, now, refused=kind == "refused"))

    async def _exchange(self, req: SendRequest) -> tuple[str, Any]:
        """One request and its reply, on an idle stream to the peer if there is one
        (a stale one, closed or reset by the remote meanwhile, is replaced by a fresh
        stream once), else on a new stream."""
        stream = self._take_idle(req.peer.id)
        if stream is not None:
            kind, value = await self._send_on(stream, req)
            if kind in ("reply", "sent"):
                return kind, value
        stream = await self._open(req)  # never a second idle one: it may be as stale
        if stream is None:
            return "failed", None
        return await self._send_on(stream, req)

    async def _open(self, req: SendRequest) -> Stream | None:
        addrs = [t for t in (addr_text(a) for a in req.peer.addrs) if t is not None]
        try:
            return await self.streams.open_stream(
                KAD_PROTOCOL, peer=peer_id_text(req.peer.id), addrs=addrs, spec=KAD_SPEC,
                timeout=max(0.1, req.deadline - time.time()))
        except StreamError as exc:
            log.debug("dht.open_failed", peer=peer_id_text(req.peer.id)[-8:], error=exc.message)
            return None

    async def _send_on(self, stream: Stream, req: SendRequest) -> tuple[str, Any]:
        done = False
        try:
            await stream.send(encode_message(req.message))
            if not req.expects_reply:
                done = True
                await stream.close()
                return "sent", None
            try:
                reply = await stream.receive()
            except trio.EndOfChannel:
                return "refused", None
            done = True
            self._put_idle(req.peer.id, stream)
            return "reply", reply
        except StreamReset:
            return "refused", None
        except (StreamError, trio.ClosedResourceError) as exc:
            log.debug("dht.request_failed", peer=stream.peer[-8:], error=str(exc))
            return "failed", None
        finally:
            if not done:  # failed or cancelled mid-request: a late reply must not
                with trio.CancelScope(shield=True):  # reach the stream's next user
                    await stream.reset()

    # Streams are reused, one request at a time each, as go-libp2p does: a new stream
    # costs a protocol negotiation round trip. Idle ones are closed before the remote's
    # own idle timeout (ours: INBOUND_IDLE_S) would reset them.

    def _take_idle(self, peer_id: bytes) -> Stream | None:
        pool = self._idle.get(peer_id)
        while pool:
            stream, since = pool.pop()
            if time.monotonic() - since < IDLE_CLOSE_S:
                return stream
            self._close_soon(stream)
        self._idle.pop(peer_id, None)
        return None

    def _put_idle(self, peer_id: bytes, stream: Stream) -> None:
        pool = self._idle.setdefault(peer_id, [])
        if stream.buffered or len(pool) >= MAX_IDLE_PER_PEER:
            self._close_soon(stream)  # an unasked-for message, or enough spares
            return
        pool.append((stream, time.monotonic()))

    def _reap_idle(self) -> None:
        now = time.monotonic()
        for peer_id in list(self._idle):
            pool = self._idle[peer_id]
            keep = [(s, t) for s, t in pool if now - t < IDLE_CLOSE_S]
            for s, t in pool:
                if now - t >= IDLE_CLOSE_S:
                    self._close_soon(s)
            if keep:
                self._idle[peer_id] = keep
            else:
                del self._idle[peer_id]

    def _close_soon(self, stream: Stream) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(stream.close)

    # -- inbound -------------------------------------------------------------------------

    async def _accept(self) -> None:
        assert self._nursery is not None
        async for stream in self.streams.inbound():
            self.counters["inbound_streams"] += 1
            if self._inbound >= MAX_INBOUND:
                self.counters["inbound_refused_busy"] += 1
                await stream.reset()
                continue
            self._inbound += 1
            self._nursery.start_soon(self._serve, stream)

    async def _serve(self, stream: Stream) -> None:
        try:
            await self._serve_requests(stream)
        except (StreamReset, trio.ClosedResourceError):
            pass  # the remote or the transport gave up on the stream
        finally:
            self._inbound -= 1

    async def _serve_requests(self, stream: Stream) -> None:
        try:
            sender_id = peer_id_bytes(stream.peer)
        except ValueError:
            await stream.reset()
            return
        while True:
            data: bytes | None = None
            with trio.move_on_after(INBOUND_IDLE_S):
                try:
                    data = await stream.receive()
                except trio.EndOfChannel:
                    await stream.close()
                    return
            if data is None:
                await stream.reset()
                return
            self.counters["inbound_requests"] += 1
            sender = self.peer(sender_id)
            is_server = sender_id in self.servers
            try:
                reply = self.core.handle_request_bytes(data, sender, time.time(), is_server)
            except RequestRejected as exc:
                self.counters["inbound_rejected"] += 1
                log.debug("dht.request_rejected", peer=stream.peer[-8:], reason=str(exc))
                await stream.reset()
                return
            if not is_server and sender_id not in self.core.routing and self.core.server_mode:
                # identify may be stale (protocols registered after it ran): ask.
                self.probe(sender)
            if reply is not None:
                await stream.send(encode_message(reply))

    def statistics(self) -> dict[str, Any]:
        return {**self.counters, "inbound_active": self._inbound,
                "requests_in_flight": len(self._scopes),
                "idle_streams": sum(len(p) for p in self._idle.values()),
                **self.core.statistics()}
