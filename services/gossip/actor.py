"""The gossip actor: conversations over GossipSub, catch-up sync, outbox and receipts.

It runs the sans-IO GossipSub router (router/core.py) over the transport's stream API,
conversation sealing and opening (conversations.py) and catch-up sync
(`/p2pm/sync/2.0.0`: sync.py, the protocol, and syncing.py, its driver). Storage keeps everything; this actor keeps only caches
and can be restarted at any time.

This module is the shell: it builds the parts, starts their loops, hands each inbound
stream to its owner, schedules maintenance, and exposes the RPCs. Each part has one
job and its own module docstring:

    context.py     what every part shares: identity, router, counters, actor clients
    state.py       the conversations we are in: registry, held seqs, create/join/leave
    membership.py  the one place that adds a member, and why
    links.py       per-peer meshsub streams between the router and the transport
    receive.py     the router's validation hook; storing what arrives; gaps
    delivery.py    the outbox: pending -> sent -> delivered; receipts both ways
    reach.py       addresses, the DHT, dialling with backoff
    syncing.py     catch-up sync sessions, membership proven both ways first
    strangers.py   message requests (`/p2pm/request/1.0.0`), blocks, profiles
    pairing.py     pairwise Olm sessions (`/p2pm/keys/1.0.0`): our prekey bundle,
                   small secrets owed to each peer (channel.py is its protocol core)

Maintenance (`_maintain`, every second) retries what is still owed: it publishes
unsent messages once a member is reachable, syncs with recipients who owe a receipt
too long (or dials them, in a direct chat), keeps TARGET_MEMBER_PEERS members of each
conversation connected while the room's mesh carries the rest, reconciles with one
member per conversation every SYNC_INTERVAL_S, and announces membership in the DHT.

RPC contract: as agreed, each method's docstring shows it. Details the contract left
open: `history(before=...)` takes a message id (the page ends before it);
`conversation_leave` answers {"left": true}, `mark_read` {"read_ts"}; message states
are pending, sent, delivered (ours) and received (others'), and requested or refused
for ours in a direct chat the peer has not opened (strangers.py); `message_state`
gives per member "pending", "sent", "requested", "refused", "delivered" or "failed". Debug RPCs `pubsub_subscribe`,
`pubsub_publish` and `pubsub_messages` speak raw GossipSub on a test topic (interop
with other implementations); a conversation's topic is refused there.

Events: gossip.message.received {"id", "conversation", "author", "body", "ts"},
        gossip.message.state {"id", "conversation", "state"}.
"""

from __future__ import annotations

import random
from typing import Any

import trio

from p2pm.common import errors
from p2pm.common.actor import Actor, every, on_event, rpc
from p2pm.common.clients import DhtClient, KeystoreClient, StorageClient, TransportClient
from p2pm.common.config import settings_of

from . import channel
from . import conversations as cv
from . import requests as rq
from . import sync, syncing
from .context import Context, peer_bytes
from .delivery import Delivery
from .links import MESH_PROTOCOLS, Links
from .membership import Membership, Why
from .pairing import Pairing
from .reach import TARGET_MEMBER_PEERS, Reach
from .receive import Receive
from .router.core import Backpressure, Router
from .router.params import GossipParams
from .router.signing import verify_ed25519
from .state import Conversation, Conversations, Registry
from .strangers import StrangerRpcs, Strangers

SYNC_INTERVAL_S = 30.0  # anti-entropy with one member per conversation
HINTS_PER_ROOM = 32  # peers named by members, proven per maintenance tick at most
STORAGE_TIMEOUT = 5.0
LOAD_WAIT_S = 10.0  # an inbound sync or request waits this long for the conversations to load


