"""The gossip actor: conversations over GossipSub, catch-up sync, outbox and receipts.

It runs the sans-IO GossipSub router (router/core.py) over the transport's stream API
(`/meshsub/1.2.0`, `/meshsub/1.1.0`, `/meshsub/1.0.0`), conversation sealing and
opening (conversations.py), catch-up sync (`/p2pm/sync/1.0.0`, sync.py) and message
requests from peers outside our conversations (`/p2pm/request/1.0.0`, strangers.py
over requests.py). Storage keeps everything; this actor keeps only caches and can be
restarted at any time.

Shape of the shell
------------------
* One outbound meshsub stream per peer, owned by a link task that sends what the
  router queued for that peer. It is woken after every router input and sends only as
  the stream has credit, so a slow peer backs up into the router's bounded per-peer
  queues (their overflow policy is the router's, counted in `sys.status`), never into
  memory here. Inbound meshsub streams feed `Router.handle_rpc`.
* Incoming messages are validated synchronously inside the router (decrypt with the
  conversation key, check the author's signature, the author against the GossipSub
  `from`, and direct-chat membership), so an invalid message is rejected before it is
  forwarded and costs its sender score.
* A written message is stored first (state pending) with an outbox row per other
  member, then published; it turns `sent` once the router handed it to a peer or a
  sync sent it, and `delivered` when every recipient acknowledged it: a signed
  receipt over gossip, or a sync HAVE that covers it. Pending work survives restarts
  of any actor: it lives in storage, and the maintenance loop dials members with
  deliveries due and syncs with them when they connect.
* Members find each other through the inviter's addresses in an invite, the members'
  addresses exchanged in every sync HELLO, identify, and the DHT (a provider record
  under each conversation's provider key; `find_peer` for a member without known
  addresses). A node keeps TARGET_MEMBER_PEERS members of each conversation connected
  and lets the room's mesh carry the rest; a direct chat's peer is dialled while a
  message to it is undelivered.

RPC contract: as agreed, each method's docstring shows it. Details the contract left
open: `history(before=...)` takes a message id (the page ends before it);
`conversation_leave` answers {"left": true}, `mark_read` {"read_ts"}; message states
are pending, sent, delivered (ours) and received (others'), and, for ours in a direct
chat the peer has not opened, requested (held as a message request) or refused (the
peer blocked us; strangers.py); `message_state` gives per member "pending", "sent",
"requested", "refused", "delivered" or "failed". Debug RPCs `pubsub_subscribe`,
`pubsub_publish` and `pubsub_messages` speak raw GossipSub on a test topic (interop
with other implementations); a conversation's topic is refused there.

Events: gossip.message.received {"id", "conversation", "author", "body", "ts"},
        gossip.message.state {"id", "conversation", "state"}.
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio

from p2pm.common import errors, identity, wire
from p2pm.common.actor import Actor, every, on_event, rpc

from . import conversations as cv
from . import requests as rq
from . import sync
from .outbox import Outbox
from .router.core import (
    Backpressure, MessageReceived, PeerExchange, Published, Router, Validation,
    default_message_id,
)
from .router.messages import SIGNING_DOMAIN, Message, signing_data
from .router.params import PROTOCOLS, GossipParams
from .router.signing import verify_ed25519
from .strangers import Strangers

MESH_PROTOCOLS = PROTOCOLS  # preference order: 1.2, 1.1, 1.0
LINK_RETRIES = (0.5, 1.0, 2.0, 4.0)  # seconds between attempts to open our stream
TARGET_MEMBER_PEERS = 3  # a conversation dials members until this many are connected
DIAL_BACKOFF = (2.0, 30.0)  # seconds, first and cap
SYNC_INTERVAL_S = 30.0  # anti-entropy with one member per conversation
SYNC_MIN_GAP_S = 5.0  # between two syncs of one conversation with one peer
# A recipient still owing a receipt this long after we first saw it owed (and
# connected) is synced with: the receipt or the message was lost.
OUTBOX_SYNC_AFTER_S = 10.0
GAP_GRACE_S = 1.0  # gossip reorders; a gap still open after this triggers a sync
# Receipts go out batched: in a direct chat soon (one reader), in a room at most once
# per interval per member, so their volume grows with the members, not the messages.
RECEIPT_FLUSH_S = 0.2
ROOM_RECEIPT_FLUSH_S = 2.0
MAX_HELD_RECEIPTS = 1024  # per conversation, while no member is reachable
PROVIDE_EVERY_S = 600.0
MAX_DEBUG_MESSAGES = 1000
OUTBOX_PAGE = 1000  # pending deliveries read per storage call at start
OPENED_CACHE = 4096
STORAGE_TIMEOUT = 5.0


# Peer ids are converted on every frame and message (base58 in pure Python, about 5 µs
# each, about 6% of a node's CPU under load); the same few peers recur, so they are
# remembered. Bounded: ids from the wire can be anything.
@functools.lru_cache(maxsize=4096)
def peer_str(raw: bytes) -> str:
    return identity._b58encode(raw)


@functools.lru_cache(maxsize=4096)
def peer_bytes(peer: str) -> bytes:
    return identity._b58decode(peer)


@dataclass
class Conversation:
    keys: cv.Keys
    name: str
    secret: bytes
    members: set[str]
    next_seq: int = 1
    lock: trio.Lock = field(default_factory=trio.Lock)
    # Per author: every seq up to [0] is held, plus the seqs in [1] above it.
    held: dict[str, tuple[int, set[int]]] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.keys.id

    @property
    def kind(self) -> str:
        return self.keys.kind


@dataclass
class _Link:
    wake: trio.Event = field(default_factory=trio.Event)
    starting: bool = False  # a link task runs for it
    outbound: bool = False  # our meshsub stream to it is open
    inbound: int = 0  # its meshsub streams to us


class Gossip(Strangers, Actor):
    name = "gossip"

    def __init__(self, home: Any = None, config: dict[str, Any] | None = None) -> None:
        super().__init__(home, config)
        gcfg = (config or {}).get("gossip", {})
        self.params = GossipParams(heartbeat_s=float(gcfg.get("heartbeat_s", 1.0)))
        self.me = ""
        self.router: Router | None = None
        self.streams: Any = None
        self.convs: dict[str, Conversation] = {}
        self.by_topic: dict[str, Conversation] = {}
        self.debug_topics: dict[str, deque[dict[str, Any]]] = {}
        self.links: dict[str, _Link] = {}
        self.connected: set[str] = set()
        self.protocols: dict[str, list[str]] = {}  # from identify
        self.addrs: dict[str, list[str]] = {}
        self.outbox = Outbox(OUTBOX_SYNC_AFTER_S)
        self.unsent: dict[str, str] = {}  # message id -> conversation (not yet published)
        self.counters: Counter[str] = Counter()
        self.loaded = trio.Event()
        self._opened: dict[bytes, cv.Opened] = {}
        self._receipts: dict[str, list[str]] = {}
        self._syncing: set[tuple[str, str]] = set()
        self._last_sync: dict[tuple[str, str], float] = {}
        self._dial_next: dict[str, tuple[float, float]] = {}  # peer -> (when, backoff)
        self._topic_peers_seen: dict[str, set[str]] = {}
        self._dht_ok = True
        self._provided: dict[str, float] = {}
        self._strangers_init()  # message requests, blocks, profiles: strangers.py

    # -- lifecycle ---------------------------------------------------------------------
    def healthy(self) -> bool:
        return self.router is not None

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"heartbeat_s": self.params.heartbeat_s,
                               "conversations": len(self.convs),
                               "peers": len(self.links),
                               "streams_out": sum(ln.outbound for ln in self.links.values()),
                               "counters": dict(self.counters),
                               "undelivered": len(self.outbox),
                               "strangers": self._strangers_status()}
        if self.router is not None:
            out["router"] = self.router.statistics()
        if self.streams is not None:
            out["streams"] = self.streams.statistics()
        return out

    async def run(self) -> None:
        from p2pm.services.transport.streams import ProtocolSpec, open_streams

        assert self.runtime is not None
        ident = await self.call_until_answered("keystore", "identity")
        self.me = ident["peer_id"]
        self.router = Router(peer_bytes(self.me), verify=verify_ed25519,
                             rng=random.Random(), validate=self._validate,
                             params=self.params)
        mesh = ProtocolSpec(messages=True, max_message=self.params.max_rpc_size)
        specs = {p: mesh for p in MESH_PROTOCOLS}
        specs[sync.PROTOCOL] = ProtocolSpec(messages=True, max_message=sync.MAX_FRAME)
        specs[rq.PROTOCOL] = ProtocolSpec(messages=True, max_message=rq.MAX_FRAME)
        async with open_streams(self.runtime.endpoints, "gossip", specs, wait=None,
                                ctx=self.runtime.ctx) as streams:
            self.streams = streams
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._accept_loop)
                nursery.start_soon(self._heartbeat_loop)
                nursery.start_soon(self._receipt_loop)
                await self._load()
                nursery.start_soon(self._initial_peers)
                self.log.info("gossip.ready", peer_id=self.me, conversations=len(self.convs))
                await trio.sleep_forever()

    async def _storage(self, method: str, **params: Any) -> Any:
        return await self.call("storage", method, params, timeout=STORAGE_TIMEOUT)

    async def _sign(self, domain: str, data: bytes) -> bytes:
        got = await self.call("keystore", "sign", {"domain": domain, "data": data})
        return wire.b64d(got["signature"], "keystore signature")

    def _now(self) -> float:
        return trio.current_time()

    def spawn(self, fn: Any, *args: Any) -> None:
        """A background task whose failure is logged, never fatal to the actor: peer
        input and other actors' errors must not take gossip down."""
        async def guarded() -> None:
            try:
                await fn(*args)
            except Exception:
                self.counters["task_crashed"] += 1
                self.log.error("gossip.task_crashed", exc=True, task=fn.__name__)
        super().spawn(guarded)

    # -- loading state -----------------------------------------------------------------
    async def _load(self) -> None:
        listed = (await self.call_until_answered("storage", "conversation_list"))["conversations"]
        for entry in listed:
            if await self._kv_get(f"gossip.left.{entry['id']}") is not None:
                continue
            full = await self._storage("conversation_get", id=entry["id"])
            await self._register(full)
        by_message: dict[str, set[str]] = {}
        after = None
        while True:  # every pending delivery, a page at a time
            page = (await self._storage("outbox_due", now=time.time() + 10 * 365 * 86400,
                                        limit=OUTBOX_PAGE, after=after))["entries"]
            for e in page:
                by_message.setdefault(e["message_id"], set()).add(e["recipient"])
            if len(page) < OUTBOX_PAGE:
                break
            after = {k: page[-1][k] for k in ("next_attempt_at", "message_id", "recipient")}
        for mid, recipients in by_message.items():
            try:
                m = await self._storage("message_get", id=mid)
            except errors.BusError:
                continue
            if m["author"] == self.me and m["conversation"] in self.convs:
                self.outbox.add(mid, m["conversation"], m["seq"], recipients, self._now())
                if m["state"] == "pending":
                    self.unsent[mid] = m["conversation"]
        for conv in list(self.convs.values()):
            await self._owe_first_members(conv, conv.members - {self.me})
        await self._strangers_load()
        self.loaded.set()

    async def _register(self, stored: dict[str, Any]) -> Conversation:
        secret = wire.b64d(stored["secret"], "secret") if isinstance(
            stored["secret"], str) else stored["secret"]
        keys = cv.Keys.derive(stored["kind"], secret)
        conv = self.convs.get(keys.id)
        if conv is None:
            conv = Conversation(keys, stored.get("name", ""), secret,
                                set(stored.get("members", [])))
            ranges = (await self._storage("author_ranges", conversation=keys.id))["authors"]
            for author, info in ranges.items():
                contiguous = int(info["contiguous"])
                above: set[int] = set()
                for lo, hi in info["ranges"]:
                    if hi > contiguous and hi - lo < 10_000:
                        above.update(range(max(lo, contiguous + 1), hi + 1))
                conv.held[author] = (contiguous, above)
            if self.me in ranges:
                conv.next_seq = int(ranges[self.me]["max_seq"]) + 1
            self.convs[keys.id] = conv
            self.by_topic[keys.topic] = conv
            assert self.router is not None
            self.router.subscribe(keys.topic, self._now())
            self._kick()
        else:
            conv.members |= set(stored.get("members", []))
        return conv

    async def _kv_get(self, key: str) -> bytes | None:
        try:
            got = await self._storage("kv_get", key=key)
        except errors.BusError as exc:
            if exc.code == errors.NOT_FOUND:
                return None
            raise
        return wire.b64d(got["value"], "value")

    def _conv(self, conversation: str) -> Conversation:
        if not isinstance(conversation, str) or conversation not in self.convs:
            raise errors.not_found(f"no conversation {conversation!r}")
        return self.convs[conversation]

    # -- peers and links ---------------------------------------------------------------
    async def _initial_peers(self) -> None:
        peers = await self.call_until_answered("transport", "peers")
        for p in peers:
            self._peer_up(p["peer_id"], p.get("protocols") or [])

    @on_event("transport.peer")
    async def _on_transport_peer(self, topic: str, data: dict[str, Any]) -> None:
        if self.router is None or not isinstance(data, dict):
            return
        peer = data.get("peer_id")
        if not isinstance(peer, str):
            return
        if topic.endswith(".disconnected"):
            self.connected.discard(peer)
            return
        if topic.endswith(".identified"):
            self.protocols[peer] = [p for p in data.get("protocols") or []
                                    if isinstance(p, str)]
            addrs = [a for a in data.get("addrs") or [] if isinstance(a, str)]
            if addrs and any(peer in c.members for c in self.convs.values()):
                await self._learn_addrs(peer, addrs)
        self._peer_up(peer, self.protocols.get(peer, []))

    async def resync(self, source: str, reason: str) -> None:
        if source == "transport" and self.router is not None:
            self.spawn(self._initial_peers)

    def _peer_up(self, peer: str, protocols: list[str], after: float = 0.0) -> None:
        if peer == self.me:
            return
        self.connected.add(peer)
        if protocols:
            self.protocols[peer] = protocols
        link = self.links.get(peer)
        if link is None or not link.outbound:
            if link is None:
                self.links[peer] = _Link()
            if not self.links[peer].starting:
                self.links[peer].starting = True
                self.spawn(self._run_link, peer, after)

    async def _run_link(self, peer: str, after: float = 0.0) -> None:
        """Our meshsub stream to `peer`: opened once, then sends what the router
        queues for it, as the stream's credit allows. When it dies while the peer stays
        connected (its gossip restarted, say), it is opened again: the peer's new
        inbound stream may well have come before the old one's reset, and would not."""
        from p2pm.services.transport.streams import StreamError

        assert self.router is not None
        link = self.links[peer]
        stream = None
        was_up = False
        try:
            await trio.sleep(after)
            # Identify usually names the peer's protocols right after connecting.
            with trio.move_on_after(2.0):
                while not any(p in self.protocols.get(peer, []) for p in MESH_PROTOCOLS):
                    await trio.sleep(0.05)
            known = self.protocols.get(peer, [])
            order = [p for p in MESH_PROTOCOLS if p in known] if known \
                else list(MESH_PROTOCOLS)
            # A refusal right after a transport restart (our registration not yet
            # renewed) is retried while the peer stays connected. Only while it does:
            # opening a stream dials, and a peer that hung up must not be called back.
            for delay in LINK_RETRIES:
                for proto in order:
                    if peer not in self.connected:
                        break
                    try:
                        stream = await self.streams.open_stream(proto, peer=peer,
                                                                timeout=10)
                        break
                    except StreamError as exc:
                        self.log.debug("gossip.link_refused", peer=peer, protocol=proto,
                                       error=exc.message)
                if stream is not None or peer not in self.connected:
                    break
                await trio.sleep(delay)
            if stream is None:
                return
            pb = peer_bytes(peer)
            self.router.add_peer(pb, stream.protocol or order[0], outbound=True,
                                 now=self._now())
            link.outbound = was_up = True
            self.log.info("gossip.peer_up", peer=peer, protocol=stream.protocol)
            self._kick()
            ended: list[str] = []
            async with trio.open_nursery() as tasks:
                tasks.start_soon(self._link_send, link, pb, stream, tasks.cancel_scope,
                                 ended)
                tasks.start_soon(self._link_watch, stream, tasks.cancel_scope, ended)
            self.log.info("gossip.peer_down", peer=peer, error=ended[0] if ended else "")
        except (StreamError, trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            self.log.info("gossip.peer_down", peer=peer, error=str(exc))
        finally:
            link.starting = False
            link.outbound = False
            self._drop_peer(peer)
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await stream.reset()
            if was_up and peer in self.connected and self.router is not None:
                self._peer_up(peer, self.protocols.get(peer, []), after=LINK_RETRIES[0])

    async def _link_send(self, link: _Link, pb: bytes, stream: Any,
                         scope: trio.CancelScope, ended: list[str]) -> None:
        from p2pm.services.transport.streams import StreamError

        assert self.router is not None
        try:
            while True:
                await link.wake.wait()
                link.wake = trio.Event()
                for out in self.router.flush([pb]):
                    await stream.send(out.frame)
        except (StreamError, trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            ended.append(str(exc))
        scope.cancel()

    async def _link_watch(self, stream: Any, scope: trio.CancelScope,
                          ended: list[str]) -> None:
        """Nothing comes back on our own stream: it returns when the stream dies
        (closed or reset by the remote, or a transport restart), which a sender
        waiting for work would only notice at its next send."""
        from p2pm.services.transport.streams import StreamError

        try:
            while True:
                await stream.receive()
        except (StreamError, trio.EndOfChannel, trio.ClosedResourceError) as exc:
            ended.append(str(exc) or "closed by the remote")
        scope.cancel()

    def _drop_peer(self, peer: str) -> None:
        link = self.links.get(peer)
        if link is not None and (link.starting or link.outbound or link.inbound):
            return
        self.links.pop(peer, None)
        self._topic_peers_seen.pop(peer, None)
        if self.router is not None:
            self._on_router_events(self.router.remove_peer(peer_bytes(peer), self._now()),
                                   peer)

    def _kick(self) -> None:
        """Wake the link of every peer the router has queued something for."""
        if self.router is None:
            return
        for pb in self.router.pending_peers():
            link = self.links.get(peer_str(pb))
            if link is not None:
                link.wake.set()

    async def _accept_loop(self) -> None:
        async for stream in self.streams.inbound():
            if stream.protocol == sync.PROTOCOL:
                self.spawn(self._serve_sync, stream)
            elif stream.protocol in MESH_PROTOCOLS:
                self.spawn(self._mesh_inbound, stream)
            elif stream.protocol == rq.PROTOCOL:
                self.spawn(self._serve_request, stream)
            else:
                await stream.reset()

    async def _mesh_inbound(self, stream: Any) -> None:
        from p2pm.services.transport.streams import StreamError

        assert self.router is not None
        peer = stream.peer
        try:
            pb = peer_bytes(peer)
        except ValueError:
            await stream.reset()
            return
        link = self.links.setdefault(peer, _Link())
        link.inbound += 1
        self.router.add_peer(pb, stream.protocol, outbound=False, now=self._now())
        self._peer_up(peer, self.protocols.get(peer, []))
        try:
            async for frame in stream:
                events = self.router.handle_rpc(pb, frame, self._now())
                self._on_router_events(events, peer)
                self._check_new_subscriptions(peer)
                self._kick()
        except (StreamError, trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            link.inbound -= 1
            self._drop_peer(peer)

    async def _heartbeat_loop(self) -> None:
        while True:
            await trio.sleep(self.params.heartbeat_s)
            if self.router is not None:
                self._on_router_events(self.router.heartbeat(self._now()), None)
                self._kick()

    def _check_new_subscriptions(self, peer: str) -> None:
        """A peer newly subscribed to one of our conversations is a member we just
        met: reconcile with it (the smaller peer id starts, so one sync suffices)."""
        assert self.router is not None
        pb = peer_bytes(peer)
        seen = self._topic_peers_seen.setdefault(peer, set())
        for topic, conv in self.by_topic.items():
            if topic not in seen and pb in self.router.topic_peers(topic):
                seen.add(topic)
                if conv.kind == "direct" and peer not in conv.members:
                    continue  # not a member: it cannot sync, and gets nothing
                if self.me < peer or conv.kind == "direct":
                    self.spawn(self._sync_with, peer, conv)

    # -- the router's hooks and events -------------------------------------------------
    def _validate(self, msg: Message) -> Validation:
        topic = msg.topic or ""
        if topic in self.debug_topics:
            return Validation.ACCEPT
        conv = self.by_topic.get(topic)
        if conv is None:
            return Validation.IGNORE
        try:
            opened = cv.open_envelope(conv.keys, msg.data or b"")
        except cv.EnvelopeError as exc:
            self.counters["rejected_envelope"] += 1
            self.log.info("gossip.rejected", reason=str(exc), conversation=conv.id)
            return Validation.REJECT
        if peer_str(msg.from_ or b"") != opened.author:
            self.counters["rejected_author_mismatch"] += 1
            return Validation.REJECT
        if conv.kind == "direct" and opened.author not in conv.members:
            self.counters["rejected_non_member"] += 1
            return Validation.REJECT
        if len(self._opened) >= OPENED_CACHE:
            self._opened.clear()
        self._opened[default_message_id(msg)] = opened
        return Validation.ACCEPT

    def _on_router_events(self, events: list[Any], peer: str | None) -> None:
        for ev in events:
            if isinstance(ev, MessageReceived):
                topic = ev.topic
                if topic in self.debug_topics:
                    self.debug_topics[topic].append({
                        "from": peer_str(ev.message.from_ or b""), "data": ev.message.data,
                        "seqno": ev.message.seqno})
                    continue
                conv = self.by_topic.get(topic)
                opened = self._opened.pop(ev.msg_id, None)
                if conv is not None and opened is not None:
                    self.spawn(self._accept, conv, opened, ev.message.data or b"",
                               peer_str(ev.source))
            elif isinstance(ev, PeerExchange):
                self.counters["px_received"] += 1

    # -- receiving ---------------------------------------------------------------------
    async def _accept(self, conv: Conversation, opened: cv.Opened, envelope: bytes,
                      source: str | None) -> bool:
        """Keep a verified envelope; True if it was new."""
        if opened.kind == "r":
            await self._apply_receipt(conv, opened)
            return False
        if opened.author == self.me:
            return False
        try:
            got = await self._storage("message_put", id=opened.id, conversation=conv.id,
                                      author=opened.author, seq=opened.seq, ts=opened.ts,
                                      body=envelope, state="received")
        except errors.BusError as exc:
            self.counters["store_refused"] += 1
            self.log.warning("gossip.store_refused", id=opened.id, error=exc.message)
            return False
        if not got["stored"]:
            self.counters["duplicates"] += 1
            return False
        self.counters["received"] += 1
        self.publish("gossip.message.received", {
            "id": opened.id, "conversation": conv.id, "author": opened.author,
            "body": opened.text, "ts": opened.ts})
        self._receipts.setdefault(conv.id, []).append(opened.id)
        if opened.author not in conv.members:
            self._add_members(conv, {opened.author})
        if self._note_held(conv, opened.author, opened.seq) and source is not None:
            self.spawn(self._sync_on_gap, conv, opened.author, source)
        return True

    def _note_held(self, conv: Conversation, author: str, seq: int) -> bool:
        """Record (author, seq); True if it leaves a gap below it."""
        contiguous, above = conv.held.get(author, (0, set()))
        if seq <= contiguous:
            return False
        above.add(seq)
        while contiguous + 1 in above:
            contiguous += 1
            above.discard(contiguous)
        conv.held[author] = (contiguous, above)
        return bool(above)

    async def _sync_on_gap(self, conv: Conversation, author: str, source: str) -> None:
        await trio.sleep(GAP_GRACE_S)
        if conv.held.get(author, (0, set()))[1]:
            self.counters["gap_syncs"] += 1
            await self._sync_with(source, conv, force=True)

    def _add_members(self, conv: Conversation, peers: set[str]) -> None:
        new = peers - conv.members
        if not new:
            return
        alone = not conv.members - {self.me}
        conv.members |= new
        self.spawn(self._save_members, conv)
        if alone:
            self.spawn(self._owe_first_members, conv, new - {self.me})

    async def _owe_first_members(self, conv: Conversation, members: set[str]) -> None:
        """Our messages written while we knew no other member (a room's creator before
        anyone joined, or a joiner before it heard of anyone but the inviter...) got no
        delivery queue, so they would stay "sent" for good: the members we know now
        owe a receipt for them, which a sync answers at once if they hold them. Run
        when the first members are learnt, and at start for what a crash in between
        left without a queue."""
        if not members:
            return
        seq = 1
        async with conv.lock:  # a post in progress now has its recipients already
            while True:
                page = await self._storage("messages_unqueued", conversation=conv.id,
                                           author=self.me, from_seq=seq, limit=500)
                for m in page["messages"]:
                    await self._storage("outbox_add", message_id=m["id"],
                                        recipients=sorted(members))
                    self.outbox.add(m["id"], conv.id, m["seq"], members, self._now())
                    seq = max(seq, int(m["seq"]) + 1)
                if not page["more"]:
                    return

    async def _save_members(self, conv: Conversation) -> None:
        try:
            await self._storage("conversation_put", id=conv.id, kind=conv.kind,
                                secret=conv.secret, members=sorted(conv.members),
                                name=conv.name)
        except errors.BusError as exc:
            self.log.warning("gossip.members_not_saved", conversation=conv.id,
                             error=exc.message)

    async def _apply_receipt(self, conv: Conversation, opened: cv.Opened) -> None:
        for mid in opened.ids:
            if self.outbox.owes(mid, opened.author, conv.id):
                await self._delivered_to(mid, opened.author)

    async def _delivered_to(self, mid: str, peer: str) -> None:
        """Storage first (the receipt survives a crash), then the outbox mirror."""
        try:
            await self._storage("outbox_done", message_id=mid, recipient=peer)
        except errors.BusError as exc:
            if exc.code != errors.NOT_FOUND:
                return
        conv_id = self.outbox.delivered(mid, peer)
        if conv_id is not None:
            self.unsent.pop(mid, None)
            await self._set_state(mid, conv_id, "delivered")

    async def _set_state(self, mid: str, conv_id: str, state: str) -> None:
        try:
            got = await self._storage("message_set_state", id=mid, state=state)
        except errors.BusError as exc:
            self.log.warning("gossip.state_not_saved", id=mid, error=exc.message)
            return
        if got["changed"]:
            self.publish("gossip.message.state", {"id": mid, "conversation": conv_id,
                                                  "state": got["state"]})

    async def _receipt_loop(self) -> None:
        last_room_flush = self._now()
        while True:
            await trio.sleep(RECEIPT_FLUSH_S)
            rooms_too = self._now() - last_room_flush >= ROOM_RECEIPT_FLUSH_S
            if rooms_too:
                last_room_flush = self._now()
            for conv_id in list(self._receipts):
                conv = self.convs.get(conv_id)
                if conv is None:
                    self._receipts.pop(conv_id)
                    continue
                if conv.kind == "room" and not rooms_too:
                    continue
                ids = self._receipts.pop(conv_id)
                unsent: list[str] = []
                for i in range(0, len(ids), cv.MAX_RECEIPT_IDS):
                    chunk = ids[i:i + cv.MAX_RECEIPT_IDS]
                    plaintext = cv.receipt_plaintext(conv.id, self.me, time.time(), chunk)
                    try:
                        sig = await self._sign(cv.RECEIPT_DOMAIN, plaintext)
                        if not await self._publish(conv, cv.seal(conv.keys.content_key,
                                                                 sig, plaintext)):
                            unsent += chunk
                    except errors.BusError as exc:
                        self.log.warning("gossip.receipt_failed", error=exc.message)
                        unsent += chunk
                if unsent:
                    # Nobody to tell yet: kept for the next flush, the newest first
                    # (older ones are also acknowledged by the next sync's HAVE).
                    kept = self._receipts.setdefault(conv_id, [])
                    kept[:0] = unsent[-MAX_HELD_RECEIPTS:]
                    del kept[:-MAX_HELD_RECEIPTS]

    # -- publishing --------------------------------------------------------------------
    async def _publish(self, conv: Conversation, envelope: bytes) -> bool:
        """Publish on the conversation's topic; True if some peer will get it."""
        assert self.router is not None
        msg = self.router.new_message(conv.keys.topic, envelope, self._now())
        sig = await self._sign(SIGNING_DOMAIN, signing_data(msg))
        result = self.router.publish_message(dataclasses.replace(msg, signature=sig),
                                             self._now())
        self._kick()
        if isinstance(result, Backpressure):
            self.counters["publish_backpressure"] += 1
            return False
        assert isinstance(result, Published)
        return bool(result.peers)

    async def _publish_own(self, conv: Conversation, mid: str,
                           envelope: bytes | None = None) -> str:
        """Publish one of our stored messages; its state after the attempt."""
        if envelope is None:
            m = await self._storage("message_get", id=mid)
            if m["state"] != "pending":
                self.unsent.pop(mid, None)
                return str(m["state"])
            envelope = wire.b64d(m["body"], "body")
        if await self._publish(conv, envelope):
            self.unsent.pop(mid, None)
            await self._set_state(mid, conv.id, "sent")
            return "sent"
        return "pending"

    # -- RPCs: conversations -----------------------------------------------------------
    async def _ready(self) -> None:
        if self.router is None or not self.loaded.is_set():
            raise errors.unavailable("gossip is starting (waiting for keystore/storage)")

    async def _my_addrs(self) -> list[str]:
        try:
            return list((await self.call("transport", "addrs", timeout=2.0))["addrs"])
        except errors.BusError:
            return []

    @rpc
    async def room_create(self, name: str) -> dict[str, Any]:
        """{"name"} -> {"id", "name", "kind": "room", "invite"}"""
        await self._ready()
        if not _check_name(name).strip():
            raise errors.bad_params("a room needs a name")
        secret = cv.new_room_secret()
        keys = cv.Keys.derive("room", secret)
        await self._storage("conversation_put", id=keys.id, kind="room", secret=secret,
                            members=[self.me], name=name)
        await self._register({"kind": "room", "secret": secret, "name": name,
                              "members": [self.me]})
        invite = await self._invite(self.convs[keys.id])
        return {"id": keys.id, "name": name, "kind": "room", "invite": invite}

    async def _invite(self, conv: Conversation) -> str:
        payload = cv.invite_payload(conv.name, conv.secret, self.me, await self._my_addrs())
        return cv.encode_invite(payload, await self._sign(cv.INVITE_DOMAIN, payload))

    @rpc
    async def room_invite(self, conversation: str) -> dict[str, Any]:
        """{"conversation"} -> {"invite"}: signed by us, carrying the room's id, name
        and secret and our peer id and addresses."""
        await self._ready()
        conv = self._conv(conversation)
        if conv.kind != "room":
            raise errors.bad_params("only rooms have invites")
        return {"invite": await self._invite(conv)}

    @rpc
    async def room_join(self, invite: str) -> dict[str, Any]:
        """{"invite"} -> {"id", "name", "kind": "room"}; joining twice is harmless."""
        await self._ready()
        try:
            inv = cv.decode_invite(invite)
        except cv.InviteError as exc:
            raise errors.bad_params(f"invalid invite: {exc}") from None
        members = {self.me, inv.inviter}
        if inv.id in self.convs:
            members |= self.convs[inv.id].members
        await self._storage("kv_delete", key=f"gossip.left.{inv.id}")
        await self._storage("conversation_put", id=inv.id, kind="room", secret=inv.secret,
                            members=sorted(members), name=inv.name)
        conv = await self._register({"kind": "room", "secret": inv.secret,
                                     "name": inv.name, "members": sorted(members)})
        if inv.inviter != self.me:
            await self._learn_addrs(inv.inviter, list(inv.addrs))
            self.spawn(self._dial, inv.inviter)
        return {"id": conv.id, "name": conv.name, "kind": "room"}

    @rpc
    async def direct_open(self, peer_id: str, addrs: list[str] = [],  # noqa: B006
                          name: str | None = None) -> dict[str, Any]:
        """{"peer_id", "addrs"?, "name"?} -> {"id", "name", "kind": "direct"}; the same
        conversation on both sides, derived from both identities."""
        await self._ready()
        if name is not None:
            _check_name(name)
        secret, keys = await self._direct_keys(peer_id)
        existing = self.convs.get(keys.id)
        label = name if name is not None else (existing.name if existing else peer_id)
        await self._storage("kv_delete", key=f"gossip.left.{keys.id}")
        await self._storage("conversation_put", id=keys.id, kind="direct", secret=secret,
                            members=sorted({self.me, peer_id}), name=label)
        conv = await self._register({"kind": "direct", "secret": secret, "name": label,
                                     "members": [self.me, peer_id]})
        conv.name = label
        await self._absorb_request(peer_id, conv)
        if addrs:
            await self._learn_addrs(peer_id, addrs)
        if peer_id not in self.connected:
            self.spawn(self._dial, peer_id)
        return {"id": conv.id, "name": label, "kind": "direct"}

    @rpc
    async def conversation_leave(self, conversation: str) -> dict[str, Any]:
        """{"conversation"} -> {"left": true}: unsubscribed; history stays stored."""
        await self._ready()
        conv = self._conv(conversation)
        await self._storage("kv_put", key=f"gossip.left.{conv.id}", value=b"1")
        self.convs.pop(conv.id, None)
        self.by_topic.pop(conv.keys.topic, None)
        assert self.router is not None
        self.router.unsubscribe(conv.keys.topic, self._now())
        self._kick()
        return {"left": True}

    @rpc
    async def conversation_list(self) -> list[dict[str, Any]]:
        """{} -> [{"id", "name", "kind", "members", "unread", "last_ts"}, ...]"""
        await self._ready()
        listed = (await self._storage("conversation_list"))["conversations"]
        out = []
        for c in listed:
            if c["id"] not in self.convs:
                continue
            read = await self._kv_get(f"gossip.read.{c['id']}")
            read_ts = float(read) if read else 0.0
            page = (await self._storage("history", conversation=c["id"], limit=200))
            unread = sum(1 for m in page["messages"]
                         if m["state"] == "received" and m["ts"] > read_ts)
            out.append({"id": c["id"], "name": c["name"], "kind": c["kind"],
                        "members": c["members"], "unread": unread, "last_ts": c["last_ts"]})
        return out

    @rpc
    async def mark_read(self, conversation: str) -> dict[str, Any]:
        """{"conversation"} -> {"read_ts"}: everything up to now counts as read."""
        await self._ready()
        conv = self._conv(conversation)
        page = await self._storage("history", conversation=conv.id, limit=1)
        last = max([time.time()] + [m["ts"] for m in page["messages"]])
        await self._storage("kv_put", key=f"gossip.read.{conv.id}", value=repr(last).encode())
        return {"read_ts": last}

    # -- RPCs: messages ----------------------------------------------------------------
    @rpc
    async def post(self, conversation: str, text: str) -> dict[str, Any]:
        """{"conversation", "text"} -> {"id", "state"}: stored (pending) first, then
        published; BAD_PARAMS for empty text or more than 16 KiB, nothing stored."""
        await self._ready()
        try:
            cv.check_text(text)
        except ValueError as exc:
            raise errors.bad_params(str(exc)) from None
        conv = self._conv(conversation)
        async with conv.lock:
            seq, ts = conv.next_seq, time.time()
            plaintext = cv.message_plaintext(conv.id, self.me, seq, ts, text)
            sig = await self._sign(cv.MESSAGE_DOMAIN, plaintext)
            envelope = cv.seal(conv.keys.content_key, sig, plaintext)
            mid = cv.message_id(plaintext)
            recipients = sorted(conv.members - {self.me})
            # Stored and queued in one transaction: a crash in between would leave a
            # message that stays pending and that nobody ever delivers.
            await self._storage("message_put", id=mid, conversation=conv.id, author=self.me,
                                seq=seq, ts=ts, body=envelope, state="pending",
                                recipients=recipients or None)
            conv.next_seq = seq + 1
            if recipients:
                self.outbox.add(mid, conv.id, seq, set(recipients), self._now())
            self.unsent[mid] = conv.id
        state = "pending"
        try:
            state = await self._publish_own(conv, mid, envelope)
        except errors.BusError as exc:
            self.log.warning("gossip.publish_deferred", id=mid, error=exc.message)
        return {"id": mid, "state": state}

    @rpc
    async def history(self, conversation: str, limit: int = 50,
                      before: str | None = None) -> list[dict[str, Any]]:
        """{"conversation", "limit"?, "before"?: message id} ->
        [{"id", "author", "body", "ts", "state", "seq"}, ...] oldest first."""
        await self._ready()
        conv = self._conv(conversation)
        if not 1 <= limit <= 1000:
            raise errors.bad_params("limit must be 1..1000")
        params: dict[str, Any] = {"conversation": conv.id, "limit": limit}
        if before is not None:
            try:
                params["before_ts"] = (await self._storage("message_get", id=before))["ts"]
            except errors.BusError as exc:
                raise errors.bad_params(f"before: {exc.message}") from None
        page = await self._storage("history", **params)
        out = []
        for m in page["messages"]:
            try:
                opened = cv.open_envelope(conv.keys, wire.b64d(m["body"], "body"))
            except cv.EnvelopeError:
                continue
            out.append({"id": m["id"], "author": m["author"], "body": opened.text,
                        "ts": m["ts"], "state": self.asking.shown(conv.id, m["id"], m["state"]),
                        "seq": m["seq"]})
        return out

    @rpc
    async def message_state(self, id: str) -> dict[str, Any]:
        """{"id"} -> {"id", "state", "members": {peer_id: state}}"""
        await self._ready()
        m = await self._storage("message_get", id=id)
        members: dict[str, str] = {}
        state = self.asking.shown(m["conversation"], id, m["state"])
        if m["author"] == self.me:
            for e in (await self._storage("outbox_get", message_id=id))["entries"]:
                members[e["recipient"]] = "delivered" if e["state"] == "done" else (
                    "failed" if e["state"] == "failed" else
                    state if state in ("requested", "refused") else
                    ("sent" if m["state"] != "pending" else "pending"))
        return {"id": id, "state": state, "members": members}

    # -- RPCs: raw pubsub (interop and debugging) -------------------------------------
    @rpc
    async def pubsub_subscribe(self, topic: str) -> dict[str, Any]:
        """{"topic"} -> {"subscribed": true}: join a raw GossipSub topic."""
        await self._ready()
        assert self.router is not None
        if topic in self.by_topic:
            raise errors.bad_params("that topic belongs to a conversation")
        try:
            self.router._check_topic(topic)
        except ValueError as exc:
            raise errors.bad_params(str(exc)) from None
        self.debug_topics.setdefault(topic, deque(maxlen=MAX_DEBUG_MESSAGES))
        self._on_router_events(self.router.subscribe(topic, self._now()), None)
        self._kick()
        return {"subscribed": True}

    @rpc
    async def pubsub_publish(self, topic: str, data: bytes) -> dict[str, Any]:
        """{"topic", "data": b64} -> {"peers": n}: signed through the keystore."""
        await self._ready()
        assert self.router is not None
        if topic not in self.debug_topics:
            raise errors.bad_params("subscribe to the topic first")
        if len(data) > self.params.max_message_size - 1024:
            raise errors.bad_params("data too large")
        msg = self.router.new_message(topic, data, self._now())
        sig = await self._sign(SIGNING_DOMAIN, signing_data(msg))
        result = self.router.publish_message(dataclasses.replace(msg, signature=sig),
                                             self._now())
        self._kick()
        if isinstance(result, Backpressure):
            raise errors.BusError(errors.LIMIT, "peers' queues are full; try again")
        return {"peers": len(result.peers)}

    @rpc
    async def pubsub_messages(self, topic: str) -> list[dict[str, Any]]:
        """{"topic"} -> [{"from", "data": b64, "seqno": b64}, ...] received so far."""
        return list(self.debug_topics.get(topic, ()))

    # -- sync --------------------------------------------------------------------------
    async def _ranges(self, conv: Conversation) -> sync.Ranges:
        got = await self._storage("author_ranges", conversation=conv.id)
        return sync.from_storage(got["authors"])

    async def _share_addrs(self, conv: Conversation) -> dict[str, list[str]]:
        """Ours and the members' addresses we know: how members find each other."""
        shared = {p: self.addrs[p][:sync.MAX_ADDRS] for p in sorted(conv.members)
                  if p in self.addrs and p != self.me}
        mine = await self._my_addrs()
        if mine:
            shared[self.me] = mine[:sync.MAX_ADDRS]
        return dict(list(shared.items())[:sync.MAX_PEERS_ADDRS])

    async def _sync_with(self, peer: str, conv: Conversation, force: bool = False) -> None:
        """Reconcile `conv` with `peer` (at most once per SYNC_MIN_GAP_S unless forced,
        and never twice at once)."""
        from p2pm.services.transport.streams import StreamError

        key = (peer, conv.id)
        now = self._now()
        if key in self._syncing or (
                not force and now - self._last_sync.get(key, -1e9) < SYNC_MIN_GAP_S):
            return
        self._syncing.add(key)
        self._last_sync[key] = now
        try:
            with trio.fail_after(60):
                stream = await self.streams.open_stream(sync.PROTOCOL, peer=peer,
                                                        timeout=10)
                async with stream:
                    mine = await self._ranges(conv)
                    await stream.send(sync.encode(sync.Hello(
                        mine, await self._share_addrs(conv), conv.id,
                        conv.keys.membership_proof(self.me, peer))))
                    hello = sync.decode(await stream.receive())
                    if not isinstance(hello, sync.Hello) or hello.conversation is not None:
                        raise sync.SyncError("expected the responder's HELLO")
                    await self._exchange(stream, conv, peer, mine, hello)
            self.counters["syncs"] += 1
        except (StreamError, sync.SyncError, trio.TooSlowError, trio.EndOfChannel,
                trio.ClosedResourceError, errors.BusError) as exc:
            self.counters["syncs_failed"] += 1
            self.log.info("gossip.sync_failed", peer=peer, conversation=conv.id,
                          error=str(exc))
        finally:
            self._syncing.discard(key)

    async def _serve_sync(self, stream: Any) -> None:
        from p2pm.services.transport.streams import StreamError

        peer = stream.peer
        try:
            with trio.fail_after(60):
                hello = sync.decode(await stream.receive())
                if not isinstance(hello, sync.Hello) or hello.conversation is None:
                    raise sync.SyncError("expected HELLO with a conversation")
                conv = self.convs.get(hello.conversation)
                if conv is None or not hmac.compare_digest(
                        hello.proof or b"", conv.keys.membership_proof(peer, self.me)):
                    self.counters["sync_refused"] += 1
                    await stream.reset()
                    return
                if conv.kind == "direct" and peer not in conv.members:
                    self.counters["sync_refused"] += 1
                    await stream.reset()
                    return
                mine = await self._ranges(conv)
                await stream.send(sync.encode(sync.Hello(mine, await self._share_addrs(conv))))
                await self._exchange(stream, conv, peer, mine, hello)
                await stream.close()
            self.counters["syncs_served"] += 1
        except (StreamError, sync.SyncError, trio.TooSlowError, trio.EndOfChannel,
                trio.ClosedResourceError, errors.BusError) as exc:
            self.counters["syncs_failed"] += 1
            self.log.info("gossip.sync_failed", peer=peer, error=str(exc))
            await stream.reset()

    async def _exchange(self, stream: Any, conv: Conversation, peer: str,
                        mine: sync.Ranges, hello: sync.Hello) -> None:
        """Both sides after the HELLOs: send what they lack, take what we lack, then
        tell what we hold now (a receipt for everything it covers)."""
        # In a room, whoever a member vouches for (by sharing its addresses) is a
        # member too; a direct chat's members are fixed.
        joined = {peer} | (set(hello.addrs) if conv.kind == "room" else set())
        for p, addrs in hello.addrs.items():
            if p != self.me:
                await self._learn_addrs(p, addrs, persist=p in conv.members | joined)
        if joined - conv.members:
            self._add_members(conv, joined)
        await self._receipts_from_ranges(conv, peer, hello.ranges)
        theirs_done = trio.Event()

        async def send_missing() -> None:
            for author, spans in sync.missing(mine, hello.ranges).items():
                for lo, hi in spans:
                    start = lo
                    while start <= hi:
                        page = await self._storage(
                            "messages_by_author", conversation=conv.id, author=author,
                            from_seq=start, to_seq=hi, limit=sync.ENVS_PER_FRAME)
                        batch = page["messages"]
                        if not batch:
                            break
                        await stream.send(sync.encode(sync.Envs(tuple(
                            wire.b64d(m["body"], "body") for m in batch))))
                        self.counters["sync_envelopes_sent"] += len(batch)
                        for m in batch:
                            if m["author"] == self.me and m["id"] in self.unsent:
                                self.unsent.pop(m["id"], None)
                                await self._set_state(m["id"], conv.id, "sent")
                        start = batch[-1]["seq"] + 1
            await stream.send(sync.encode(sync.Done()))
            await theirs_done.wait()
            await stream.send(sync.encode(sync.Have(await self._ranges(conv))))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_missing)
            got_have = False
            while not got_have:
                frame = sync.decode(await stream.receive())
                if isinstance(frame, sync.Envs):
                    if theirs_done.is_set():
                        raise sync.SyncError("ENVS after DONE")
                    for env in frame.envelopes:
                        try:
                            opened = cv.open_envelope(conv.keys, env)
                        except cv.EnvelopeError:
                            self.counters["sync_rejected_envelope"] += 1
                            continue
                        if opened.kind != "m":
                            self.counters["sync_rejected_envelope"] += 1
                            continue
                        if await self._accept(conv, opened, env, None):
                            self.counters["sync_envelopes_received"] += 1
                elif isinstance(frame, sync.Done):
                    theirs_done.set()
                elif isinstance(frame, sync.Have):
                    if not theirs_done.is_set():
                        raise sync.SyncError("HAVE before DONE")
                    await self._receipts_from_ranges(conv, peer, frame.ranges)
                    got_have = True
                else:
                    raise sync.SyncError("unexpected HELLO")

    async def _receipts_from_ranges(self, conv: Conversation, peer: str,
                                    ranges: sync.Ranges) -> None:
        for mid in self.outbox.covered(conv.id, peer, self.me, ranges):
            await self._delivered_to(mid, peer)

    # -- reaching members --------------------------------------------------------------
    async def _learn_addrs(self, peer: str, addrs: list[str], persist: bool = True) -> None:
        full = [a if "/p2p/" in a else f"{a}/p2p/{peer}" for a in addrs
                if isinstance(a, str) and a.startswith("/")]
        known = self.addrs.setdefault(peer, [])
        new = [a for a in full if a not in known]
        if not new:
            return
        self.addrs[peer] = (new + known)[:sync.MAX_ADDRS]
        if persist:
            try:
                await self._storage("kv_put", key=f"gossip.addrs.{peer}",
                                    value=orjson.dumps(self.addrs[peer]))
            except errors.BusError:
                pass

    async def _addrs_of(self, peer: str) -> list[str]:
        if peer not in self.addrs:
            stored = await self._kv_get(f"gossip.addrs.{peer}")
            if stored:
                self.addrs[peer] = [a for a in orjson.loads(stored) if isinstance(a, str)]
        if not self.addrs.get(peer):
            try:
                contact = await self._storage("contact_get", peer_id=peer)
                await self._learn_addrs(peer, contact.get("addrs") or [])
            except errors.BusError:
                pass
        if not self.addrs.get(peer):
            await self._find_peer(peer)
        return self.addrs.get(peer, [])

    async def _find_peer(self, peer: str) -> list[str]:
        """The peer's current addresses from the DHT (also handed to the transport)."""
        if not self._dht_ok:
            return []
        try:
            found = await self.call("dht", "find_peer", {"peer_id": peer}, timeout=10,
                                    retries=0)
        except errors.BusError as exc:
            if exc.code != errors.NOT_FOUND:
                self._dht_failed(exc)
            return []
        addrs = found.get("addrs") if isinstance(found, dict) else None
        await self._learn_addrs(peer, addrs if isinstance(addrs, list) else [])
        return self.addrs.get(peer, [])

    async def _dial(self, peer: str) -> bool:
        if peer in self.connected or peer == self.me:
            return True
        if peer in self.box.blocked:
            return False
        now = self._now()
        when, backoff = self._dial_next.get(peer, (0.0, DIAL_BACKOFF[0]))
        if now < when:
            return False
        self._dial_next[peer] = (now + backoff, min(backoff * 2, DIAL_BACKOFF[1]))
        tried = await self._addrs_of(peer)
        if await self._dial_any(peer, tried):
            return True
        # Every address we held failed (an invite's addresses outlive the inviter's
        # port): ask the DHT where the peer is now.
        fresh = [a for a in await self._find_peer(peer) if a not in tried]
        return await self._dial_any(peer, fresh)

    async def _dial_any(self, peer: str, addrs: list[str]) -> bool:
        for addr in addrs:
            try:
                await self.call("transport", "dial", {"addr": addr}, timeout=12, retries=0)
                self._dial_next.pop(peer, None)
                self.connected.add(peer)
                return True
            except errors.BusError as exc:
                self.log.debug("gossip.dial_failed", peer=peer, addr=addr, error=exc.message)
        return False

    async def _provide(self, conv: Conversation) -> None:
        """Announce membership in the DHT under the conversation's provider key (a
        no-op while the node runs no DHT that serves it)."""
        if not self._dht_ok:
            return
        try:
            await self.call("dht", "provide", {"key": conv.keys.dht_key.hex()},
                            timeout=40, retries=0)
        except errors.BusError as exc:
            self._dht_failed(exc)
        await self._discover(conv)

    async def _discover(self, conv: Conversation) -> None:
        """Other members from the DHT's provider records for the conversation."""
        if not self._dht_ok:
            return
        try:
            found = await self.call("dht", "find_providers", {"key": conv.keys.dht_key.hex()},
                                    timeout=40, retries=0)
        except errors.BusError as exc:
            self._dht_failed(exc)
            return
        providers = found.get("providers") if isinstance(found, dict) else None
        for prov in providers if isinstance(providers, list) else []:
            peer = prov.get("peer_id") if isinstance(prov, dict) else None
            if isinstance(peer, str) and peer != self.me:
                addrs = prov.get("addrs")
                await self._learn_addrs(peer, addrs if isinstance(addrs, list) else [])
                if peer not in conv.members:
                    self._add_members(conv, {peer})

    def _dht_failed(self, exc: errors.BusError) -> None:
        if exc.code == errors.UNKNOWN_METHOD:
            self._dht_ok = False  # an older dht: members come from invites and sync
        self.log.info("gossip.dht_failed", error=exc.message)

    @every(1.0)
    async def _maintain(self) -> None:
        """Retry what is still owed: publish unsent messages once a member is
        reachable, dial recipients with deliveries due, keep rooms connected, and
        reconcile with one member per conversation now and then."""
        if self.router is None or not self.loaded.is_set():
            return
        for mid, conv_id in list(self.unsent.items()):
            conv = self.convs.get(conv_id)
            if conv is not None and self.router.topic_peers(conv.keys.topic):
                try:
                    await self._publish_own(conv, mid)
                except errors.BusError:
                    pass
        # A direct chat's recipient is dialled; a room's members are reached through
        # the room's mesh and its receipts, and synced with when connected anyway.
        now = self._now()
        for peer, conv_ids in self.outbox.due(now).items():
            convs = [self.convs[c] for c in conv_ids if c in self.convs]
            if peer in self.connected:
                for conv in convs:
                    self.spawn(self._sync_with, peer, conv)
            elif any(c.kind == "direct" for c in convs):
                self.spawn(self._dial, peer)
        for conv in list(self.convs.values()):
            here = [m for m in conv.members if m in self.connected]
            if len(here) < TARGET_MEMBER_PEERS:
                for m in sorted(conv.members - set(here) - {self.me})[:TARGET_MEMBER_PEERS]:
                    self.spawn(self._dial, m)
            if here and now - self._last_sync.get(("*", conv.id), -1e9) > SYNC_INTERVAL_S:
                self._last_sync[("*", conv.id)] = now
                self.spawn(self._sync_with, random.choice(here), conv)
            if self._dht_ok and now - self._provided.get(conv.id, -1e9) > PROVIDE_EVERY_S:
                self._provided[conv.id] = now
                self.spawn(self._provide, conv)
            elif self._dht_ok and not here and \
                    now - self._last_sync.get(("dht", conv.id), -1e9) > SYNC_INTERVAL_S:
                self._last_sync[("dht", conv.id)] = now
                self.spawn(self._discover, conv)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or len(name) > cv.MAX_NAME or not name.isprintable():
        raise errors.bad_params(f"a name is at most {cv.MAX_NAME} printable characters")
    return name
