"""NAT traversal for the transport actor: AutoNAT, relay (both roles) and DCUtR wired
to one host, with their settings, loops and status.

What follows from what: AutoNAT's verdict is published (`transport.reachability.changed`);
a private node keeps reservations on its relays (configured ones, connected peers that
offer the hop protocol, and relays found through the DHT: see relay_discovery.py) and
advertises the circuit addresses; a public relay announces itself in the DHT; a public
node advertises the addresses a dial-back confirmed. Each new connection to a peer is
looked at once the peer's connections settle (SETTLE_S without a new one): surplus
ones are closed (circuits that crossed, a relayed one made redundant by a direct one:
peerconns.py), and DCUtR starts if we accepted the relayed connection that stays.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import multiaddr
import trio
from libp2p.abc import INetConn
from libp2p.peer.id import ID

from p2pm.common.clients import DhtClient
from p2pm.common.groups import handle_beside_cancel
from p2pm.common.log import get_logger
from p2pm.common.settings import TransportSettings

from . import autonat, dcutr, relay
from .host import ConnectionWatcher
from .peerconns import ConnectionKeeper
from .relay_discovery import RELAY_PROVIDER_KEY_HEX, RelayAnnouncer, RelayFinder
from .reuseport import ReuseportTCP, is_circuit

log = get_logger("transport")

RESERVE_RETRY_MAX_S = 10.0
DHT_OP_TIMEOUT_S = 20.0  # one provide or find_providers, as the dht runs it
DHT_CALL_SLACK_S = 5.0  # on top, for the bus; a dht that is down costs this much
DISCOVERED_ADDR_TTL_S = 3600  # as long as the transport keeps other learnt addresses
SETTLE_S = 0.25  # quiet time after a new connection to a peer before acting on it
SURPLUS_GRACE_S = 1.0  # a connection being closed gets this long for its streams
CROSSING_WAIT_S = 8.0  # for the peer's own circuit, after it refused ours as a crossing


class NatSettings:
    """The [transport] keys of this module, from the checked settings (settings.py),
    the relay addresses parsed."""

    def __init__(self, cfg: TransportSettings) -> None:
        self.relay_service = cfg.relay_service
        self.limits = relay.RelayLimits.from_settings(cfg)
        self.relays = [multiaddr.Multiaddr(text) for text in cfg.relays]
        self.max_client_reservations = cfg.relay_client_reservations
        self.relay_discovery = cfg.relay_discovery
        self.autonat_service = cfg.autonat_service
        self.autonat_interval_s = cfg.autonat_interval_s
        self.autonat_retry_s = cfg.autonat_retry_s
        self.autonat_max_per_peer = cfg.autonat_max_per_peer
        self.autonat_max_total = cfg.autonat_max_total
        self.autonat_dial_timeout_s = cfg.autonat_dial_timeout_s
        self.holepunch = cfg.holepunch
        self.holepunch_cooldown_s = cfg.holepunch_cooldown_s
        self.reachability = cfg.reachability


class NatManager:
    def __init__(self, node: Any, settings: NatSettings,
                 publish: Callable[[str, dict[str, Any]], None],
                 connect: Callable[[ID, list[multiaddr.Multiaddr]], Awaitable[None]],
                 dht: DhtClient | None = None) -> None:
        self.node = node
        self.host = node.host
        self.settings = settings
        self.publish = publish
        self.connect = connect
        self.dht = dht  # None: no dht to ask
        self.tcp = next(t for t in self.host.get_network().transport_manager.get_transports()
                        if isinstance(t, ReuseportTCP))
        self.autonat = autonat.AutoNAT(
            self.host, serve=settings.autonat_service,
            max_per_peer=settings.autonat_max_per_peer,
            max_total=settings.autonat_max_total,
            dial_timeout_s=settings.autonat_dial_timeout_s,
            candidate_addrs=self.own_addrs)
        self.relay_service = (relay.RelayService(self.host, settings.limits, self.public_addrs)
                              if settings.relay_service else None)
        self.relay_client = relay.RelayClient(self.host, self._on_relayed_inbound,
                                              self.crossing)
        # peer -> our dials to it that will try its circuits (bounded by dials in flight)
        self._relay_dials: Counter[ID] = Counter()
        for addr in settings.relays:
            self.tcp.dial_from_listening_port(addr)
        self.keeper = ConnectionKeeper(self.host, self.host.get_id(),
                                       relay.is_relayed)
        self.dcutr = dcutr.DCUtR(self.host, self.own_addrs, self.tcp.source_for,
                                 self._on_direct, settings.holepunch_cooldown_s,
                                 self.keeper.initiator)
        # peer -> when to look at its connections; an entry lives until then.
        self._settle_at: dict[ID, float] = {}
        self._nursery: trio.Nursery | None = None
        self._probe_now = trio.Event()
        self._reserve_now = trio.Event()
        self._reachability_changed = trio.Event()
        discovery = settings.relay_discovery and dht is not None
        self.finder = RelayFinder(str(node.peer_id)) if discovery else None
        self.announcer = RelayAnnouncer() if discovery and settings.relay_service else None
        self.first_relayed_at: float | None = None
        if settings.reachability != "auto":
            self.autonat.tracker.state = settings.reachability

    @property
    def reachability(self) -> str:
        return self.autonat.tracker.state

    def status(self) -> dict[str, Any]:
        return {"reachability": self.reachability,
                "autonat": self.autonat.status(),
                "relay_client": self.relay_client.status(),
                "relay_service": self.relay_service.status() if self.relay_service else None,
                "dcutr": self.dcutr.status(),
                "connections_closed_as_surplus": self.keeper.counters["closed_surplus"],
                "relay_discovery": self._discovery_status()}

    def _discovery_status(self) -> dict[str, Any] | None:
        if self.finder is None:
            return None
        now = time.time()
        return {"key": RELAY_PROVIDER_KEY_HEX, **self.finder.status(now),
                "announce": self.announcer.status(now) if self.announcer else None}

    # addresses -------------------------------------------------------------------------
    def observed(self) -> list[multiaddr.Multiaddr]:
        """Our addresses as peers saw them (one observer is enough to try)."""
        try:
            return [a for a in self.host.observed_addrs() if not is_circuit(a)]
        except Exception:
            return []

    def own_addrs(self) -> list[multiaddr.Multiaddr]:
        """What we offer AutoNAT servers and DCUtR peers: observed first, then what we
        advertise (listen addresses)."""
        seen: set[str] = set()
        out = []
        for a in [*self.observed(), *self.node.advertised]:
            if is_circuit(a):  # a circuit's head is the relay's address, not ours
                continue
            bare = multiaddr.Multiaddr(str(a).split("/p2p/")[0])
            if str(bare) not in seen:
                seen.add(str(bare))
                out.append(bare)
        return out

    def public_addrs(self) -> list[multiaddr.Multiaddr]:
        return [a for a in self.node.advertised if not is_circuit(a)]

    def extra_addrs(self) -> list[multiaddr.Multiaddr]:
        """Added to the signed record: circuit addresses while private, confirmed
        public addresses while public."""
        if self.reachability == autonat.PRIVATE:
            return self.relay_client.advertised()
        if self.reachability == autonat.PUBLIC:
            return [multiaddr.Multiaddr(a) for a in self.autonat.confirmed]
        return []

    # lifecycle -------------------------------------------------------------------------
    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        host = self.host
        host.set_stream_handler(autonat.PROTOCOL, self.autonat.handle)
        host.set_stream_handler(relay.STOP_PROTOCOL, self.relay_client.handle_stop)
        if self.settings.holepunch:
            host.set_stream_handler(dcutr.PROTOCOL, self.dcutr.handle)
        if self.relay_service is not None:
            host.set_stream_handler(relay.HOP_PROTOCOL, self.relay_service.handle_hop)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            host.get_network().register_notifee(
                ConnectionWatcher(self._on_connected, lambda _conn: None))
            nursery.start_soon(self._autonat_loop)
            nursery.start_soon(self._reservation_loop)
            if self.finder is not None:
                nursery.start_soon(self._discovery_loop)
            if self.announcer is not None:
                nursery.start_soon(self._announce_loop)
            task_status.started()
            await trio.sleep_forever()

    def on_identified(self, peer: ID) -> None:
        """A newly identified peer may be an AutoNAT server or a relay."""
        self._probe_now.set()
        self._reserve_now.set()

    def on_disconnected(self, peer: ID) -> None:
        if self.host.get_network().get_connections(peer):
            return
        if peer in self.relay_client.reservations:
            self.relay_client.drop(peer)
            self._reserve_now.set()

    # AutoNAT -------------------------------------------------------------------------
    async def _autonat_loop(self) -> None:
        if self.settings.reachability != "auto":
            return  # forced by configuration: nothing to learn
        while True:
            servers = self.autonat.servers()
            random.shuffle(servers)
            verdicts = []
            for peer in servers[:3]:
                verdict = await self.autonat.probe(peer)
                if verdict is not None:
                    verdicts.append(verdict)
                    self._record(verdict)
            settled = bool(verdicts) and self.reachability != autonat.UNKNOWN
            wait = self.settings.autonat_interval_s if settled else self.settings.autonat_retry_s
            with trio.move_on_after(wait):
                if not settled:
                    await self._probe_now.wait()
                    await trio.sleep(0.5)  # let identify of a burst of peers finish
                else:
                    await trio.sleep_forever()
            self._probe_now = trio.Event()

    def _record(self, reachable: bool) -> None:
        previous = self.reachability
        if self.autonat.record(reachable):
            log.info("transport.reachability", reachability=self.reachability,
                     previous=previous)
            self.publish("transport.reachability.changed", {
                "reachability": self.reachability, "previous": previous,
                "confirmed_addrs": list(self.autonat.confirmed)})
            self._reserve_now.set()
            self._reachability_changed.set()
            self._reachability_changed = trio.Event()

    async def _wait_reachability(self, wanted: str) -> None:
        """Until AutoNAT's verdict is `wanted`: the loops that act only then sleep
        meanwhile instead of looking every second."""
        while self.reachability != wanted:
            await self._reachability_changed.wait()

    # relay client ----------------------------------------------------------------------
    def _relay_candidates(self) -> list[tuple[ID, multiaddr.Multiaddr | None]]:
        out: list[tuple[ID, multiaddr.Multiaddr | None]] = []
        for addr in self.settings.relays:
            pid = ID.from_base58(addr.get_peer_id())
            out.append((pid, addr))
        store = self.host.get_peerstore()
        for peer in self.host.get_connected_peers():
            if any(p == peer for p, _ in out):
                continue
            try:
                if relay.HOP_PROTOCOL in [str(p) for p in store.get_protocols(peer)]:
                    out.append((peer, None))
            except Exception:
                continue
        if self.finder is not None:
            for candidate in self.finder.candidates(time.time()):
                pid = ID.from_base58(candidate.peer_id)
                if all(p != pid for p, _ in out):
                    out.append((pid, None))
        return out

    async def _reservation_loop(self) -> None:
        backoff: dict[ID, tuple[float, float]] = {}  # relay -> (next try, delay)
        while True:
            await self._wait_reachability(autonat.PRIVATE)
            if self.reachability == autonat.PRIVATE:
                held = 0
                for peer, addr in self._relay_candidates():
                    if held >= self.settings.max_client_reservations:
                        break
                    res = self.relay_client.reservations.get(peer)
                    now = time.time()
                    if res is not None and res.expires - now > _renew_margin(res):
                        held += 1
                        continue
                    due, delay = backoff.get(peer, (0.0, 1.0))
                    if now < due:
                        continue
                    ok = await self._reserve(peer, addr)
                    if self.finder is not None:
                        self.finder.reserve_result(str(peer), ok)
                    if ok:
                        backoff.pop(peer, None)
                        held += 1
                    else:
                        backoff[peer] = (now + delay, min(delay * 2, RESERVE_RETRY_MAX_S))
            with trio.move_on_after(1.0):
                await self._reserve_now.wait()
            self._reserve_now = trio.Event()

    async def _reserve(self, peer: ID, addr: multiaddr.Multiaddr | None) -> bool:
        def failed(exc: Exception) -> None:
            log.info("relay.reserve_failed", relay=str(peer), error=_why(exc))

        try:
            if self.finder is not None and addr is None:
                self._learn_addrs(peer)
            if not self.host.get_network().get_connections(peer):
                await self.connect(peer, [addr] if addr is not None else [])
            conns = self.host.get_network().get_connections(peer)
            remote = addr
            for conn in conns:
                if not relay.is_relayed(conn):
                    transport = conn.muxed_conn.get_transport_addresses()
                    remote = remote or (transport[0] if transport else None)
            if remote is None:
                raise ValueError("no direct address for this relay")
            await self.relay_client.reserve(peer, remote)
            return True
        except Exception as exc:
            failed(exc)
            return False
        except BaseExceptionGroup as group:  # the dial's nurseries, as the actor stops
            handle_beside_cancel(group, failed)

    # relays through the DHT -------------------------------------------------------------
    def _reservations_short(self) -> bool:
        now = time.time()
        held = sum(1 for r in self.relay_client.reservations.values() if r.expires > now)
        return held < self.settings.max_client_reservations

    def _learn_addrs(self, peer: ID) -> None:
        """Put a discovered relay's addresses in the peerstore, as add_addrs does."""
        assert self.finder is not None
        for candidate in self.finder.candidates(time.time()):
            if candidate.peer_id == str(peer):
                self.host.get_peerstore().add_addrs(peer, list(candidate.addrs),
                                                    DISCOVERED_ADDR_TTL_S)
                for addr in candidate.addrs:
                    self.tcp.dial_from_listening_port(addr)

    async def _ask_dht(self, method: str) -> Any:
        """`provide` or `find_providers` of the relay key; a dht that is down or slow
        costs this task DHT_OP_TIMEOUT_S + DHT_CALL_SLACK_S, and nothing else."""
        assert self.dht is not None
        dht = self.dht.with_options(timeout=DHT_OP_TIMEOUT_S + DHT_CALL_SLACK_S, retries=0)
        ask = dht.provide if method == "provide" else dht.find_providers
        return await ask(RELAY_PROVIDER_KEY_HEX, timeout=DHT_OP_TIMEOUT_S)

    async def _discovery_loop(self) -> None:
        """While private and short of reservations, ask the dht for relays. Each ask
        waits here, in its own task: the transport never waits on the dht."""
        assert self.finder is not None
        while True:
            await self._wait_reachability(autonat.PRIVATE)
            now = time.time()
            if self.reachability == autonat.PRIVATE \
                    and self.finder.lookup_due(now, self._reservations_short()):
                self.finder.lookup_started()
                try:
                    result = await self._ask_dht("find_providers")
                except Exception as exc:
                    self.finder.lookup_failed(time.time(), _why(exc))
                    log.info("relay.discovery_failed", error=_why(exc))
                else:
                    named = self.finder.lookup_done(time.time(), result)
                    log.info("relay.discovered", relays=len(named),
                             peers=" ".join(c.peer_id for c in named))
                    if named:
                        self._reserve_now.set()
            await trio.sleep(1.0)

    async def _announce_loop(self) -> None:
        """A public relay announces itself under the relay key, again every so often
        (a private one cannot be reached, so it stays quiet)."""
        assert self.announcer is not None
        while True:
            await self._wait_reachability(autonat.PUBLIC)
            now = time.time()
            if self.reachability == autonat.PUBLIC and self.announcer.due(now):
                try:
                    result = await self._ask_dht("provide")
                except Exception as exc:
                    self.announcer.failed(time.time(), _why(exc))
                    log.info("relay.announce_failed", error=_why(exc))
                else:
                    if self.announcer.done(time.time(), result):
                        log.info("relay.announced", sent_to=self.announcer.last_sent_to)
                    else:
                        log.info("relay.announce_failed", error=self.announcer.last_error)
            await trio.sleep(1.0)

    # one connection per peer, and DCUtR ------------------------------------------------
    def _on_relayed_inbound(self, peer: ID, conn: INetConn) -> None:
        if self.first_relayed_at is None:
            self.first_relayed_at = time.time()
        self.publish("transport.peer.relayed", {"peer_id": str(peer), "direction": "inbound"})

    def _on_connected(self, conn: INetConn) -> None:
        self.keeper.opened(conn)
        if self._nursery is None:
            return
        peer = conn.muxed_conn.peer_id
        if peer not in self._settle_at:
            self._nursery.start_soon(self._settle, peer)
        self._settle_at[peer] = trio.current_time() + SETTLE_S

    async def _settle(self, peer: ID) -> None:
        """Once the peer's connections stopped changing: close the surplus ones, then
        punch if we are DCUtR's initiator."""
        while trio.current_time() < self._settle_at.get(peer, 0.0):
            await trio.sleep_until(self._settle_at[peer])
        self._settle_at.pop(peer, None)
        assert self._nursery is not None
        for conn in self.keeper.surplus(peer):
            self._nursery.start_soon(self.keeper.retire, peer, conn, SURPLUS_GRACE_S)
        if self.settings.holepunch and self.dcutr.has_direct(peer) is None \
                and self.keeper.initiator(peer):
            await self.dcutr.upgrade(peer)

    @contextmanager
    def dialling_circuits(self, peer: ID) -> Iterator[None]:
        """Around a dial to `peer` that will try its relay circuits (after its direct
        addresses, maybe): while it runs, `crossing` knows."""
        self._relay_dials[peer] += 1
        try:
            yield
        finally:
            self._relay_dials[peer] -= 1
            if self._relay_dials[peer] <= 0:
                del self._relay_dials[peer]

    def crossing(self, src: ID) -> bool:
        """A circuit from `src` arrives while we dial it through a relay ourselves:
        both friends dialled at once. Of the two circuits the one from the smaller peer
        ID is kept (peerconns.surplus); when that is ours, theirs is refused before it
        forms (no streams to reset, no second DCUtR initiator); the larger side waits
        for ours instead (`dial_via_relays`)."""
        return src in self._relay_dials and str(self.host.get_id()) < str(src)

    def _on_direct(self, peer: ID, conn: INetConn) -> None:
        addr = ""
        try:
            addr = str(conn.muxed_conn.get_transport_addresses()[0])
        except Exception:
            pass
        self.publish("transport.peer.upgraded", {"peer_id": str(peer), "addr": addr})

    async def dial_via_relays(self, peer: ID, circuits: list[multiaddr.Multiaddr]) -> INetConn:
        """Try each circuit address in turn, connecting to the relay first."""
        last: Exception | None = None
        for addr in circuits:
            joined = self.host.get_network().get_connections(peer)
            if joined:
                return joined[0]  # the peer's own circuit landed meanwhile
            parsed = relay.relay_of(addr)
            if parsed is None:
                continue
            relay_id, relay_addr = parsed
            if relay_addr is not None:
                self.tcp.dial_from_listening_port(relay_addr)
            try:
                if not self.host.get_network().get_connections(relay_id):
                    await self.connect(relay_id, [relay_addr] if relay_addr else [])
                conn = await self.relay_client.dial(peer, relay_id)
                self.publish("transport.peer.relayed",
                             {"peer_id": str(peer), "direction": "outbound"})
                return conn
            except relay.RelayRefused as exc:
                last = exc
                log.info("relay.dial_failed", peer_id=str(peer), relay=str(relay_id),
                         error=_why(exc))
                if exc.status == relay.pb.CONNECTION_FAILED \
                        and str(self.host.get_id()) > str(peer):
                    # Perhaps refused as a crossing: the peer's own circuit is coming.
                    theirs = await self._wait_connection(peer, CROSSING_WAIT_S)
                    if theirs is not None:
                        return theirs
            except Exception as exc:
                last = exc
                log.info("relay.dial_failed", peer_id=str(peer), relay=str(relay_id),
                         error=_why(exc))
        raise last or ValueError("no usable circuit address")


    async def _wait_connection(self, peer: ID, timeout: float) -> INetConn | None:
        with trio.move_on_after(timeout):
            while not self.host.get_network().get_connections(peer):
                await trio.sleep(0.05)
            return self.host.get_network().get_connections(peer)[0]
        return None


def _why(exc: BaseException) -> str:
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__


def _renew_margin(res: relay.Reservation) -> float:
    """Renew when a quarter of the granted lifetime is left (at least 30 s before)."""
    return max(30.0, (res.expires - res.renewed_at) / 4)
