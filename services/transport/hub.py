"""The transport's side of the stream API: owners, their protocols, and one pump per
libp2p stream between the network and the owner's socket.

Protocol and flow control are described in common/streams/frames.py. Here: an owner
registers (and keeps registering, as heartbeat) the protocols it owns; the hub installs
a libp2p handler for each; inbound streams are announced with INBOUND, outbound ones
are opened on OPEN. Each stream is served by two tasks:

* reader: libp2p -> owner, only while the owner has granted credit. When credit runs
  out it stops calling `read()`, so Yamux stops granting window and the remote blocks.
* writer: owner -> libp2p, from a queue the owner can fill only up to the window the
  hub granted; after each write the hub grants that many bytes back.

Whatever an owner sends that breaks the protocol resets that stream (or is ignored if
it names no stream); it never takes the transport down.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import multiaddr
import trio
from libp2p.abc import INetStream
from libp2p.peer.id import ID

from p2pm.common import errors, identity
from p2pm.common.groups import first_error, handle_beside_cancel
from p2pm.common.log import get_logger
from p2pm.common.streams import frames as fr
from p2pm.common.streams.frames import (Frame, FrameError, MessageDecoder, MessageTooLarge,
                                        ProtocolSpec)
from p2pm.common.zmqtrio import AsyncSocket

from .host import NodeHost

log = get_logger("transport")

PUSH_COALESCE_S = 0.2
PUSH_TIMEOUT_S = 10.0  # a stalled peer must not hold back later pushes
REAP_SLACK_S = 0.01

# (peer_id, addrs) -> connected, or raises BusError; the actor's dial with its limits.
Connector = Callable[[ID, list[multiaddr.Multiaddr]], Awaitable[None]]


class StreamGone(Exception):
    """The stream was reset (by either side) or its owner went away."""


@dataclass(eq=False)
class Owner:
    name: str
    instance: str
    ident: bytes
    window: int
    protocols: dict[str, ProtocolSpec] = field(default_factory=dict)
    streams: dict[int, "HubStream"] = field(default_factory=dict)
    last_seen: float = 0.0
    next_sid: int = 2


@dataclass(eq=False)
class HubStream:
    sid: int
    owner: Owner
    net: INetStream
    peer: ID
    protocol: str
    spec: ProtocolSpec
    direction: str
    send_credit: int
    recv_window: int = fr.DEFAULT_WINDOW
    queued: int = 0
    credit_changed: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    inbox_send: Any = None
    inbox_recv: Any = None
    closed: bool = False

    def __post_init__(self) -> None:
        self.inbox_send, self.inbox_recv = trio.open_memory_channel(math.inf)


class StreamHub:
    def __init__(self, node: NodeHost, sock: AsyncSocket, epoch: str,
                 max_streams_per_peer: int, connect: Connector) -> None:
        self.node = node
        self.sock = sock
        self.epoch = epoch
        self.max_streams_per_peer = max_streams_per_peer
        self.connect = connect
        self.owners: dict[str, Owner] = {}
        self.by_ident: dict[bytes, Owner] = {}
        self.protocol_owner: dict[str, str] = {}
        self.per_peer: Counter[ID] = Counter()
        self.counters = {"frames_in": 0, "bad_frames": 0, "streams_opened": 0,
                         "streams_inbound": 0, "streams_reset": 0, "owners_lost": 0}
        self._nursery: trio.Nursery | None = None
        self._protocols_changed = trio.Event()
        self._owner_registered = trio.Event()

    def status(self) -> dict[str, Any]:
        return {
            "owners": {o.name: {"protocols": sorted(o.protocols), "streams": len(o.streams)}
                       for o in self.owners.values()},
            "streams": sum(len(o.streams) for o in self.owners.values()),
            **self.counters,
        }

    def streams_of(self, peer: ID) -> int:
        return self.per_peer.get(peer, 0)

    # -- main loops --------------------------------------------------------------------
    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._reap_owners)
            nursery.start_soon(self._push_identify_on_change)
            task_status.started()
            while True:
                frames = await self.sock.recv_multipart()
                self.counters["frames_in"] += 1
                if len(frames) < 2:
                    continue
                ident, rest = frames[0], frames[1:]
                try:
                    await self._on_frame(ident, fr.parse(rest))
                except FrameError as exc:
                    self.counters["bad_frames"] += 1
                    log.warning("streams.bad_frame", error=str(exc))

    async def _reap_owners(self) -> None:
        """Drop an owner not heard from for OWNER_TIMEOUT_S. Sleeps until the owner
        heard from longest ago would be due (each heartbeat pushes that back), or
        until an owner registers: an idle transport does not wake every heartbeat."""
        while True:
            if not self.owners:
                await self._owner_registered.wait()
                self._owner_registered = trio.Event()
                continue
            now = time.monotonic()
            for owner in list(self.owners.values()):
                if now - owner.last_seen > fr.OWNER_TIMEOUT_S:
                    self.counters["owners_lost"] += 1
                    log.warning("streams.owner_lost", owner=owner.name,
                                streams=len(owner.streams))
                    self._drop_owner(owner, "owner stopped answering")
            if self.owners:
                due = min(o.last_seen for o in self.owners.values()) + fr.OWNER_TIMEOUT_S
                # A hair past due: at due exactly the owner is not yet overdue.
                await trio.sleep(max(due - time.monotonic(), 0.0) + REAP_SLACK_S)

    async def _push_identify_on_change(self) -> None:
        """identify-push to connected peers when the set of served protocols changes
        (an owner registered or left after they identified us): a peer that picks
        streams by our advertised protocols (a DHT choosing servers, a gossip router
        choosing its mesh) would otherwise ignore a protocol we serve now. Changes
        within PUSH_COALESCE_S go in one push."""
        while True:
            await self._protocols_changed.wait()
            await trio.sleep(PUSH_COALESCE_S)
            self._protocols_changed = trio.Event()
            peers = len(self.node.host.get_connected_peers())
            if not peers:
                continue
            try:
                with trio.move_on_after(PUSH_TIMEOUT_S):
                    await self.node.host.push_identify_to_all()
                log.info("streams.identify_pushed", peers=peers)
            except* Exception as group:  # best effort: peers re-identify on reconnect
                # (except*: the push's nursery can end in its error and Cancelled as
                # the transport stops; see common/groups.py)
                exc = first_error(group)
                log.info("streams.identify_push_failed", error=str(exc) or type(exc).__name__)

    async def send(self, owner: Owner, parts: list[bytes]) -> None:
        await self.sock.send_multipart([owner.ident, *parts])

    # -- frames from owners ------------------------------------------------------------
    async def _on_frame(self, ident: bytes, f: Frame) -> None:
        if f.kind == fr.REGISTER:
            await self._register(ident, f.json())
            return
        owner = self.by_ident.get(ident)
        if owner is None:
            # An unregistered owner's frames for a stream (sent before it saw that the
            # transport restarted, or after it was dropped) would vanish: the RESET
            # makes it notice at once instead of waiting for an answer.
            if f.kind == fr.OPEN:
                await self.sock.send_multipart([ident, *fr.frame(fr.RESET, f.sid, {
                    "code": errors.UNAVAILABLE, "message": "register before opening streams"})])
            elif f.kind in (fr.DATA, fr.CREDIT, fr.EOF) and f.sid:
                await self.sock.send_multipart([ident, *fr.frame(fr.RESET, f.sid, {
                    "code": errors.UNAVAILABLE,
                    "message": "unknown stream: the transport restarted or dropped the owner"})])
            return
        owner.last_seen = time.monotonic()
        if f.kind == fr.OPEN:
            if f.sid % 2 != 1 or f.sid in owner.streams:
                raise FrameError(f"OPEN needs a new odd stream id, got {f.sid}")
            assert self._nursery is not None
            self._nursery.start_soon(self._open_outbound, owner, f.sid, f.json())
            return
        stream = owner.streams.get(f.sid)
        if stream is None:
            return  # a frame racing with the stream's end: nothing to do
        if f.kind == fr.DATA:
            limit = stream.recv_window + (stream.spec.max_message if stream.spec.messages
                                          else fr.CHUNK)
            if stream.spec.messages and len(f.body) > stream.spec.max_message:
                await self.reset(stream, "message larger than max_message", to_owner=True)
            elif stream.queued + len(f.body) > limit:
                await self.reset(stream, "owner sent beyond its credit", to_owner=True)
            else:
                stream.queued += len(f.body)
                stream.inbox_send.send_nowait(f.body)
        elif f.kind == fr.CREDIT:
            stream.send_credit += f.credit()
            stream.credit_changed.set()
        elif f.kind == fr.EOF:
            stream.inbox_send.send_nowait(None)
        elif f.kind == fr.RESET:
            await self.reset(stream, "reset by owner", to_owner=False)
        else:
            raise FrameError(f"owners do not send {f.kind!r} frames")

    async def _register(self, ident: bytes, body: dict[str, Any]) -> None:
        name, instance = body.get("owner"), body.get("instance")
        if not isinstance(name, str) or not name or not isinstance(instance, str):
            raise FrameError("REGISTER needs string 'owner' and 'instance'")
        window = fr.check_window(body.get("window"))
        raw = body.get("protocols") or {}
        if not isinstance(raw, dict):
            raise FrameError("REGISTER 'protocols' must be an object")
        wanted = {fr.check_protocol_id(p): ProtocolSpec.from_wire(s, f"protocols[{p}]")
                  for p, s in raw.items()}
        owner = self.owners.get(name)
        if owner is not None and owner.instance != instance:
            log.info("streams.owner_replaced", owner=name)
            self._drop_owner(owner, "owner restarted")
            owner = None
        if owner is None:
            owner = Owner(name, instance, ident, window)
            self.owners[name] = owner
            self._owner_registered.set()
            log.info("streams.owner_registered", owner=name, protocols=len(wanted))
        if owner.ident != ident:
            self.by_ident.pop(owner.ident, None)
            owner.ident = ident
        self.by_ident[ident] = owner
        owner.last_seen = time.monotonic()
        owner.window = window
        refused: dict[str, str] = {}
        for proto, spec in wanted.items():
            holder = self.protocol_owner.get(proto)
            if holder is not None and holder != name:
                refused[proto] = f"owned by {holder}"
                continue
            if holder is None:
                self.protocol_owner[proto] = name
                self.node.host.set_stream_handler(proto, self._inbound_handler(proto))
                self._protocols_changed.set()
            owner.protocols[proto] = spec
        for proto in set(owner.protocols) - set(wanted):
            self._release(owner, proto)
        await self.send(owner, fr.frame(fr.WELCOME, 0, {"epoch": self.epoch,
                                                        "refused": refused}))

    def _release(self, owner: Owner, proto: str) -> None:
        owner.protocols.pop(proto, None)
        if self.protocol_owner.get(proto) == owner.name:
            del self.protocol_owner[proto]
            self.node.host.remove_stream_handler(proto)  # type: ignore[arg-type]
            self._protocols_changed.set()

    def _drop_owner(self, owner: Owner, reason: str) -> None:
        for proto in list(owner.protocols):
            self._release(owner, proto)
        for stream in list(owner.streams.values()):
            self._abort(stream, reason)
        if self.owners.get(owner.name) is owner:
            del self.owners[owner.name]
        self.by_ident.pop(owner.ident, None)

    # -- streams -----------------------------------------------------------------------
    def _inbound_handler(self, proto: str) -> Callable[[INetStream], Awaitable[None]]:
        async def handle(net: INetStream) -> None:
            owner = self.owners.get(self.protocol_owner.get(proto, ""))
            peer = net.muxed_conn.peer_id
            if owner is None or proto not in owner.protocols:
                await net.reset()
                return
            if self.per_peer[peer] >= self.max_streams_per_peer:
                log.warning("streams.limit", peer=str(peer), protocol=proto)
                await net.reset()
                return
            sid = owner.next_sid
            owner.next_sid += 2
            stream = self._add(owner, sid, net, peer, proto, "inbound")
            self.counters["streams_inbound"] += 1
            await self.send(owner, fr.frame(fr.INBOUND, sid, {
                "peer": str(peer), "protocol": proto, "window": stream.recv_window,
                "addr": _remote_addr(net)}))
            await self._serve(stream)

        return handle

    async def _open_outbound(self, owner: Owner, sid: int, body: dict[str, Any]) -> None:
        try:
            peer, addrs, proto = _parse_open(body)
            spec = ProtocolSpec.from_wire(body.get("spec", {}), "spec")
            if self.per_peer[peer] >= self.max_streams_per_peer:
                raise errors.BusError(errors.LIMIT, f"{self.max_streams_per_peer} streams "
                                      f"to {peer} already open (max_streams_per_peer)")
            await self.connect(peer, addrs)
            with trio.fail_after(30):
                net = await self.node.host.new_stream(peer, [proto])  # type: ignore[list-item]
        except (errors.BusError, FrameError) as exc:
            code = exc.code if isinstance(exc, errors.BusError) else errors.BAD_PARAMS
            msg = exc.message if isinstance(exc, errors.BusError) else str(exc)
            await self.send(owner, fr.frame(fr.RESET, sid, {"code": code, "message": msg}))
            return
        except Exception as exc:
            await self.send(owner, fr.frame(fr.RESET, sid, {
                "code": errors.UNAVAILABLE,
                "message": f"cannot open {body.get('protocol')}: {type(exc).__name__}: {exc}"}))
            return
        except BaseExceptionGroup as group:
            # The dial's nurseries, cancelled as the transport stops while an address
            # failed: no RESET to send (the owner hears the transport went), and the
            # failure must not come out of the hub's nursery as the stop's error.
            handle_beside_cancel(group, lambda exc: None)
        if self.owners.get(owner.name) is not owner:
            await net.reset()
            return
        stream = self._add(owner, sid, net, peer, proto, "outbound", spec)
        self.counters["streams_opened"] += 1
        await self.send(owner, fr.frame(fr.OPENED, sid, {
            "peer": str(peer), "protocol": proto, "window": stream.recv_window,
            "addr": _remote_addr(net)}))
        await self._serve(stream)

    def _add(self, owner: Owner, sid: int, net: INetStream, peer: ID, proto: str,
             direction: str, spec: ProtocolSpec | None = None) -> HubStream:
        stream = HubStream(sid, owner, net, peer, proto, spec or owner.protocols[proto],
                           direction, send_credit=owner.window)
        owner.streams[sid] = stream
        self.per_peer[peer] += 1
        return stream

    def _finish(self, stream: HubStream) -> None:
        if stream.closed:
            return
        stream.closed = True
        if stream.owner.streams.get(stream.sid) is stream:
            del stream.owner.streams[stream.sid]
        self.per_peer[stream.peer] -= 1
        if self.per_peer[stream.peer] <= 0:
            del self.per_peer[stream.peer]

    def _abort(self, stream: HubStream, reason: str) -> None:
        """Reset from a synchronous context (owner gone): the pump tasks do the I/O."""
        log.info("streams.reset", sid=stream.sid, owner=stream.owner.name, reason=reason)
        self.counters["streams_reset"] += 1
        self._finish(stream)
        stream.scope.cancel()

    async def reset(self, stream: HubStream, reason: str, *, to_owner: bool) -> None:
        if stream.closed:
            return
        self._abort(stream, reason)
        if to_owner:
            # Often called from inside the stream's own (now cancelled) scope; the
            # ROUTER has no HWM, so this send cannot block.
            with trio.CancelScope(shield=True):
                await self.send(stream.owner, fr.frame(fr.RESET, stream.sid, {
                    "code": errors.UNAVAILABLE, "message": reason}))

    async def reset_peer(self, peer: ID, reason: str) -> int:
        """Reset every stream to `peer` on both sides (its connection is being closed
        as dead: the owners must not read that as the remote's clean EOF)."""
        doomed = [s for o in self.owners.values() for s in o.streams.values()
                  if s.peer == peer and not s.closed]
        for stream in doomed:
            await self.reset(stream, reason, to_owner=True)
        return len(doomed)

    async def _serve(self, stream: HubStream) -> None:
        done = {"read": False, "write": False}
        try:
            with stream.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump_in, stream, done)
                    nursery.start_soon(self._pump_out, stream, done)
        finally:
            with trio.CancelScope(shield=True):
                if done["read"] and done["write"]:
                    self._finish(stream)
                    with trio.move_on_after(1):
                        await stream.net.close()
                else:
                    self._finish(stream)
                    with trio.move_on_after(1):
                        await stream.net.reset()

    async def _pump_in(self, stream: HubStream, done: dict[str, bool]) -> None:
        from libp2p.network.stream.exceptions import StreamEOF

        decoder = MessageDecoder(stream.spec.max_message) if stream.spec.messages else None
        try:
            while True:
                while stream.send_credit <= 0:
                    stream.credit_changed = trio.Event()
                    await stream.credit_changed.wait()
                want = fr.CHUNK if decoder else min(stream.send_credit, fr.CHUNK)
                try:
                    data = await stream.net.read(want)
                except StreamEOF:
                    # py-libp2p's Yamux drops a stream's state when RST arrives, and
                    # a read then reports EOF; the flag it leaves tells the truth.
                    if getattr(stream.net.muxed_stream, "reset_received", False):
                        raise
                    data = b""
                if not data:
                    if decoder is not None and decoder.buffered:
                        raise MessageTooLarge("the stream ended inside a message")
                    await self.send(stream.owner, fr.frame(fr.EOF, stream.sid))
                    done["read"] = True
                    return
                chunks = decoder.feed(data) if decoder is not None else [data]
                for chunk in chunks:
                    stream.send_credit -= len(chunk)
                    await self.send(stream.owner, fr.frame(fr.DATA, stream.sid, chunk))
        except MessageTooLarge as exc:
            await self.reset(stream, f"peer broke framing: {exc}", to_owner=True)
        except Exception as exc:
            await self.reset(stream, f"reset by the remote peer ({type(exc).__name__})",
                             to_owner=True)

    async def _pump_out(self, stream: HubStream, done: dict[str, bool]) -> None:
        ungranted = 0
        try:
            async for body in stream.inbox_recv:
                if body is None:
                    await stream.net.close_write()
                    done["write"] = True
                    return
                payload = fr.encode_message(body) if stream.spec.messages else body
                await _write_patiently(stream.net, payload)
                stream.queued -= len(body)
                ungranted += len(body)
                # Credit goes back in quarters of the window, or at once when nothing
                # more is queued (the owner may be waiting for exactly this).
                idle = stream.inbox_recv.statistics().current_buffer_used == 0
                if ungranted and (idle or ungranted >= stream.recv_window // 4):
                    await self.send(stream.owner, fr.frame(fr.CREDIT, stream.sid,
                                                           fr.encode_uvarint(ungranted)))
                    ungranted = 0
        except Exception as exc:
            await self.reset(stream, f"write failed ({type(exc).__name__})", to_owner=True)


async def _write_patiently(net: INetStream, payload: bytes) -> None:
    """Write, waiting as long as the remote's Yamux window stays shut.

    py-libp2p's Yamux `write()` gives up with an error after 5 s without window, which
    would reset the stream of any reader slower than that. A slow reader is exactly the
    case flow control is for, so we only hand Yamux as much as its window takes and wait
    (at Yamux's own 10 ms polling pace) for more. Only this task writes on the stream,
    so the window can only grow between the check and the write."""
    muxed = getattr(net, "muxed_stream", None)
    if not hasattr(muxed, "send_window"):
        await net.write(payload)
        return
    view = memoryview(payload)
    while view:
        while muxed.send_window <= 0 and not muxed.closed:  # type: ignore[union-attr]
            await trio.sleep(0.01)
        n = min(len(view), max(muxed.send_window, 1))  # type: ignore[union-attr]
        await net.write(bytes(view[:n]))
        view = view[n:]


def _remote_addr(net: INetStream) -> str:
    try:
        addrs = net.muxed_conn.get_transport_addresses()  # type: ignore[attr-defined]
        return str(addrs[0]) if addrs else ""
    except Exception:
        return ""


def _parse_open(body: dict[str, Any]) -> tuple[ID, list[multiaddr.Multiaddr], str]:
    proto = fr.check_protocol_id(body.get("protocol"))
    peer_text, addrs_raw = body.get("peer"), body.get("addrs") or []
    if not isinstance(addrs_raw, list):
        raise FrameError("'addrs' must be a list of multiaddrs")
    addrs: list[multiaddr.Multiaddr] = []
    for a in addrs_raw:
        try:
            addrs.append(multiaddr.Multiaddr(a))
        except Exception:
            raise FrameError(f"not a multiaddr: {a!r}") from None
    if not peer_text:
        ids = {a.get_peer_id() for a in addrs if a.get_peer_id()}
        if len(ids) != 1:
            raise FrameError("give 'peer', or addrs ending in /p2p/<peer id>")
        peer_text = ids.pop()
    try:
        peer = ID(identity.peer_id_bytes(peer_text))
    except identity.PeerIdError:
        raise FrameError(f"not a peer id: {peer_text!r}") from None
    return peer, addrs, proto