class Gossip(StrangerRpcs, Actor):
    name = "gossip"
    keystore = KeystoreClient.dependency()
    storage = StorageClient.dependency(timeout=STORAGE_TIMEOUT)
    transport = TransportClient.dependency()
    dht = DhtClient.dependency()

    def __init__(self, home: Any = None, config: dict[str, Any] | None = None) -> None:
        super().__init__(home, config)
        settings = settings_of(config).gossip
        self.params = GossipParams(heartbeat_s=settings.heartbeat_s)
        self.ctx = Context(self, self.spawn, self.publish, self.log)
        self.registry = Registry()
        self.delivery = Delivery(self.ctx, self.registry)
        self.membership = Membership(self.ctx, self.delivery.owe_first_members)
        self.receive = Receive(self.ctx, self.registry, self.membership, self.delivery,
                               self._sync_with)
        self.links = Links(self.ctx, self.registry, self.receive.on_router_events,
                           self._sync_with)
        self.reach = Reach(self.ctx, self.links.connected, self.membership, self._prove)
        self.conversations = Conversations(self.ctx, self.registry, self.membership,
                                           self.reach, settings.room_invite_ttl_s)
        self.strangers = Strangers(self.ctx, self.registry, self.conversations,
                                   self.receive, self.delivery, self.links, self.reach)
        self.streams: Any = None
        self.pairing = Pairing(self.ctx, lambda: self.streams, self.reach.is_connected)
        self.loaded = trio.Event()
        self.syncer = syncing.Syncer(_SyncPort(self))
        self._last_sync: dict[tuple[str, str], float] = {}  # maintenance's timers
        self.hints: dict[str, set[str]] = {}  # room -> peers named by members, to prove

    # what the sync session (and tests) read of the parts
    @property
    def me(self) -> str:
        return self.ctx.me

    @property
    def router(self) -> Router | None:
        return self.ctx.router if self.ctx.started else None

    @property
    def counters(self) -> Any:
        return self.ctx.counters

    @property
    def convs(self) -> dict[str, Conversation]:
        return self.registry.by_id

    # -- lifecycle ---------------------------------------------------------------------
    def healthy(self) -> bool:
        # Healthy once its conversations are loaded: before that a member's sync or a
        # stranger's request would be answered as if we held no conversation.
        return self.ctx.started and self.loaded.is_set()

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"heartbeat_s": self.params.heartbeat_s,
                               "conversations": len(self.registry),
                               **self.links.statistics(),
                               "counters": dict(self.ctx.counters),
                               "undelivered": len(self.delivery.outbox),
                               "equivocating_authors": dict(self.receive.equivocators),
                               "strangers": self.strangers.statistics(),
                               "keys": self.pairing.statistics()}
        if self.ctx.started:
            out["router"] = self.ctx.router.statistics()
        out["sync"] = self.syncer.statistics()
        if self.streams is not None:
            out["streams"] = self.streams.statistics()
        return out

    async def run(self) -> None:
        from p2pm.common.streams import ProtocolSpec, open_streams

        assert self.runtime is not None
        me = (await self.keystore.until_answered().identity()).peer_id
        self.ctx.start(me, Router(peer_bytes(me), verify=verify_ed25519,
                                  rng=random.Random(), validate=self.receive.validate,
                                  params=self.params))
        mesh = ProtocolSpec(messages=True, max_message=self.params.max_rpc_size)
        specs = {p: mesh for p in MESH_PROTOCOLS}
        specs[sync.PROTOCOL] = ProtocolSpec(messages=True, max_message=sync.MAX_FRAME)
        specs[rq.PROTOCOL] = ProtocolSpec(messages=True, max_message=rq.MAX_FRAME)
        specs[channel.PROTOCOL] = ProtocolSpec(messages=True, max_message=channel.MAX_FRAME)
        async with open_streams(self.runtime.endpoints, "gossip", specs, wait=None,
                                ctx=self.runtime.ctx) as streams:
            self.streams = self.links.streams = streams
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._accept_loop)
                nursery.start_soon(self._heartbeat_loop)
                nursery.start_soon(self.delivery.receipt_loop)
                await self._load()
                nursery.start_soon(self._initial_peers)
                self.log.info("gossip.ready", peer_id=me, conversations=len(self.registry))
                await trio.sleep_forever()

    def spawn(self, fn: Any, *args: Any) -> None:
        """A background task whose failure is logged, never fatal to the actor: peer
        input and other actors' errors must not take gossip down. `except*`: a task whose
        nursery saw a peer's reset while the actor was being stopped ends in a group of
        that error and Cancelled; the error is logged here and Cancelled goes on up
        (with `except Exception` the whole group escaped, and the actor's stop raised
        the peer's reset)."""
        async def guarded() -> None:
            try:
                await fn(*args)
            except* Exception:
                self.ctx.counters["task_crashed"] += 1
                self.log.error("gossip.task_crashed", exc=True, task=fn.__name__)
        super().spawn(guarded)

    async def _load(self) -> None:
        await self.conversations.load(await self.storage.until_answered().conversation_list())
        await self.delivery.load()
        await self.strangers.load()
        await self.pairing.load()
        self.loaded.set()

    async def _ready(self) -> None:
        if not self.ctx.started or not self.loaded.is_set():
            raise errors.unavailable("gossip is starting (waiting for keystore/storage)")

    # -- peers and streams -------------------------------------------------------------
    async def _initial_peers(self) -> None:
        for p in await self.transport.until_answered().peers():
            self.links.peer_up(p["peer_id"], p.get("protocols") or [])

    @on_event("transport.peer")
    async def _on_transport_peer(self, topic: str, data: dict[str, Any]) -> None:
        if not self.ctx.started or not isinstance(data, dict):
            return
        peer = data.get("peer_id")
        if not isinstance(peer, str):
            return
        if topic.endswith(".disconnected"):
            self.links.disconnected(peer)
            return
        if topic.endswith(".identified"):
            self.links.identified(peer, data.get("protocols") or [])
            addrs = [a for a in data.get("addrs") or [] if isinstance(a, str)]
            if addrs and any(peer in c.members for c in self.registry):
                await self.reach.learn_addrs(peer, addrs)
        self.links.peer_up(peer, self.links.protocols.get(peer, []))

    async def resync(self, source: str, reason: str) -> None:
        if source == "transport" and self.ctx.started:
            self.spawn(self._initial_peers)

    async def _accept_loop(self) -> None:
        async for stream in self.streams.inbound():
            if stream.protocol == sync.PROTOCOL:
                self.spawn(self._serve_sync, stream)
            elif stream.protocol in MESH_PROTOCOLS:
                self.spawn(self.links.serve_inbound, stream)
            elif stream.protocol == rq.PROTOCOL:
                self.spawn(self._serve_request, stream)
            elif stream.protocol == channel.PROTOCOL:
                self.spawn(self._serve_keys, stream)
            else:
                await stream.reset()

    async def _heartbeat_loop(self) -> None:
        while True:
            await trio.sleep(self.params.heartbeat_s)
            if self.ctx.started:
                self.receive.on_router_events(self.ctx.router.heartbeat(self.ctx.now()),
                                              None)
                self.links.kick()

    # -- RPCs: conversations -----------------------------------------------------------
    @rpc
    async def room_create(self, name: str) -> dict[str, Any]:
        """{"name"} -> {"id", "name", "kind": "room", "invite"}"""
        await self._ready()
        return await self.conversations.create_room(name)

    @rpc
    async def room_invite(self, conversation: str,
                          ttl_s: float | None = None) -> dict[str, Any]:
        """{"conversation", "ttl_s"?} -> {"invite"}: signed by us, carrying the room's
        id, name and secret and our peer id and addresses, good for `ttl_s` seconds
        (else gossip.room_invite_ttl_s)."""
        await self._ready()
        conv = self.registry.require(conversation)
        return {"invite": await self.conversations.invite(conv, ttl_s)}

    @rpc
    async def room_join(self, invite: str) -> dict[str, Any]:
        """{"invite"} -> {"id", "name", "kind": "room"}; joining twice is harmless."""
        await self._ready()
        return await self.conversations.join_room(invite)

    @rpc
    async def direct_open(self, peer_id: str, addrs: list[str] = [],  # noqa: B006
                          name: str | None = None) -> dict[str, Any]:
        """{"peer_id", "addrs"?, "name"?} -> {"id", "name", "kind": "direct"}; the same
        conversation on both sides, derived from both identities."""
        await self._ready()
        return await self.conversations.open_direct(peer_id, addrs, name)

    @rpc
    async def conversation_leave(self, conversation: str) -> dict[str, Any]:
        """{"conversation"} -> {"left": true}: unsubscribed; history stays stored."""
        await self._ready()
        await self.conversations.leave(self.registry.require(conversation))
        return {"left": True}

    @rpc
    async def conversation_list(self, unread: bool = True) -> list[dict[str, Any]]:
        """{"unread"?} -> [{"id", "name", "kind", "members", "unread", "last_ts"}, ...];
        with "unread": false, without the counts (a lookup by name needs none)."""
        await self._ready()
        return await self.conversations.listing(unread)

    @rpc
    async def mark_read(self, conversation: str) -> dict[str, Any]:
        """{"conversation"} -> {"read_ts"}: everything up to now counts as read."""
        await self._ready()
        conv = self.registry.require(conversation)
        return {"read_ts": await self.conversations.mark_read(conv)}

    # -- RPCs: messages ----------------------------------------------------------------
    @rpc
    async def post(self, conversation: str, text: str) -> dict[str, Any]:
        """{"conversation", "text"} -> {"id", "state"}: stored (pending) first, then
        published; BAD_PARAMS for empty text or more than 16 KiB, nothing stored."""
        await self._ready()
        return await self.delivery.post(conversation, text)

    @rpc
    async def history(self, conversation: str, limit: int = 50,
                      before: str | None = None) -> list[dict[str, Any]]:
        """{"conversation", "limit"?, "before"?: message id} ->
        [{"id", "author", "body", "ts", "state", "seq"}, ...] oldest first."""
        await self._ready()
        conv = self.registry.require(conversation)
        return await self.conversations.history(conv, limit, before)

    @rpc
    async def message_state(self, id: str) -> dict[str, Any]:
        """{"id"} -> {"id", "state", "members": {peer_id: state}}"""
        await self._ready()
        return await self.delivery.report(id)

    # -- RPCs: raw pubsub (interop and debugging) -------------------------------------
    @rpc
    async def pubsub_subscribe(self, topic: str) -> dict[str, Any]:
        """{"topic"} -> {"subscribed": true}: join a raw GossipSub topic."""
        await self._ready()
        self.receive.watch_raw(topic)
        self.receive.on_router_events(self.ctx.router.subscribe(topic, self.ctx.now()),
                                      None)
        self.links.kick()
        return {"subscribed": True}

    @rpc
    async def pubsub_publish(self, topic: str, data: bytes) -> dict[str, Any]:
        """{"topic", "data": b64} -> {"peers": n}: signed through the keystore."""
        await self._ready()
        if topic not in self.receive.debug_topics:
            raise errors.bad_params("subscribe to the topic first")
        if len(data) > self.params.max_message_size - 1024:
            raise errors.bad_params("data too large")
        result = await self.delivery.publish(topic, data)
        if isinstance(result, Backpressure):
            raise errors.BusError(errors.LIMIT, "peers' queues are full; try again")
        return {"peers": len(result.peers)}

    @rpc
    async def pubsub_messages(self, topic: str) -> list[dict[str, Any]]:
        """{"topic"} -> [{"from", "data": b64, "seqno": b64}, ...] received so far."""
        return list(self.receive.debug_topics.get(topic, ()))

    # -- sync (syncing.py; the parts as its SyncHost are _SyncPort below) ------------
    async def _sync_with(self, peer: str, conv: Conversation, force: bool = False) -> None:
        await self.syncer.sync_with(peer, conv, force)

    async def _serve_sync(self, stream: Any) -> None:
        if await self._loaded_in_time(stream):
            await self.syncer.serve(stream)

    async def _loaded_in_time(self, stream: Any) -> bool:
        """Streams are accepted from the start, so that none is refused by the transport
        while storage is read; one that arrives before our conversations are loaded
        waits for them (bounded: a peer gives up on a silent stream anyway), since
        answering it then would refuse a member as a stranger, and penalise it."""
        with trio.move_on_after(LOAD_WAIT_S):
            await self.loaded.wait()
            return True
        await stream.reset()
        return False

    async def _serve_request(self, stream: Any) -> None:
        if await self._loaded_in_time(stream):
            await self.strangers.serve(stream)

    async def _serve_keys(self, stream: Any) -> None:
        if await self._loaded_in_time(stream):
            await self.pairing.serve(stream)

    async def _prove(self, peer: str, conv: Conversation) -> None:
        """A peer named by a hint (a DHT provider record): reach it and sync, which
        makes it a member only if it proves it holds the conversation's key."""
        if await self.reach.dial(peer):
            await self._sync_with(peer, conv)

    # -- maintenance -------------------------------------------------------------------
    @every(1.0)
    async def _maintain(self) -> None:
        """Retry what is still owed: publish unsent messages once a member is
        reachable, chase recipients with deliveries due, keep rooms connected, and
        reconcile with one member per conversation now and then."""
        if not self.ctx.started or not self.loaded.is_set():
            return
        await self.delivery.publish_unsent()
        self.pairing.maintain(self.ctx.now())
        # A direct chat's recipient is dialled; a room's members are reached through
        # the room's mesh and its receipts, and synced with when connected anyway.
        now = self.ctx.now()
        for peer, conv_ids in self.delivery.outbox.due(now).items():
            convs = [c for c in map(self.registry.get, conv_ids) if c is not None]
            if self.reach.is_connected(peer):
                for conv in convs:
                    self.spawn(self._sync_with, peer, conv)
            elif any(c.kind == "direct" for c in convs):
                self.spawn(self.reach.dial, peer)
        for conv in self.registry:
            here = self.reach.call_members(conv)
            if here and now - self._last_sync.get(("*", conv.id), -1e9) > SYNC_INTERVAL_S:
                self._last_sync[("*", conv.id)] = now
                self.spawn(self._sync_with, random.choice(here), conv)
            self.reach.announce(conv, not here, now)
            self._prove_hints(conv, len(here))

    def _prove_hints(self, conv: Conversation, connected_members: int) -> None:
        """Peers a proven member named in a sync are asked for their own proof (a
        sync), so a room's members find each other without going through the one who
        invited them. One already connected is synced with on that connection; others
        are dialled only while the room has fewer than TARGET_MEMBER_PEERS members
        connected, as call_members dials: every new connection widens the room's mesh,
        and with it the duplicates and the CPU every message costs. The rest wait for
        a later sync to name them again. Bounded per room (HINTS_PER_ROOM), by the dial
        backoff and by the per-pair sync gap."""
        dials = max(0, TARGET_MEMBER_PEERS - connected_members)
        for peer in sorted(self.hints.pop(conv.id, set()) - conv.members):
            if self.reach.is_connected(peer):
                self.spawn(self._sync_with, peer, conv)
            elif dials > 0:
                dials -= 1
                self.spawn(self._prove, peer, conv)


