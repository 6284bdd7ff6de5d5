"""One connection per peer: which of several connections to a peer to keep, who
hole-punches, and dials that join one already under way.

Theory of operation. Two friends behind NATs who add each other at the same moment
both dial, and several actors of one node (gossip, the dht, a stream the gateway asked
for) dial the same peer at once. Unchecked, that gives a pile of relayed circuits
between the same two peers, each side "accepting" one of them, so each side thinks it
is DCUtR's initiator: two hole punches with the roles crossed, and neither works.

* `DialJoin`: a dial to a peer while one is under way waits for it and shares its
  outcome; one that knows addresses the others do not dials just those, at once; the
  first that connects stops the rest; a dial that finds the peer connected returns.
* `surplus`: of the connections to a peer, the ones to close. A direct connection
  makes every relayed one surplus (DCUtR succeeded). Relayed ones that crossed (one
  dialled by each side) are decided by a rule both sides compute alike: the circuit
  dialled by the smaller peer ID stays, the other goes. Duplicates dialled by one side
  only are closed by that side (it alone knows their order); the other side never
  closes a connection its peer might keep, so the two can never close one each and
  be left with none.
* `punch_initiator`: DCUtR's initiator (the spec's B) is the side that accepted the
  relayed connection that stays; with crossed circuits that is the larger peer ID,
  which is also who wins when both started a punch anyway (`initiator_wins`).
  Crossings are mostly prevented before they form: nat.py's `crossing` refuses the
  larger side's circuit while the smaller side's own circuit dial runs.
* `ConnectionKeeper` applies `surplus` to the swarm: a connection to close is first
  set aside (new streams, ours and, by the same rule, the peer's, go to the one that
  stays), then closed once its streams ended or after a grace period.

The rules are pure; `DialJoin` is a trio primitive tested with trio and no sockets.
Peer IDs are compared as their base58 text: any order works as long as both sides
use the same one.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio
from libp2p.abc import INetConn
from libp2p.peer.id import ID

from p2pm.common import errors
from p2pm.common.groups import handle_beside_cancel
from p2pm.common.log import get_logger

log = get_logger("transport")


@dataclass(frozen=True)
class ConnView:
    """What the rules need of one connection to the peer."""

    key: int  # any identity of the connection (id() of the swarm connection)
    relayed: bool
    outbound: bool  # we dialled it
    opened: int  # order in which this side saw the connections open


def surplus(me: str, peer: str, conns: Sequence[ConnView]) -> list[int]:
    """Keys of the connections to `peer` that this side should close."""
    relayed = [c for c in conns if c.relayed]
    if any(not c.relayed for c in conns):
        return [c.key for c in relayed]
    if len(relayed) < 2:
        return []
    ours = sorted((c for c in relayed if c.outbound), key=lambda c: c.opened)
    theirs = [c for c in relayed if not c.outbound]
    if ours and theirs:
        if me < peer:  # ours stay: close theirs and our later duplicates
            return [c.key for c in theirs] + [c.key for c in ours[1:]]
        return [c.key for c in ours]  # theirs stay; their duplicates are theirs to close
    return [c.key for c in ours[1:]]


def kept(me: str, peer: str, conns: Sequence[ConnView]) -> list[ConnView]:
    gone = set(surplus(me, peer, conns))
    return [c for c in conns if c.key not in gone]


def punch_initiator(me: str, peer: str, conns: Sequence[ConnView]) -> bool:
    """Whether this side should start DCUtR with `peer`: no direct connection, and
    what stays is relayed and was dialled by the peer (we are "behind" the relay)."""
    left = kept(me, peer, conns)
    return bool(left) and all(c.relayed and not c.outbound for c in left)


def initiator_wins(me: str, peer: str) -> bool:
    """Both sides started DCUtR at once (their circuits crossed): the larger peer ID,
    the side that accepted the circuit that stays, keeps the initiator's role."""
    return me > peer


@dataclass
class _Dials:
    """The dials to one peer under way: what they cover, and when the last ends."""

    addrs: set[str] = field(default_factory=set)
    scopes: set[trio.CancelScope] = field(default_factory=set)
    done: trio.Event = field(default_factory=trio.Event)
    error: errors.BusError | None = None  # the latest failure


