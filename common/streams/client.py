"""The owner-side stream library: how the dht, gossip or any actor speaks a libp2p
protocol through the transport.

    from p2pm.common.streams import ProtocolSpec, open_streams

    KAD = "/ipfs/kad/1.0.0"
    async with open_streams(endpoints, "dht", {KAD: ProtocolSpec(messages=True)}) as streams:
        nursery.start_soon(serve_inbound, streams)        # async for s in streams.inbound()
        async with streams.open(KAD, peer=peer_id, addrs=[...]) as s:
            await s.send(request)                         # one whole message
            reply = await s.receive()                     # one whole message

`open_streams` registers the owner's protocols with the transport and keeps the
registration alive by itself (it doubles as the owner's heartbeat). When the transport
restarts, the library sees the new epoch, resets the streams that died with it
(`StreamReset`), and is registered again without anything for the caller to do. When the
owner dies, the transport notices the missing heartbeats and resets its streams on the
network side.

A `Stream` is a trio-style bidirectional channel: `send()` waits for credit (a slow
remote pushes back here), `receive()` returns the next chunk or message and raises
`trio.EndOfChannel` once the remote has closed its side, `close()` ends our side (the
remote reads EOF), `reset()` aborts both. `async with` closes on success and resets on
error. A stream ends when both sides have closed (or either reset). Delivery is bounded: at most the window (default 256 KiB) plus one message is
buffered per stream; the transport stops reading from the network beyond that.
"""

from __future__ import annotations

import itertools
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import zmq

from p2pm.common import errors
from p2pm.common.home import Endpoints
from p2pm.common.log import get_logger
from p2pm.common.zmqtrio import AsyncSocket

from . import frames as fr
from .frames import FrameError, ProtocolSpec

__all__ = ["ProtocolSpec", "Stream", "StreamClient", "StreamError", "StreamReset",
           "open_streams", "streams_endpoint"]

INBOUND_BACKLOG = 256  # inbound streams not yet accepted; beyond, new ones are reset

log = get_logger("streams")


def streams_endpoint(endpoints: Endpoints) -> str:
    return endpoints.extra("transport", "streams")


class StreamError(Exception):
    """Opening a stream failed; `code` is one of p2pm.common.errors."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class StreamReset(StreamError):
    """The stream was reset by the remote, the transport, or a restart."""


class Stream:
    def __init__(self, client: "StreamClient", sid: int, info: dict[str, Any],
                 spec: ProtocolSpec, direction: str) -> None:
        self._client = client
        self.sid = sid
        self.peer: str = info.get("peer", "")
        self.protocol: str = info.get("protocol", "")
        self.addr: str = info.get("addr", "")
        self.direction = direction
        self.spec = spec
        self._send_credit = int(info.get("window", fr.DEFAULT_WINDOW))
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._unacked = 0
        self._eof = False
        self._closed_write = False
        self._reset: StreamReset | None = None
        self._changed = trio.Event()

    def __repr__(self) -> str:
        return f"<Stream {self.sid} {self.protocol} {self.direction} {self.peer[:16]}>"

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed (bounded by the window)."""
        return self._buffered

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- fed by the client's receive loop ------------------------------------------------
    def _on_data(self, data: bytes) -> None:
        self._buffer.append(data)
        self._buffered += len(data)
        self._notify()

    def _on_credit(self, n: int) -> None:
        self._send_credit += n
        self._notify()

    def _on_eof(self) -> None:
        self._eof = True
        self._forget_if_done()
        self._notify()

    def _forget_if_done(self) -> None:
        # Both halves closed: the transport has finished the stream, nothing more can
        # arrive for it (what is buffered stays readable).
        if self._eof and self._closed_write:
            self._client._streams.pop(self.sid, None)

    def _on_reset(self, err: StreamReset) -> None:
        if self._reset is None:
            self._reset = err
        self._client._streams.pop(self.sid, None)
        self._notify()

    # -- the user's side ---------------------------------------------------------------
    async def send(self, data: bytes) -> None:
        """Send bytes (raw streams) or exactly one message (message streams)."""
        if self.spec.messages and len(data) > self.spec.max_message:
            raise ValueError(f"message of {len(data)} bytes exceeds max_message "
                             f"{self.spec.max_message}")
        pieces = [data] if self.spec.messages else [
            data[i:i + fr.CHUNK] for i in range(0, len(data), fr.CHUNK)]
        for piece in pieces:
            while True:
                if self._reset is not None:
                    raise self._reset
                if self._closed_write:
                    raise trio.ClosedResourceError("stream closed for sending")
                if self._send_credit > 0:
                    break
                await self._changed.wait()
            self._send_credit -= len(piece)
            await self._client._send(fr.frame(fr.DATA, self.sid, piece))

    async def receive(self) -> bytes:
        """The next chunk or message; `trio.EndOfChannel` after the remote closed."""
        while not self._buffer:
            if self._reset is not None:
                raise self._reset
            if self._eof:
                raise trio.EndOfChannel
            await self._changed.wait()
        data = self._buffer.popleft()
        self._buffered -= len(data)
        self._unacked += len(data)
        # Granting in quarters of the window keeps CREDIT frames rare; the sender can
        # only be stuck when a full window is unacked, which is past this threshold.
        if self._unacked >= self._client.window // 4 and self._reset is None:
            n, self._unacked = self._unacked, 0
            await self._client._send(fr.frame(fr.CREDIT, self.sid, fr.encode_uvarint(n)))
        return data

    def __aiter__(self) -> "Stream":
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def close(self) -> None:
        """We are done sending; the remote reads EOF. Receiving goes on."""
        if self._closed_write or self._reset is not None:
            return
        self._closed_write = True
        await self._client._send(fr.frame(fr.EOF, self.sid))
        self._forget_if_done()
        self._notify()

    async def reset(self) -> None:
        if self._reset is not None:
            return
        self._on_reset(StreamReset(errors.CONFLICT, "reset locally"))
        await self._client._send(fr.frame(fr.RESET, self.sid))

    async def __aenter__(self) -> "Stream":
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        with trio.CancelScope(shield=True):
            if exc_type is None:
                await self.close()
            else:
                await self.reset()