class _SyncPort:
    """The gossip parts as syncing.SyncHost: what a sync session may read and do."""

    def __init__(self, gossip: Gossip) -> None:
        self._g = gossip

    @property
    def me(self) -> str:
        return self._g.ctx.me

    @property
    def counters(self) -> Any:
        return self._g.ctx.counters

    @property
    def log(self) -> Any:
        return self._g.log

    @property
    def storage(self) -> StorageClient:
        return self._g.ctx.storage

    def conversation(self, conversation_id: str) -> Conversation | None:
        return self._g.registry.get(conversation_id)

    def conversations(self) -> list[Conversation]:
        return list(self._g.registry)

    def now(self) -> float:
        return self._g.ctx.now()

    async def open_sync_stream(self, peer: str) -> Any:
        return await self._g.streams.open_stream(sync.PROTOCOL, peer=peer, timeout=10)

    async def accept_envelope(self, conv: Conversation, opened: cv.Opened,
                              envelope: bytes) -> bool:
        return await self._g.receive.accept(conv, opened, envelope, None)

    def add_proven_member(self, conv: Conversation, peer: str) -> None:
        if conv.kind == "room":  # a direct chat's two members are fixed
            self._g.membership.add(conv, {peer}, Why.SYNC)

    async def learn_addrs(self, conv: Conversation, peer: str, addrs: list[str],
                          persist: bool) -> None:
        await self._g.reach.learn_addrs(peer, addrs, persist=persist)
        if not persist and conv.kind == "room":  # a hint for this room: reach and prove
            hinted = self._g.hints.setdefault(conv.id, set())
            if len(hinted) < HINTS_PER_ROOM:
                hinted.add(peer)

    def known_addrs(self, peer: str) -> list[str]:
        return list(self._g.reach.addrs.get(peer, []))

    async def my_addrs(self) -> list[str]:
        return await self._g.reach.my_addrs()

    async def receipts_from_ranges(self, conv: Conversation, peer: str,
                                   ranges: sync.Ranges) -> None:
        await self._g.delivery.ranges_held(conv, peer, ranges)

    async def sent_by_sync(self, conv: Conversation, message_id: str) -> None:
        await self._g.delivery.sent_by_sync(message_id, conv.id)
