"""Per-peer meshsub links: the streams between the router and the transport.

One outbound meshsub stream per peer (`/meshsub/1.2.0`, `/meshsub/1.1.0`,
`/meshsub/1.0.0`, the first the peer speaks), owned by a link task that sends what the
router queued for that peer. It is woken after every router input (`kick`) and sends
only as the stream has credit, so a slow peer backs up into the router's bounded
per-peer queues (their overflow policy is the router's, counted in `sys.status`),
never into memory here. Inbound meshsub streams feed `Router.handle_rpc`.

A link is opened once the transport reports the peer connected; a refusal right after
a transport restart is retried while the peer stays connected (and only then: opening
a stream dials, and a peer that hung up must not be called back). The router forgets
a peer once neither direction has a stream. A peer newly subscribed to one of our
conversations is a member we just met, and is synced with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from p2pm.common.streams import StreamError

from .context import Context, SyncWith, peer_bytes, peer_str
from .router.params import PROTOCOLS
from .state import Registry

MESH_PROTOCOLS = PROTOCOLS  # preference order: 1.2, 1.1, 1.0
LINK_RETRIES = (0.5, 1.0, 2.0, 4.0)  # seconds between attempts to open our stream

OnEvents = Callable[[list[Any], "str | None"], None]


@dataclass
class Link:
    wake: trio.Event = field(default_factory=trio.Event)
    starting: bool = False  # a link task runs for it
    # Something said "the peer may take our stream now" while the link task was still
    # trying (identify naming meshsub again, its stream to us): the task tries again
    # if it ends without a stream rather than losing that news.
    again: bool = False
    outbound: bool = False  # our meshsub stream to it is open
    inbound: int = 0  # its meshsub streams to us


class Links:
    """Bounded by the transport's connection limit: a link exists for a connected
    peer, or while one of its streams is open."""

    def __init__(self, ctx: Context, registry: Registry, on_events: OnEvents,
                 sync_with: SyncWith) -> None:
        self.ctx = ctx
        self.registry = registry
        self.on_events = on_events  # the router's events after one of its inputs
        self.sync_with = sync_with
        self.streams: Any = None  # the transport's stream API, once open
        self.links: dict[str, Link] = {}
        self.connected: set[str] = set()
        self.protocols: dict[str, list[str]] = {}  # from identify
        self._topics_seen: dict[str, set[str]] = {}
        ctx.kick = self.kick

    def statistics(self) -> dict[str, int]:
        return {"peers": len(self.links),
                "streams_out": sum(ln.outbound for ln in self.links.values())}

    def kick(self) -> None:
        """Wake the link of every peer the router has queued something for."""
        if not self.ctx.started:
            return
        for pb in self.ctx.router.pending_peers():
            link = self.links.get(peer_str(pb))
            if link is not None:
                link.wake.set()

    def disconnected(self, peer: str) -> None:
        self.connected.discard(peer)

    def identified(self, peer: str, protocols: list[Any]) -> None:
        self.protocols[peer] = [p for p in protocols if isinstance(p, str)]

    def peer_up(self, peer: str, protocols: list[str] | None = None,
                after: float = 0.0) -> None:
        """The transport has a connection to `peer`: make sure our link to it runs."""
        if peer == self.ctx.me:
            return
        self.connected.add(peer)
        if protocols:
            self.protocols[peer] = protocols
        link = self.links.get(peer)
        if link is None or not link.outbound:
            if link is None:
                link = self.links[peer] = Link()
            if link.starting:
                link.again = True
            else:
                link.starting, link.again = True, False
                self.ctx.spawn(self._run_link, peer, after)

    async def _run_link(self, peer: str, after: float = 0.0) -> None:
        """Our meshsub stream to `peer`: opened once, then sends what the router
        queues for it, as the stream's credit allows. When it dies while the peer stays
        connected (its gossip restarted, say), it is opened again: the peer's new
        inbound stream may well have come before the old one's reset, and would not."""
        router = self.ctx.router
        link = self.links[peer]
        stream = None
        was_up = False
        try:
            await trio.sleep(after)
            # Identify usually names the peer's protocols right after connecting.
            with trio.move_on_after(2.0):
                while not any(p in self.protocols.get(peer, []) for p in MESH_PROTOCOLS):
                    await trio.sleep(0.05)
            # A refusal right after a transport restart (our registration not yet
            # renewed) is retried while the peer stays connected. Only while it does:
            # opening a stream dials, and a peer that hung up must not be called back.
            # The protocols are read again each time: identify may have changed them
            # (a peer's gossip that restarted drops meshsub, then offers it again).
            for delay in LINK_RETRIES:
                for proto in self._mesh_order(peer):
                    if peer not in self.connected:
                        break
                    try:
                        stream = await self.streams.open_stream(proto, peer=peer,
                                                                timeout=10)
                        break
                    except StreamError as exc:
                        self.ctx.log.debug("gossip.link_refused", peer=peer,
                                           protocol=proto, error=exc.message)
                if stream is not None or peer not in self.connected:
                    break
                await trio.sleep(delay)
            if stream is None:
                return
            pb = peer_bytes(peer)
            router.add_peer(pb, stream.protocol or MESH_PROTOCOLS[0], outbound=True,
                            now=self.ctx.now())
            link.outbound = was_up = True
            self.ctx.log.info("gossip.peer_up", peer=peer, protocol=stream.protocol)
            self.kick()
            ended: list[str] = []
            async with trio.open_nursery() as tasks:
                tasks.start_soon(self._send, link, pb, stream, tasks.cancel_scope, ended)
                tasks.start_soon(self._watch, stream, tasks.cancel_scope, ended)
            self.ctx.log.info("gossip.peer_down", peer=peer,
                              error=ended[0] if ended else "")
        except (StreamError, trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            self.ctx.log.info("gossip.peer_down", peer=peer, error=str(exc))
        finally:
            link.starting = False
            link.outbound = False
            self._drop(peer)
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await stream.reset()
            if (was_up or link.again) and peer in self.connected:
                self.peer_up(peer, self.protocols.get(peer, []), after=LINK_RETRIES[0])

    def _mesh_order(self, peer: str) -> list[str]:
        """The meshsub versions to offer `peer`, ours first: those its identify
        lists; none when it lists protocols but no meshsub (a peer without GossipSub,
        or whose gossip is down); all of them when identify has not told yet."""
        known = self.protocols.get(peer, [])
        return [p for p in MESH_PROTOCOLS if p in known] if known else list(MESH_PROTOCOLS)

    async def _send(self, link: Link, pb: bytes, stream: Any, scope: trio.CancelScope,
                    ended: list[str]) -> None:
        try:
            while True:
                await link.wake.wait()
                link.wake = trio.Event()
                for out in self.ctx.router.flush([pb]):
                    await stream.send(out.frame)
        except (StreamError, trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            ended.append(str(exc))
        scope.cancel()

    async def _watch(self, stream: Any, scope: trio.CancelScope, ended: list[str]) -> None:
        """Nothing comes back on our own stream: it returns when the stream dies
        (closed or reset by the remote, or a transport restart), which a sender
        waiting for work would only notice at its next send."""
        try:
            while True:
                await stream.receive()
        except (StreamError, trio.EndOfChannel, trio.ClosedResourceError) as exc:
            ended.append(str(exc) or "closed by the remote")
        scope.cancel()

    def _drop(self, peer: str) -> None:
        link = self.links.get(peer)
        if link is not None and (link.starting or link.outbound or link.inbound):
            return
        self.links.pop(peer, None)
        self._topics_seen.pop(peer, None)
        self.on_events(self.ctx.router.remove_peer(peer_bytes(peer), self.ctx.now()), peer)

    async def serve_inbound(self, stream: Any) -> None:
        """A peer's meshsub stream to us: every frame it sends goes to the router."""
        router = self.ctx.router
        peer = stream.peer
        try:
            pb = peer_bytes(peer)
        except ValueError:
            await stream.reset()
            return
        link = self.links.setdefault(peer, Link())
        link.inbound += 1
        router.add_peer(pb, stream.protocol, outbound=False, now=self.ctx.now())
        self.peer_up(peer, self.protocols.get(peer, []))
        try:
            async for frame in stream:
                self.on_events(router.handle_rpc(pb, frame, self.ctx.now()), peer)
                self._check_new_subscriptions(peer)
                self.kick()
        except (StreamError, trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            link.inbound -= 1
            self._drop(peer)

    def _check_new_subscriptions(self, peer: str) -> None:
        """A peer newly subscribed to one of our conversations is a member we just
        met: reconcile with it (the smaller peer id starts, so one sync suffices)."""
        pb = peer_bytes(peer)
        seen = self._topics_seen.setdefault(peer, set())
        for topic, conv in list(self.registry.by_topic.items()):
            if topic not in seen and pb in self.ctx.router.topic_peers(topic):
                seen.add(topic)
                if conv.kind == "direct" and peer not in conv.members:
                    continue  # not a member: it cannot sync, and gets nothing
                if self.ctx.me < peer or conv.kind == "direct":
                    self.ctx.spawn(self.sync_with, peer, conv)
