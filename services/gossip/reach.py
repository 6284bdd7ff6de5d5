"""Reaching members: the address book, the DHT, and dialling with backoff.

Members find each other through the inviter's addresses in an invite, the members'
addresses exchanged in every sync HELLO, identify, and the DHT (a provider record
under each conversation's provider key; `find_peer` for a member without known
addresses). A member's addresses are kept in storage (`gossip.addrs.<peer>`), so a
restarted node can call it back; a contact's addresses are tried too.

Dialling a peer that does not answer backs off (`DialBackoff`, no I/O: 2 s doubling
to 30 s), so a member who is away costs one dial per half-minute, not one per
maintenance tick. When every address we held failed (an invite's addresses outlive the
inviter's port), the DHT is asked where the peer is now. A node whose dht actor does
not serve these methods (an older one) stops asking: members then come from invites
and sync alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from p2pm.common import errors

from . import sync
from .context import Context
from .membership import Membership

if TYPE_CHECKING:
    from .state import Conversation

DIAL_BACKOFF = (2.0, 30.0)  # seconds, first and cap
TARGET_MEMBER_PEERS = 3  # a conversation dials members until this many are connected
PROVIDE_EVERY_S = 600.0
DISCOVER_EVERY_S = 30.0  # while no member of a conversation is connected
# Peers whose addresses (or dial backoff) are held in memory. Past it the one learnt
# (or dialled) longest ago is forgotten here: its addresses stay in storage and are
# read again when it is next dialled; a forgotten backoff costs one early dial.
MAX_PEERS = 4096


Prove = Callable[[str, "Conversation"], Awaitable[None]]

class DialBackoff:
    """When each peer may be dialled again: an attempt is allowed at once, the next
    one `first` seconds later, the wait doubling up to `cap` until a dial succeeds."""

    def __init__(self, first: float = DIAL_BACKOFF[0], cap: float = DIAL_BACKOFF[1],
                 max_peers: int = MAX_PEERS) -> None:
        self.first, self.cap, self.max_peers = first, cap, max_peers
        self._next: dict[str, tuple[float, float]] = {}  # peer -> (when, next wait)

    def __len__(self) -> int:
        return len(self._next)

    def attempt(self, peer: str, now: float) -> bool:
        """Whether `peer` may be dialled now; if so the attempt is counted (taken
        before the dial, so two callers at once dial once)."""
        when, wait = self._next.get(peer, (0.0, self.first))
        if now < when:
            return False
        self._next.pop(peer, None)
        self._next[peer] = (now + wait, min(wait * 2, self.cap))
        if len(self._next) > self.max_peers:
            del self._next[next(iter(self._next))]
        return True

    def succeeded(self, peer: str) -> None:
        self._next.pop(peer, None)


class Reach:
    def __init__(self, ctx: Context, connected: set[str], membership: Membership,
                 prove: Prove | None = None) -> None:
        self.ctx = ctx
        # Dial a peer the DHT named and ask it for a membership proof (a sync).
        self.prove = prove
        self.connected = connected  # peers the transport has a connection to (links)
        self.membership = membership
        self.addrs: dict[str, list[str]] = {}  # bounded by MAX_PEERS
        self.backoff = DialBackoff()
        self.blocked: set[str] = set()  # never dialled (strangers.py's block list)
        self.dht_ok = True
        # When each conversation was last provided / looked up in the DHT; bounded by
        # the conversations held (an entry for one left lingers until restart).
        self._provided: dict[str, float] = {}
        self._discovered: dict[str, float] = {}

    def is_connected(self, peer: str) -> bool:
        return peer in self.connected

    async def my_addrs(self) -> list[str]:
        try:
            return list((await self.ctx.transport.with_options(timeout=2.0).addrs()).addrs)
        except errors.BusError:
            return []

    def _remember(self, peer: str, addrs: list[str]) -> None:
        self.addrs.pop(peer, None)
        self.addrs[peer] = addrs
        if len(self.addrs) > MAX_PEERS:
            del self.addrs[next(iter(self.addrs))]

    async def learn_addrs(self, peer: str, addrs: list[str], persist: bool = True) -> None:
        full = [a if "/p2p/" in a else f"{a}/p2p/{peer}" for a in addrs
                if isinstance(a, str) and a.startswith("/")]
        # Held even when empty: a member we heard of is named in our sync HELLOs.
        known = self.addrs.get(peer)
        if known is None:
            self._remember(peer, known := [])
        new = [a for a in full if a not in known]
        if not new:
            return
        self._remember(peer, (new + known)[:sync.MAX_ADDRS])
        if persist:
            try:
                await self.ctx.storage.kv_put(f"gossip.addrs.{peer}",
                                              orjson.dumps(self.addrs[peer]))
            except errors.BusError:
                pass

    async def addrs_of(self, peer: str) -> list[str]:
        if peer not in self.addrs:
            stored = await self.ctx.storage.kv_get(f"gossip.addrs.{peer}")
            if stored:
                self._remember(peer, [a for a in orjson.loads(stored) if isinstance(a, str)])
        if not self.addrs.get(peer):
            try:
                contact = await self.ctx.storage.contact_get(peer_id=peer)
            except errors.BusError:
                contact = None
            if contact is not None:
                await self.learn_addrs(peer, contact.get("addrs") or [])
        if not self.addrs.get(peer):
            await self.find_peer(peer)
        return self.addrs.get(peer, [])

    async def find_peer(self, peer: str) -> list[str]:
        """The peer's current addresses from the DHT (also handed to the transport)."""
        if not self.dht_ok:
            return []
        try:
            found = await self.ctx.dht.with_options(timeout=10, retries=0).find_peer(peer)
        except errors.BusError as exc:
            if exc.code != errors.NOT_FOUND:
                self._dht_failed(exc)
            return []
        addrs = found.get("addrs")
        await self.learn_addrs(peer, addrs if isinstance(addrs, list) else [])
        return self.addrs.get(peer, [])

    async def dial(self, peer: str) -> bool:
        if peer in self.connected or peer == self.ctx.me:
            return True
        if peer in self.blocked:
            return False
        if not self.backoff.attempt(peer, self.ctx.now()):
            return False
        tried = await self.addrs_of(peer)
        if await self._dial_any(peer, tried):
            return True
        # Every address we held failed: ask the DHT where the peer is now.
        fresh = [a for a in await self.find_peer(peer) if a not in tried]
        return await self._dial_any(peer, fresh)

    async def _dial_any(self, peer: str, addrs: list[str]) -> bool:
        # All of them first: the transport then races the direct ones against the
        # peer's relay circuits, where one address at a time would wait out each
        # address a NAT drops (the seconds to the first message to a friend at home).
        if addrs:
            try:
                await self.ctx.transport.with_options(retries=0).add_addrs(peer, addrs[:32])
            except errors.BusError as exc:
                self.ctx.log.debug("gossip.add_addrs_failed", peer=peer, error=exc.message)
        for addr in addrs:
            try:
                await self.ctx.transport.with_options(timeout=12, retries=0).dial(addr)
                self.backoff.succeeded(peer)
                self.connected.add(peer)
                return True
            except errors.BusError as exc:
                self.ctx.log.debug("gossip.dial_failed", peer=peer, addr=addr,
                                   error=exc.message)
        return False

    def call_members(self, conv: Conversation) -> list[str]:
        """The members of `conv` connected now. While they are fewer than
        TARGET_MEMBER_PEERS, a few others are dialled: the room's mesh carries the
        rest."""
        here = [m for m in conv.members if m in self.connected]
        if len(here) < TARGET_MEMBER_PEERS:
            for m in sorted(conv.members - set(here) - {self.ctx.me})[:TARGET_MEMBER_PEERS]:
                self.ctx.spawn(self.dial, m)
        return here

    def announce(self, conv: Conversation, alone: bool, now: float) -> None:
        """Provide our membership in the DHT every PROVIDE_EVERY_S; while no member is
        connected (`alone`), look the others up there every DISCOVER_EVERY_S."""
        if not self.dht_ok or conv.kind == "direct":
            # A direct chat's two peers know each other's ids: a provider record would
            # only tell the DHT who talks to whom.
            return
        if now - self._provided.get(conv.id, -1e9) > PROVIDE_EVERY_S:
            self._provided[conv.id] = now
            self.ctx.spawn(self.provide, conv)
        elif alone and now - self._discovered.get(conv.id, -1e9) > DISCOVER_EVERY_S:
            self._discovered[conv.id] = now
            self.ctx.spawn(self.discover, conv)

    async def provide(self, conv: Conversation) -> None:
        """Announce membership in the DHT under the conversation's provider key (a
        no-op while the node runs no DHT that serves it), then look for the others."""
        if not self.dht_ok:
            return
        try:
            await self.ctx.dht.with_options(timeout=40, retries=0).provide(
                conv.keys.dht_key.hex())
        except errors.BusError as exc:
            self._dht_failed(exc)
        await self.discover(conv)

    async def discover(self, conv: Conversation) -> None:
        """Other members from the DHT's provider records for the conversation."""
        if not self.dht_ok:
            return
        try:
            found = await self.ctx.dht.with_options(timeout=40, retries=0).find_providers(
                conv.keys.dht_key.hex())
        except errors.BusError as exc:
            self._dht_failed(exc)
            return
        providers = found.get("providers")
        for prov in providers if isinstance(providers, list) else []:
            peer = prov.get("peer_id") if isinstance(prov, dict) else None
            if isinstance(peer, str) and peer != self.ctx.me:
                addrs: Any = prov.get("addrs")
                # A hint, not a member: anyone can put a provider record there. The
                # peer becomes a member only by proving it in a sync.
                await self.learn_addrs(peer, addrs if isinstance(addrs, list) else [],
                                       persist=False)
                if peer not in conv.members and self.prove is not None:
                    self.ctx.counters["provider_hints"] += 1
                    self.ctx.spawn(self.prove, peer, conv)

    def _dht_failed(self, exc: errors.BusError) -> None:
        if exc.code == errors.UNKNOWN_METHOD:
            self.dht_ok = False  # an older dht: members come from invites and sync
        self.ctx.log.info("gossip.dht_failed", error=exc.message)
