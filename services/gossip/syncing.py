"""Catch-up sync over streams: drives one `sync.Session` per stream, as initiator
(`Syncer.sync_with`) or responder (`Syncer.serve`), against a narrow view of the
gossip actor (`SyncHost`).

The protocol and its ordering live in sync.py; this module only moves frames between
a stream and a session, reads storage, and hands what arrives to the host. Order of
checks on an inbound stream, cheapest first:

1. the peer id the transport authenticated is a valid peer id;
2. the peer is within its session rate (`SessionLimiter`; a session refused before
   the proof costs REFUSED_SESSION_COST), else the stream is reset unread;
3. OPEN and PROOF, each at most `sync.PRE_PROOF_FRAME` bytes (the length is checked
   before parsing), within PROOF_TIMEOUT_S; the proof is one keyed hash per
   conversation;
4. only then HELLO and the rest (up to `sync.MAX_FRAME`), parsed and validated.

The initiator checks the responder's proof before its own HELLO, so a peer that
merely subscribed to a conversation's topic gets two random-looking frames and a
closed stream. A peer that proved membership is reported to the host
(`add_proven_member`); peers named in a HELLO's `addrs` are address hints only.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from p2pm.common import errors, wire
from p2pm.common.clients import StorageClient
from p2pm.common.streams import StreamError

from . import conversations as cv
from . import sync

SYNC_MIN_GAP_S = 5.0  # between two syncs of one conversation with one peer
PROOF_TIMEOUT_S = 10.0  # OPEN and PROOF both ways; a member answers at once
SESSION_TIMEOUT_S = 60.0
MAX_LAST_SYNC = 4096  # (peer, conversation) pairs remembered for SYNC_MIN_GAP_S
# Inbound sessions per peer: a burst (a peer meeting us syncs each conversation we
# share at once), then a steady rate; anti-entropy needs one per conversation per
# 30 s or so.
SESSION_BURST = 32
SESSION_RATE_PER_S = 1.0
# A session refused before the proof (no proof, a wrong one, an oversized frame)
# costs this many sessions: a member pays 1 a session, a stranger soon waits.
REFUSED_SESSION_COST = 8.0
MAX_LIMITED_PEERS = 1024


class SyncConversation(Protocol):
    """What a session needs of a conversation."""
    @property
    def id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    keys: cv.Keys
    members: set[str]


class SyncHost(Protocol):
    """The gossip actor as the syncer sees it."""
    me: str
    counters: Counter[str]
    log: Any

    def conversation(self, conversation_id: str) -> SyncConversation | None: ...
    def conversations(self) -> Iterable[SyncConversation]: ...
    def now(self) -> float: ...
    storage: StorageClient
    async def open_sync_stream(self, peer: str) -> Any: ...
    async def accept_envelope(self, conv: Any, opened: cv.Opened, envelope: bytes) -> bool:
        """Keep an envelope from a sync (opened and verified); True if it was new."""
    def add_proven_member(self, conv: Any, peer: str) -> None:
        """`peer` proved it holds the conversation's secret."""
    async def learn_addrs(self, conv: Any, peer: str, addrs: list[str], persist: bool
                          ) -> None:
        """Addresses a member shared for `peer` in a sync of `conv`."""
    def known_addrs(self, peer: str) -> list[str]: ...
    async def my_addrs(self) -> list[str]: ...
    async def receipts_from_ranges(self, conv: Any, peer: str, ranges: sync.Ranges) -> None:
        """`peer` holds what `ranges` cover: a receipt for our messages in it."""
    async def sent_by_sync(self, conv: Any, message_id: str) -> None:
        """One of our messages went out in a sync (it may never have been published)."""


@dataclass
class _Bucket:
    tokens: float
    at: float