class StreamClient:
    """One owner's connection to the transport's stream API. Use `open_streams`."""

    def __init__(self, sock: AsyncSocket, owner: str,
                 protocols: dict[str, ProtocolSpec], window: int) -> None:
        self.owner = owner
        self.instance = uuid.uuid4().hex
        self.protocols = {fr.check_protocol_id(p): s for p, s in protocols.items()}
        self.window = fr.check_window(window)
        self.epoch: str | None = None
        self.refused: dict[str, str] = {}
        self.restarts = 0  # transport restarts seen
        self._sock = sock
        self._streams: dict[int, Stream] = {}
        self._pending: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._sids = itertools.count(1, 2)
        self._registered = trio.Event()
        self._inbound_send, self._inbound_recv = trio.open_memory_channel[Stream](
            INBOUND_BACKLOG)

    async def _send(self, parts: list[bytes]) -> None:
        await self._sock.send_multipart(parts)

    def _register_frame(self) -> list[bytes]:
        return fr.frame(fr.REGISTER, 0, {
            "owner": self.owner, "instance": self.instance, "window": self.window,
            "protocols": {p: s.to_wire() for p, s in self.protocols.items()}})

    async def wait_registered(self) -> None:
        await self._registered.wait()

    async def set_protocols(self, protocols: dict[str, ProtocolSpec]) -> None:
        """Change the owned protocols (takes effect with the next heartbeat, sent now)."""
        self.protocols = {fr.check_protocol_id(p): s for p, s in protocols.items()}
        await self._send(self._register_frame())

    async def _heartbeat(self) -> None:
        while True:
            await self._send(self._register_frame())
            await trio.sleep(fr.HEARTBEAT_S)

    async def _receive_loop(self) -> None:
        while True:
            frames = await self._sock.recv_multipart()
            try:
                f = fr.parse(frames)
                await self._on_frame(f)
            except FrameError as exc:
                log.warning("streams.bad_frame", owner=self.owner, error=str(exc))

    async def _on_frame(self, f: fr.Frame) -> None:
        if f.kind == fr.WELCOME:
            body = f.json()
            epoch = body.get("epoch")
            if self.epoch is not None and epoch != self.epoch:
                self.restarts += 1
                log.info("streams.transport_restarted", owner=self.owner,
                         streams=len(self._streams))
                self._reset_all("the transport restarted")
            self.epoch = epoch
            self.refused = body.get("refused") or {}
            self._registered.set()
            return
        if f.kind == fr.INBOUND:
            info = f.json()
            spec = self.protocols.get(info.get("protocol", ""), ProtocolSpec())
            stream = Stream(self, f.sid, info, spec, "inbound")
            try:
                self._inbound_send.send_nowait(stream)
            except trio.WouldBlock:
                await self._send(fr.frame(fr.RESET, f.sid))
                return
            self._streams[f.sid] = stream
            return
        if f.kind in (fr.OPENED, fr.RESET) and f.sid in self._pending:
            event, box = self._pending[f.sid]
            box.append(f)
            event.set()
            return
        stream = self._streams.get(f.sid)
        if stream is None:
            return
        if f.kind == fr.DATA:
            stream._on_data(f.body)
        elif f.kind == fr.CREDIT:
            stream._on_credit(f.credit())
        elif f.kind == fr.EOF:
            stream._on_eof()
        elif f.kind == fr.RESET:
            stream._on_reset(_reset_error(f.body))

    def _reset_nowait(self, sid: int) -> None:
        """RESET without waiting (from a cancelled task); while the transport is down
        there is nothing to reset there, and the frame is not queued."""
        try:
            self._sock.send_multipart_nowait(fr.frame(fr.RESET, sid))
        except trio.ClosedResourceError:
            pass

    def _reset_all(self, reason: str) -> None:
        for stream in list(self._streams.values()):
            stream._on_reset(StreamReset(errors.UNAVAILABLE, reason))
        for event, box in self._pending.values():
            box.append(None)
            event.set()

    # -- public ------------------------------------------------------------------------
    async def accept(self) -> Stream:
        """The next inbound stream for one of our protocols."""
        return await self._inbound_recv.receive()

    async def inbound(self) -> AsyncIterator[Stream]:
        async for stream in self._inbound_recv:
            yield stream

    async def open_stream(self, protocol: str, *, peer: str | None = None,
                          addrs: list[str] | tuple[str, ...] = (),
                          spec: ProtocolSpec | None = None, timeout: float = 30.0) -> Stream:
        """Open a stream to `peer` (dialling `addrs` if not connected; a full
        /p2p/ multiaddr alone is enough). Raises StreamError with the reason."""
        fr.check_protocol_id(protocol)
        spec = spec or self.protocols.get(protocol) or ProtocolSpec()
        await self._registered.wait()
        sid = next(self._sids)
        event, box = trio.Event(), []
        self._pending[sid] = (event, box)
        try:
            await self._send(fr.frame(fr.OPEN, sid, {
                "peer": peer, "addrs": list(addrs), "protocol": protocol,
                "spec": spec.to_wire()}))
            with trio.move_on_after(timeout):
                await event.wait()
        except BaseException:
            # Cancelled by our caller (or failed) after the OPEN may have left: the
            # transport would keep opening, then hold the stream for nobody.
            self._reset_nowait(sid)
            raise
        finally:
            del self._pending[sid]
        if not box:
            await self._send(fr.frame(fr.RESET, sid))
            raise StreamError(errors.TIMEOUT, f"opening {protocol} took over {timeout:g}s")
        f = box[0]
        if f is None:
            raise StreamError(errors.UNAVAILABLE, "the transport restarted")
        if f.kind == fr.RESET:
            err = _reset_error(f.body)
            raise StreamError(err.code, err.message)
        stream = Stream(self, sid, f.json(), spec, "outbound")
        self._streams[sid] = stream
        return stream

    @asynccontextmanager
    async def open(self, protocol: str, **kw: Any) -> AsyncIterator[Stream]:
        """`open_stream` as a context manager: closed on success, reset on error."""
        stream = await self.open_stream(protocol, **kw)
        async with stream:
            yield stream

    def statistics(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "streams": len(self._streams), "restarts": self.restarts,
                "registered": self._registered.is_set(), "refused": dict(self.refused)}