class DialJoin:
    """Dials to a peer share what is under way. A dial whose addresses are all being
    dialled already waits for those dials and shares their outcome; one that knows
    more starts a dial of just the new addresses, at once (a friend's relay circuit
    must not wait for a dial of their unreachable home address to time out). The
    first dial that connects stops the others. Bounded by the dials in flight: a
    peer's entry lives only while one of its dials runs."""

    def __init__(self) -> None:
        self._peers: dict[Hashable, _Dials] = {}
        self.joined = 0  # dials that waited for others instead of dialling

    def dialling(self, peer: Hashable) -> bool:
        return peer in self._peers

    async def dial(self, peer: Hashable, known: frozenset[str],
                   dial: Callable[[frozenset[str]], Awaitable[None]],
                   connected: Callable[[], bool]) -> None:
        """`dial(addrs)` what is not being dialled yet, unless connected; returns once
        connected, raises BusError when every dial failed (joiners get the reason)."""
        while not connected():
            entry = self._peers.get(peer)
            new = known - entry.addrs if entry is not None else known
            if entry is not None and not new:
                self.joined += 1
                await entry.done.wait()
                if connected():
                    return
                if entry.error is not None:
                    raise errors.BusError(entry.error.code, entry.error.message)
                continue  # those dials were cancelled by their callers: ours now
            if entry is None:
                entry = self._peers[peer] = _Dials()
            await self._run(peer, entry, frozenset(new), dial, connected)
            return

    async def _run(self, peer: Hashable, entry: _Dials, addrs: frozenset[str],
                   dial: Callable[[frozenset[str]], Awaitable[None]],
                   connected: Callable[[], bool]) -> None:
        entry.addrs |= addrs
        failure: errors.BusError | None = None

        def failed(exc: Exception) -> None:
            nonlocal failure
            failure = exc if isinstance(exc, errors.BusError) \
                else errors.unavailable(str(exc) or type(exc).__name__)

        with trio.CancelScope() as scope:
            entry.scopes.add(scope)
            try:
                await dial(addrs)
            except Exception as exc:
                failed(exc)
            except BaseExceptionGroup as group:
                # The dial's nurseries, cancelled as another dial connected while an
                # address failed: this scope strips the Cancelled, and the failure
                # would come out as an ExceptionGroup to a caller that is connected.
                handle_beside_cancel(group, failed)
            finally:
                entry.scopes.discard(scope)
                if failure is not None:
                    entry.error = failure
                if connected():  # ours, or one of the others: the rest can stop
                    for other in entry.scopes:
                        other.cancel()
                if not entry.scopes:
                    if self._peers.get(peer) is entry:
                        del self._peers[peer]
                    entry.done.set()
        if connected():
            return
        if not entry.done.is_set():
            await entry.done.wait()  # others still dial: their outcome is ours too
            if connected():
                return
        if scope.cancelled_caught and failure is None:
            return  # stopped because another dial connected (and it since closed)
        failure = failure or entry.error or errors.unavailable("dial cancelled")
        raise errors.BusError(failure.code, failure.message)


class ConnectionKeeper:
    """The swarm side of `surplus`. py-libp2p opens new streams on its "best"
    connection (direct first, then the one with more streams), which may be one we
    are about to close: `select_kept` wraps the swarm's choice to pass over those."""

    def __init__(self, host: Any, me: ID, is_relayed: Callable[[Any], bool]) -> None:
        network = host.get_network()
        self.network = network
        self.me = me
        self.is_relayed = is_relayed
        # Both weak: an entry goes with its connection, so neither grows.
        self._order: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self.retiring: weakref.WeakSet[Any] = weakref.WeakSet()
        self._seq = itertools.count()
        self.counters = {"closed_surplus": 0}

        def select_kept(choose: Callable[[list[INetConn], ID], INetConn]
                        ) -> Callable[[list[INetConn], ID], INetConn]:
            def select(conns: list[INetConn], peer: ID) -> INetConn:
                # The rule applies at once, before the connections settle and the
                # surplus is set aside: a stream opened meanwhile must not land on it.
                gone = {id(c) for c in self.surplus(peer)}
                staying = [c for c in conns if c not in self.retiring and id(c) not in gone]
                return choose(staying or conns, peer)
            return select

        host.wrap_connection_choice(select_kept)

    def opened(self, conn: INetConn) -> None:
        if conn not in self._order:
            self._order[conn] = next(self._seq)

    def live(self, peer: ID) -> list[INetConn]:
        return [c for c in self.network.get_connections(peer)
                if not getattr(c, "is_closed", False) and c not in self.retiring]

    def views(self, peer: ID) -> list[ConnView]:
        out = []
        for conn in self.live(peer):
            self.opened(conn)
            direction = str(getattr(conn, "direction", "")).split(".")[-1].lower()
            out.append(ConnView(id(conn), self.is_relayed(conn), direction == "outbound",
                                self._order[conn]))
        return out

    def surplus(self, peer: ID) -> list[INetConn]:
        gone = set(surplus(str(self.me), str(peer), self.views(peer)))
        return [c for c in self.live(peer) if id(c) in gone]

    def initiator(self, peer: ID) -> bool:
        return punch_initiator(str(self.me), str(peer), self.views(peer))

    async def retire(self, peer: ID, conn: INetConn, grace_s: float) -> None:
        """Set `conn` aside now; close it when its streams are done, or after
        `grace_s` (a long-lived stream, gossip's say, is then reset and its owner
        opens it again, on the connection that stays)."""
        if conn in self.retiring:
            return
        self.retiring.add(conn)
        log.info("transport.connection_surplus", peer_id=str(peer),
                 relayed=self.is_relayed(conn),
                 direction=str(getattr(conn, "direction", "")).split(".")[-1].lower())
        with trio.move_on_after(grace_s):
            while _stream_count(conn):
                await trio.sleep(0.1)
        self.counters["closed_surplus"] += 1
        with trio.move_on_after(5):
            try:
                await conn.close()
            except* Exception:  # the swarm's notifee nursery: see common/groups.py
                pass


def _stream_count(conn: Any) -> int:
    try:
        return len(conn.get_streams())
    except Exception:
        return 0