class SessionLimiter:
    """A token bucket per peer for inbound sync sessions, without I/O.

    Bounded: at most `max_peers` buckets. When the table is full, buckets that have
    refilled completely are forgotten (a fresh one would be the same); if none has,
    the newcomer is charged to one shared overflow bucket, so a crowd of fresh peer
    ids gets one peer's share between them, never a table entry each (so at most
    `max_peers` + 1 buckets)."""

    OVERFLOW = ""

    def __init__(self, rate_per_s: float = SESSION_RATE_PER_S, burst: int = SESSION_BURST,
                 max_peers: int = MAX_LIMITED_PEERS) -> None:
        self.rate, self.burst, self.max_peers = rate_per_s, float(burst), max_peers
        self._buckets: dict[str, _Bucket] = {}
        self.overflowed = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def _level(self, b: _Bucket, now: float) -> float:
        return min(self.burst, b.tokens + max(0.0, now - b.at) * self.rate)

    def allow(self, peer: str, now: float) -> bool:
        """Take one session for `peer` at `now`; False: over its rate, refuse it."""
        if peer not in self._buckets and len(self._buckets) >= self.max_peers:
            for p, b in list(self._buckets.items()):
                if p != self.OVERFLOW and self._level(b, now) >= self.burst:
                    del self._buckets[p]
            if len(self._buckets) >= self.max_peers:
                self.overflowed += 1
                peer = self.OVERFLOW
        b = self._buckets.get(peer)
        if b is None:
            b = self._buckets[peer] = _Bucket(self.burst, now)
        b.tokens, b.at = self._level(b, now), now
        if b.tokens < 1.0:
            return False
        b.tokens -= 1.0
        return True

    def penalise(self, peer: str, now: float, cost: float = REFUSED_SESSION_COST) -> None:
        """Charge `peer` for a refused session (down to one burst in debt at most, so
        even a peer that kept failing is heard again after 2 * burst / rate)."""
        b = self._buckets.get(peer) or self._buckets.get(self.OVERFLOW)
        if b is not None:
            b.tokens, b.at = max(-self.burst, self._level(b, now) - cost), now