def _reset_error(body: bytes) -> StreamReset:
    try:
        obj = fr.Frame(fr.RESET, 0, body).json()
        return StreamReset(str(obj.get("code", errors.UNAVAILABLE)), str(obj.get("message")))
    except FrameError:
        return StreamReset(errors.UNAVAILABLE, "reset by the remote")


@asynccontextmanager
async def open_streams(endpoints: Endpoints, owner: str,
                       protocols: dict[str, ProtocolSpec] | None = None, *,
                       window: int = fr.DEFAULT_WINDOW, ctx: zmq.Context | None = None,
                       wait: float | None = 10.0) -> AsyncIterator[StreamClient]:
    """Connect `owner` to the transport's stream API and register `protocols`.

    Waits up to `wait` seconds for the first registration (None: do not wait; the
    client registers as soon as the transport is up)."""
    ctx = ctx or zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    client = StreamClient(AsyncSocket(sock), owner, protocols or {}, window)
    sock.setsockopt(zmq.ROUTING_ID, f"{owner}/{client.instance}".encode())
    # Credit bounds what is in flight, so the queues need no limit of their own; a
    # ZMQ HWM would only turn back-pressure into drops or stalls at the wrong layer.
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    # Frames only go to a live transport: while it is down the heartbeat waits
    # instead of queueing registrations for a process that no longer exists.
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.RECONNECT_IVL, 20)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(streams_endpoint(endpoints))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._receive_loop)
            nursery.start_soon(client._heartbeat)
            if wait is not None:
                with trio.fail_after(wait):
                    await client.wait_registered()
            try:
                yield client
            finally:
                for sid in list(client._streams):
                    client._reset_nowait(sid)
                client._reset_all("the owner closed its stream client")
                nursery.cancel_scope.cancel()
    finally:
        client._sock.close(linger_ms=0)