class Syncer:
    """Sync sessions for one gossip actor: at most one per (peer, conversation)."""

    def __init__(self, host: SyncHost, limiter: SessionLimiter | None = None) -> None:
        self.host = host
        self.limiter = limiter or SessionLimiter()
        self._syncing: set[tuple[str, str]] = set()
        self._last: dict[tuple[str, str], float] = {}

    def statistics(self) -> dict[str, int]:
        return {"running": len(self._syncing), "limited_peers": len(self.limiter),
                "limiter_overflowed": self.limiter.overflowed}

    def _too_soon(self, key: tuple[str, str], now: float, force: bool) -> bool:
        if key in self._syncing:
            return True
        if not force and now - self._last.get(key, -1e9) < SYNC_MIN_GAP_S:
            return True
        if len(self._last) >= MAX_LAST_SYNC:  # forget pairs past their gap
            for k, at in list(self._last.items()):
                if now - at >= SYNC_MIN_GAP_S:
                    del self._last[k]
            if len(self._last) >= MAX_LAST_SYNC:  # all recent: drop the oldest
                del self._last[min(self._last, key=self._last.__getitem__)]
        return False

    # -- initiator ---------------------------------------------------------------------
    async def sync_with(self, peer: str, conv: SyncConversation, force: bool = False) -> None:
        """Reconcile `conv` with `peer` (at most once per SYNC_MIN_GAP_S unless forced,
        and never twice at once)."""
        host = self.host
        key = (peer, conv.id)
        now = host.now()
        if self._too_soon(key, now, force):
            return
        self._syncing.add(key)
        self._last[key] = now
        session = sync.Session(sync.Role.INITIATOR, host.me, peer,
                               os.urandom(sync.NONCE_BYTES), {conv.id: conv.keys.content_key})
        try:
            with trio.fail_after(SESSION_TIMEOUT_S):
                stream = await host.open_sync_stream(peer)
                async with stream:
                    with trio.fail_after(PROOF_TIMEOUT_S):
                        await stream.send(session.open())
                        session.receive(await stream.receive())
                        await stream.send(session.prove())
                        session.receive(await stream.receive())
                    if conv.kind == "direct" and peer not in conv.members:
                        raise sync.NotAMember("not the other member of this direct chat")
                    await self._exchange(stream, session, conv, peer)
            host.counters["syncs"] += 1
        except sync.NotAMember as exc:
            host.counters["sync_peer_not_member"] += 1
            host.log.info("gossip.sync_refused", peer=peer, conversation=conv.id,
                          error=str(exc))
        except (StreamError, sync.SyncError, trio.TooSlowError, trio.EndOfChannel,
                trio.ClosedResourceError, errors.BusError) as exc:
            host.counters["syncs_failed"] += 1
            host.log.info("gossip.sync_failed", peer=peer, conversation=conv.id,
                          error=str(exc))
        finally:
            self._syncing.discard(key)

    # -- responder ---------------------------------------------------------------------
    async def serve(self, stream: Any) -> None:
        host = self.host
        peer = stream.peer
        if not sync.valid_peer_id(peer):
            host.counters["sync_invalid_peer_id"] += 1
            await stream.reset()
            return
        if not self.limiter.allow(peer, host.now()):
            host.counters["sync_rate_limited"] += 1
            await stream.reset()
            return
        secrets = {c.id: c.keys.content_key for c in host.conversations()
                   if c.kind == "room" or peer in c.members}
        session = sync.Session(sync.Role.RESPONDER, host.me, peer,
                               os.urandom(sync.NONCE_BYTES), secrets)
        try:
            with trio.fail_after(SESSION_TIMEOUT_S):
                try:
                    with trio.fail_after(PROOF_TIMEOUT_S):
                        session.receive(await stream.receive())
                        await stream.send(session.open())
                        session.receive(await stream.receive())
                except (sync.SyncError, trio.TooSlowError, trio.EndOfChannel) as exc:
                    host.counters["sync_refused"] += 1
                    self.limiter.penalise(peer, host.now())
                    if isinstance(exc, sync.FrameTooLarge):
                        host.counters["sync_refused_too_large"] += 1
                    await stream.reset()
                    return
                conv = host.conversation(session.conversation or "")
                if conv is None:  # left while the proof was checked
                    raise sync.SyncError("conversation left")
                await stream.send(session.prove())
                await self._exchange(stream, session, conv, peer)
                await stream.close()
            host.counters["syncs_served"] += 1
        except (StreamError, sync.SyncError, trio.TooSlowError, trio.EndOfChannel,
                trio.ClosedResourceError, errors.BusError) as exc:
            host.counters["syncs_failed"] += 1
            host.log.info("gossip.sync_failed", peer=peer, error=str(exc))
            await stream.reset()

    # -- both sides, once proven -------------------------------------------------------
    async def _ranges(self, conv: SyncConversation) -> sync.Ranges:
        return sync.from_storage(await self.host.storage.author_ranges(conv.id))

    async def _share_addrs(self, conv: SyncConversation) -> dict[str, list[str]]:
        """Ours and the members' addresses we know: how members find each other."""
        host = self.host
        shared = {}
        for p in sorted(conv.members - {host.me}):
            known = host.known_addrs(p)
            if known:
                shared[p] = known[:sync.MAX_ADDRS]
        mine = await host.my_addrs()
        if mine:
            shared[host.me] = mine[:sync.MAX_ADDRS]
        return dict(list(shared.items())[:sync.MAX_PEERS_ADDRS])

    def _count_dropped(self, frame: sync.Hello | sync.Have, peer: str) -> None:
        if frame.dropped:
            self.host.counters["sync_invalid_peer_id"] += frame.dropped
            self.host.log.info("gossip.sync_invalid_peer_ids", peer=peer,
                               dropped=frame.dropped)

    async def _exchange(self, stream: Any, session: sync.Session, conv: SyncConversation,
                        peer: str) -> None:
        """After both proofs: HELLOs, then send what they lack and take what we lack,
        then tell what we hold now (a receipt for everything it covers)."""
        host = self.host
        host.add_proven_member(conv, peer)
        mine = await self._ranges(conv)
        await stream.send(session.send(sync.Hello(mine, await self._share_addrs(conv))))
        hello = session.receive(await stream.receive())
        assert isinstance(hello, sync.Hello)  # the table allows nothing else here
        self._count_dropped(hello, peer)
        for p, addrs in hello.addrs.items():
            if p != host.me:
                await host.learn_addrs(conv, p, addrs, p in conv.members)
        await host.receipts_from_ranges(conv, peer, hello.ranges)
        theirs_done = trio.Event()

        async def send_missing() -> None:
            for author, spans in sync.missing(mine, hello.ranges).items():
                for lo, hi in spans:
                    start = lo
                    while start <= hi:
                        page = await host.storage.messages_by_author(
                            conv.id, author, start, hi, sync.ENVS_PER_FRAME)
                        batch = page["messages"]
                        if not batch:
                            break
                        await stream.send(session.send(sync.Envs(tuple(
                            wire.b64d(m["body"], "body") for m in batch))))
                        host.counters["sync_envelopes_sent"] += len(batch)
                        for m in batch:
                            if m["author"] == host.me:
                                await host.sent_by_sync(conv, m["id"])
                        start = batch[-1]["seq"] + 1
            await stream.send(session.send(sync.Done()))
            await theirs_done.wait()
            await stream.send(session.send(sync.Have(await self._ranges(conv))))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_missing)
            while True:
                frame = session.receive(await stream.receive())
                if isinstance(frame, sync.Envs):
                    await self._take(conv, frame.envelopes)
                elif isinstance(frame, sync.Done):
                    theirs_done.set()
                elif isinstance(frame, sync.Have):
                    self._count_dropped(frame, peer)
                    await host.receipts_from_ranges(conv, peer, frame.ranges)
                    return

    async def _take(self, conv: SyncConversation, envelopes: tuple[bytes, ...]) -> None:
        host = self.host
        for env in envelopes:
            try:
                opened = cv.open_envelope(conv.keys, env)
            except cv.EnvelopeError:
                host.counters["sync_rejected_envelope"] += 1
                continue
            if opened.kind != "m":
                host.counters["sync_rejected_envelope"] += 1
                continue
            if await host.accept_envelope(conv, opened, env):
                host.counters["sync_envelopes_received"] += 1
