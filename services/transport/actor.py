"""The transport actor: the node's libp2p daemon.

It runs the host (host.py) with a keystore-backed identity (custody.py), serves the
stream API to the other actors (hub.py; the owner side is common/streams/), publishes connection
events, answers RPCs about peers, and redials the peers it was connected to when it
comes back after a crash.

NAT traversal (AutoNAT, relay, DCUtR) is in nat.py and the modules it names.

Events: transport.peer.connected {peer_id, addr, direction},
        transport.peer.disconnected {peer_id},
        transport.peer.identified {peer_id, protocols, addrs},
        transport.reachability.changed {reachability, previous, confirmed_addrs},
        transport.peer.relayed {peer_id, direction} (a connection through a relay),
        transport.peer.upgraded {peer_id, addr} (DCUtR made it direct).
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import nullcontext
from typing import Any

import multiaddr
import trio
import zmq
from libp2p.abc import INetConn
from libp2p.peer.id import ID

from p2pm.common import errors, identity
from p2pm.common.actor import Actor, every, rpc
from p2pm.common.clients import DhtClient, Identity, KeystoreClient
from p2pm.common.config import settings_of
from p2pm.common.groups import handle_beside_cancel
from p2pm.common.streams import streams_endpoint
from p2pm.common.zmqtrio import AsyncSocket

from .host import ConnectionWatcher, NodeHost, open_host, ping_rtt_ms
from .dialing import dial_direct
from .dialing import strip_p2p as _strip_p2p
from .dialing import why as _why
from .hub import StreamHub
from .nat import NatManager, NatSettings
from .peerconns import DialJoin
from .relay import is_relayed, split_addrs
from .mux_budget import MIB
from .reuseport import is_circuit

PEERS_FILE = "transport-peers.json"
LISTEN_PORTS_FILE = "transport-ports.json"
DIAL_TIMEOUT_S = 10.0
# Head start of direct addresses over circuits, as go-libp2p's dial ranker gives them:
# a direct address that answers wins, one a NAT drops costs only this much.
RELAY_DELAY_S = 0.5
ADDR_TTL_S = 3600


class Transport(Actor):
    name = "transport"
    keystore = KeystoreClient.dependency()
    dht = DhtClient.dependency()

    def __init__(self, home: Any = None, config: dict[str, Any] | None = None) -> None:
        super().__init__(home, config)
        # Checked once, in settings.py: a bad value never gets this far.
        cfg = settings_of(config).transport
        self.listen: list[str] = list(cfg.listen)
        self.bootstrap: list[str] = list(cfg.bootstrap)
        self.max_connections = cfg.max_connections
        self.max_streams_per_peer = cfg.max_streams_per_peer
        self.keepalive_interval_s = cfg.keepalive_interval_s
        self.keepalive_timeout_s = cfg.keepalive_timeout_s
        self.mux_budget_mib = cfg.mux_budget_mib
        self.node: NodeHost | None = None
        self.hub: StreamHub | None = None
        self._started = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._known: dict[str, list[str]] = {}  # connected peers -> addrs, persisted
        self._persist = trio.Event()
        self._persisting = True
        self._connected_at: dict[ID, float] = {}
        self._problem: str | None = None
        self.nat_settings = NatSettings(cfg)
        self.nat: NatManager | None = None
        self._dials = DialJoin()  # one dial per peer at a time: see _connect

    # -- lifecycle ---------------------------------------------------------------------
    def healthy(self) -> bool:
        return self.node is not None

    def status(self) -> dict[str, Any]:
        if self.node is None:
            return {"host": "starting", "problem": self._problem}
        return {"peer_id": str(self.node.peer_id), "addrs": self.node.full_addrs(),
                "reachability": self.nat.reachability if self.nat else "unknown",
                "nat": self.nat.status() if self.nat else {},
                "peers": len(self.node.host.get_connected_peers()),
                "streams": self.hub.status() if self.hub else {},
                "limits": self.node.limits_status(),
                "problem": self._problem}

    async def run(self) -> None:
        me = await self.keystore.until_answered(self._set_problem).identity()
        self._problem = None
        await self._serve_host(me)

    async def _serve_host(self, me: Identity) -> None:
        assert self.runtime is not None
        listen = self._sticky_listen()
        async with open_host(me.public_key, self.keystore.sign, listen,
                             self.max_connections, self.mux_budget_mib * MIB) as node:
            if str(node.peer_id) != me.peer_id:
                raise RuntimeError("keystore peer_id does not match its public key")
            self.node = node
            listening = list(node.host.get_transport_addrs())
            if len(listening) < len(self.listen):
                # py-libp2p logs a failed listener (address in use, not on this
                # machine) and carries on without it.
                missing = f"listening on {len(listening)} of the {len(self.listen)} " \
                          f"transport.listen addresses (in use, or not on this machine?)"
                self.log.error("transport.listen_failed", listening=len(listening),
                               configured=len(self.listen))
                self._problem = "; ".join(filter(None, [self._problem, missing]))
            self._remember_ports(listening)
            node.host.get_network().register_notifee(
                ConnectionWatcher(self._on_connected, self._on_disconnected))
            node.host.on_identified = self._on_identified
            sock = self.runtime.ctx.socket(zmq.ROUTER)
            sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
            sock.setsockopt(zmq.SNDHWM, 0)  # bounded by stream credit, see common/streams/frames.py
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.bind(streams_endpoint(self.runtime.endpoints))
            asock = AsyncSocket(sock)
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self.hub = StreamHub(node, asock, self.runtime.epoch,
                                         self.max_streams_per_peer, self._connect)
                    await nursery.start(self.hub.run)
                    self.nat = NatManager(node, self.nat_settings, self.publish,
                                          self._connect, self.dht)
                    node.extra_addrs = self.nat.extra_addrs
                    await nursery.start(self.nat.run)
                    nursery.start_soon(self._persist_loop)
                    nursery.start_soon(self._keepalive_loop)
                    self.log.info("transport.listening", peer_id=str(node.peer_id),
                                  addrs=" ".join(node.full_addrs()))
                    self._started.set()
                    nursery.start_soon(self._redial)
                    await trio.sleep_forever()
            finally:
                self._persisting = False
                self.node = None
                self.nat = None
                asock.close(linger_ms=0)

    async def _keepalive_loop(self) -> None:
        """Ping every connected peer each keepalive_interval_s; a connection with no
        answer within keepalive_timeout_s is closed. A peer whose process died is
        noticed by the kernel's FIN or RST at once, but a host that lost power or
        network, or a NAT that dropped its mapping, sends nothing: without this the
        connection and its streams would stay open, and frames sent on them vanish."""
        while True:
            await trio.sleep(self.keepalive_interval_s)
            node = self.node
            if node is None:
                continue
            async with trio.open_nursery() as nursery:
                for peer in list(node.host.get_connected_peers()):
                    nursery.start_soon(self._keepalive_one, node, peer)

    async def _keepalive_one(self, node: NodeHost, peer: ID) -> None:
        def answered(exc: Exception) -> None:
            # An answer, even a refusal of the ping protocol, proves the peer is there.
            self.log.debug("transport.keepalive_error", peer_id=str(peer), error=_why(exc))

        try:
            await ping_rtt_ms(node.host, peer, timeout=self.keepalive_timeout_s)
            return
        except trio.TooSlowError:
            pass
        except Exception as exc:
            answered(exc)
            return
        except BaseExceptionGroup as group:  # the stream's nursery, as the actor stops
            handle_beside_cancel(group, answered)
        self.log.info("transport.keepalive_timeout", peer_id=str(peer),
                      timeout_s=self.keepalive_timeout_s)
        if self.hub is not None:
            await self.hub.reset_peer(peer, f"no answer to keepalive in "
                                            f"{self.keepalive_timeout_s:g}s")
        for conn in list(node.host.get_network().get_connections(peer)):
            with trio.move_on_after(5):
                try:
                    await conn.close()
                except* Exception:  # the swarm's notifee nursery: see common/groups.py
                    pass

    def _set_problem(self, problem: str) -> None:
        self._problem = problem

    def _require(self) -> NodeHost:
        if self.node is None:
            raise errors.unavailable("the transport is starting (waiting for the keystore?)")
        return self.node

    # -- connection events -------------------------------------------------------------
    def _on_connected(self, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        addr = _conn_addr(conn)
        direction = str(getattr(conn, "direction", "unknown")).split(".")[-1].lower()
        self._connected_at.setdefault(peer, time.time())
        if direction == "outbound" and addr:
            self._remember(peer, [addr])
        self.publish("transport.peer.connected",
                     {"peer_id": str(peer), "addr": addr, "direction": direction})

    def _on_disconnected(self, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        if self.node is not None and self.node.host.get_network().get_connections(peer):
            return
        if self.nat is not None:
            self.nat.on_disconnected(peer)
        self._connected_at.pop(peer, None)
        if self._persisting and self._known.pop(str(peer), None) is not None:
            self._persist.set()
        self.publish("transport.peer.disconnected", {"peer_id": str(peer)})

    def _on_identified(self, peer: ID) -> None:
        info = self._peer_entry(peer)
        if self.nat is not None:
            self.nat.on_identified(peer)
        self._remember(peer, info["addrs"])
        self.publish("transport.peer.identified", {
            "peer_id": str(peer), "protocols": info["protocols"], "addrs": info["addrs"]})

    def _remember(self, peer: ID, addrs: list[str]) -> None:
        if not self._persisting:
            return
        known = self._known.setdefault(str(peer), [])
        for a in addrs:
            if a not in known:
                known.append(a)
        self._persist.set()

    # -- listening ports that survive restarts -----------------------------------------
    def _sticky_listen(self) -> list[str]:
        """`tcp/0` means "any port" on the first start only: the port picked then is
        reused after a restart, since peers, invites and peers files hold the node's
        address, and a transport back on a new port is unreachable to all of them
        (two peers that both restarted would never find each other again). A port
        taken meanwhile falls back to a fresh one."""
        remembered = self._load_ports()
        out = []
        for addr in self.listen:
            port = remembered.get(addr)
            maddr = multiaddr.Multiaddr(addr)
            if port and maddr.value_for_protocol("tcp") == "0" and _port_free(maddr, port):
                addr = addr.replace("/tcp/0", f"/tcp/{port}", 1)
            out.append(addr)
        return out

    def _ports_path(self) -> Any:
        return None if self.home is None else self.home.data / LISTEN_PORTS_FILE

    def _load_ports(self) -> dict[str, int]:
        path = self._ports_path()
        try:
            data = json.loads(path.read_text()) if path is not None else {}
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, int)} \
            if isinstance(data, dict) else {}

    def _remember_ports(self, listening: list[multiaddr.Multiaddr]) -> None:
        path = self._ports_path()
        if path is None or len(listening) != len(self.listen):
            return  # a listener failed: which port belongs to which entry is unclear
        ports = {}
        for configured, actual in zip(self.listen, listening):
            try:
                ports[configured] = int(actual.value_for_protocol("tcp"))
            except Exception:
                continue
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(ports))
            os.replace(tmp, path)
        except OSError as exc:  # costs a new port after a restart, nothing else
            self.log.warning("transport.ports_file_unwritable", error=str(exc))

    # -- persistence of connected peers ------------------------------------------------
    def _peers_path(self) -> Any:
        return None if self.home is None else self.home.data / PEERS_FILE

    async def _persist_loop(self) -> None:
        path = self._peers_path()
        while True:
            await self._persist.wait()
            self._persist = trio.Event()
            if path is None or not self._persisting:
                continue
            tmp = path.with_suffix(".tmp")
            try:
                tmp.write_text(json.dumps(self._known, indent=1))
                os.replace(tmp, path)
            except OSError as exc:  # a full disk costs the redial list, nothing else
                self.log.error("transport.peers_file_unwritable", path=str(path),
                               error=str(exc))
            await trio.sleep(0.1)  # coalesce bursts of connects into one write

    def _load_peers(self) -> dict[str, list[str]]:
        path = self._peers_path()
        if path is None or not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not an object")
            return {str(k): [str(a) for a in v] for k, v in data.items() if isinstance(v, list)}
        except (ValueError, OSError) as exc:
            self.log.warning("transport.peers_file_unreadable", path=str(path), error=str(exc))
            return {}

    async def _redial(self) -> None:
        """Reconnect to the peers we were connected to before a restart, and the
        configured bootstrap peers."""
        targets = self._load_peers()
        for addr in self.bootstrap:
            pid = multiaddr.Multiaddr(addr).get_peer_id()
            if pid:
                targets.setdefault(pid, []).append(addr)
        if not targets:
            return
        self.log.info("transport.redialing", peers=len(targets))

        def failed(pid: str, exc: Exception) -> None:
            self.log.warning("transport.redial_failed", peer_id=pid,
                             error=getattr(exc, "message", str(exc)))

        async def one(pid: str, addrs: list[str]) -> None:
            try:
                await self._connect(ID.from_base58(pid),
                                    [multiaddr.Multiaddr(a) for a in addrs])
                self.log.info("transport.redialed", peer_id=pid)
            except Exception as exc:
                failed(pid, exc)
            except BaseExceptionGroup as group:  # the dial's nursery, as the actor stops
                handle_beside_cancel(group, lambda exc: failed(pid, exc))

        async with trio.open_nursery() as nursery:
            for pid, addrs in targets.items():
                nursery.start_soon(one, pid, addrs)

    # -- dialling ----------------------------------------------------------------------
    async def _connect(self, peer: ID, addrs: list[multiaddr.Multiaddr]) -> None:
        """Connect to `peer` if not connected, within the connection limit. A dial
        while another to the same peer runs (gossip, the dht and a stream the user
        asked for often dial at once) joins it: one connection, not one per caller."""
        node = self._require()
        host = node.host
        if peer == node.peer_id:
            raise errors.bad_params("that is this node's own peer id")
        bare = [_strip_p2p(a) for a in addrs]
        if bare:
            host.get_peerstore().add_addrs(peer, bare, ADDR_TTL_S)

        def connected() -> bool:
            return bool(host.get_network().get_connections(peer))

        if connected():
            return
        if len(host.get_connected_peers()) >= self.max_connections:
            raise errors.BusError(errors.LIMIT, f"connection limit reached "
                                  f"({self.max_connections} peers, transport.max_connections)")
        try:
            known = {str(a): a for a in host.get_peerstore().addrs(peer)}
        except Exception:
            known = {}
        if not known:
            raise errors.not_found(f"no known addresses for {peer}")

        async def dial(addrs: frozenset[str]) -> None:
            await self._dial_peer(peer, bare, [known[a] for a in addrs])

        await self._dials.dial(peer, frozenset(known), dial, connected)

    async def _dial_peer(self, peer: ID, bare: list[multiaddr.Multiaddr],
                         addrs: list[multiaddr.Multiaddr]) -> None:
        """Direct addresses at once, circuits RELAY_DELAY_S later (or as soon as every
        direct one failed); the first connection wins and the other dials stop.
        `bare`: what the caller gave, dialled first."""
        host = self._require().host
        direct, circuits = split_addrs(addrs)
        if self.nat is None:
            circuits = []
        problems: list[str] = []
        direct_over = trio.Event()

        async def direct_first(done: trio.CancelScope) -> None:
            try:
                with trio.fail_after(DIAL_TIMEOUT_S):
                    await dial_direct(host.get_network(), peer,
                                      [a for a in bare if str(a) in {str(d) for d in direct}],
                                      direct)
                done.cancel()
            except trio.TooSlowError:
                problems.insert(0, f"no answer in {DIAL_TIMEOUT_S:g}s")
            except Exception as exc:
                problems.insert(0, _why(exc))
            except BaseExceptionGroup as group:
                # dial_direct's nursery, cancelled as the other dial won (or the actor
                # stops) while one address failed: without this the failure would
                # escape, and a dial that connected through a relay would raise it.
                handle_beside_cancel(group, lambda exc: problems.insert(0, _why(exc)))
            finally:
                direct_over.set()
                # The swarm remembers failures for a while; an explicit dial must retry.
                if not host.get_network().get_connections(peer):
                    host.forget_dial_failures(peer)

        async def circuits_after(done: trio.CancelScope) -> None:
            if direct:
                with trio.move_on_after(RELAY_DELAY_S):
                    await direct_over.wait()
            assert self.nat is not None
            try:
                with trio.fail_after(DIAL_TIMEOUT_S):
                    await self.nat.dial_via_relays(peer, circuits)
                done.cancel()
            except trio.TooSlowError:
                problems.append(f"through relays: no answer in {DIAL_TIMEOUT_S:g}s")
            except Exception as exc:
                problems.append(f"through relays: {_why(exc)}")
            except BaseExceptionGroup as group:  # as in direct_first
                handle_beside_cancel(group,
                                     lambda exc: problems.append(f"through relays: {_why(exc)}"))

        with self.nat.dialling_circuits(peer) if self.nat and circuits else nullcontext():
            async with trio.open_nursery() as nursery:
                if direct:
                    nursery.start_soon(direct_first, nursery.cancel_scope)
                if circuits:
                    nursery.start_soon(circuits_after, nursery.cancel_scope)
        if not host.get_network().get_connections(peer):
            raise errors.unavailable(f"cannot reach {peer}: "
                                     f"{'; '.join(problems) or 'no direct address'}")

    # -- RPCs --------------------------------------------------------------------------
    @rpc
    async def addrs(self) -> dict[str, Any]:
        """{} -> {"peer_id", "addrs": [multiaddr ending in /p2p/<peer id>, ...]}"""
        node = self._require()
        return {"peer_id": str(node.peer_id), "addrs": node.full_addrs()}

    @rpc
    async def peers(self) -> list[dict[str, Any]]:
        """{} -> [{"peer_id", "addrs", "protocols", "direction", "remote_addr",
        "streams", "identified", "relayed", "connections": [{"relayed", "remote_addr",
        "direction"}, ...], "connected_since"}, ...] for every connected peer."""
        node = self._require()
        return [self._peer_entry(p) for p in node.host.get_connected_peers()]

    @rpc
    async def peer_info(self, peer_id: str) -> dict[str, Any]:
        """{"peer_id"} -> the peers() entry plus "connected": bool; not_found if the
        peer is neither connected nor known."""
        node = self._require()
        peer = _parse_peer(peer_id)
        connected = bool(node.host.get_network().get_connections(peer))
        if not connected and peer not in node.host.get_peerstore().peer_ids():
            raise errors.not_found(f"unknown peer {peer_id}")
        return {**self._peer_entry(peer), "connected": connected}

    @rpc
    async def dial(self, addr: str) -> dict[str, Any]:
        """{"addr": "/ip4/.../tcp/.../p2p/<peer id>"} -> {"peer_id", "addr", "connect_ms"}"""
        self._require()
        try:
            maddr = multiaddr.Multiaddr(addr)
        except Exception:
            raise errors.bad_params(f"not a multiaddr: {addr!r}") from None
        pid = maddr.get_peer_id()
        if not pid:
            raise errors.bad_params(f"{addr} does not end in /p2p/<peer id>")
        peer = _parse_peer(pid)
        start = time.perf_counter()
        await self._connect(peer, [maddr])
        return {"peer_id": pid, "addr": addr,
                "connect_ms": round((time.perf_counter() - start) * 1000, 3)}

    @rpc
    async def add_addrs(self, peer_id: str, addrs: list[str]) -> dict[str, Any]:
        """{"peer_id", "addrs": [multiaddr, ...]} -> {"peer_id", "added": n}

        Remember addresses learnt elsewhere (the dht's find_peer) for an hour, so a
        later dial or ping by peer ID works. Nothing is dialled."""
        node = self._require()
        peer = _parse_peer(peer_id)
        if peer == node.peer_id:
            raise errors.bad_params("that is this node's own peer id")
        if not 1 <= len(addrs) <= 32:
            raise errors.bad_params("give 1..32 addrs")
        parsed = []
        for a in addrs:
            try:
                maddr = multiaddr.Multiaddr(a)
            except Exception:
                raise errors.bad_params(f"not a multiaddr: {a!r}") from None
            if maddr.get_peer_id() not in (None, peer_id):
                raise errors.bad_params(f"{a} names another peer")
            parsed.append(_strip_p2p(maddr))
        node.host.get_peerstore().add_addrs(peer, parsed, ADDR_TTL_S)
        return {"peer_id": peer_id, "added": len(parsed)}

    @rpc
    async def hangup(self, peer_id: str) -> dict[str, Any]:
        """{"peer_id"} -> {"peer_id", "disconnected": true}; not_found if not connected."""
        node = self._require()
        peer = _parse_peer(peer_id)
        if not node.host.get_network().get_connections(peer):
            raise errors.not_found(f"not connected to {peer_id}")
        self._known.pop(peer_id, None)
        self._persist.set()
        await node.host.disconnect(peer)
        return {"peer_id": peer_id, "disconnected": True}

    @rpc
    async def ping(self, peer_id: str, count: int = 1) -> dict[str, Any]:
        """{"peer_id", "count"?} -> {"peer_id", "rtt_ms", "rtts_ms"}; dials the peer
        first if its addresses are known."""
        node = self._require()
        if not 1 <= count <= 100:
            raise errors.bad_params("count must be 1..100")
        peer = _parse_peer(peer_id)
        await self._connect(peer, [])
        rtts = []
        try:
            for _ in range(count):
                rtts.append(await ping_rtt_ms(node.host, peer))
        except Exception as exc:
            raise errors.unavailable(f"ping to {peer_id} failed: {_why(exc)}") from None
        return {"peer_id": peer_id, "rtt_ms": round(min(rtts), 3),
                "rtts_ms": [round(r, 3) for r in rtts]}

    @every(5.0)
    async def _refresh_addresses(self) -> None:
        """Observed addresses come and go: re-sign the record and tell peers."""
        node = self.node
        if node is not None and await node.refresh_record():
            await node.host.push_identify_to_all()

    def _peer_entry(self, peer: ID) -> dict[str, Any]:
        assert self.node is not None
        host = self.node.host
        store = host.get_peerstore()
        try:
            addrs = [str(a) for a in store.addrs(peer)]
        except Exception:
            addrs = []
        try:
            protocols = sorted(str(p) for p in store.get_protocols(peer))
        except Exception:
            protocols = []
        conns = host.get_network().get_connections(peer)
        direction = remote = ""
        if conns:
            # Describe the direct connection when there is one (DCUtR may briefly
            # hold both it and the relayed one).
            best = next((c for c in conns if not is_relayed(c)), conns[0])
            direction = str(getattr(best, "direction", "")).split(".")[-1].lower()
            remote = _conn_addr(best)
        return {"peer_id": str(peer), "addrs": addrs, "protocols": protocols,
                "direction": direction, "remote_addr": remote,
                "streams": self.hub.streams_of(peer) if self.hub else 0,
                "identified": host.is_identified(peer),
                "relayed": bool(conns) and all(is_relayed(c) for c in conns),
                "connections": [{"relayed": is_relayed(c), "remote_addr": _conn_addr(c),
                                 "direction": str(getattr(c, "direction", "")).split(".")[-1]
                                 .lower()} for c in conns],
                "connected_since": self._connected_at.get(peer)}


def _port_free(maddr: multiaddr.Multiaddr, port: int) -> bool:
    """Whether a TCP listener could bind `port` on the address of `maddr` now."""
    names = {p.name for p in maddr.protocols()}
    family, host = (socket.AF_INET6, maddr.value_for_protocol("ip6")) if "ip6" in names \
        else (socket.AF_INET, maddr.value_for_protocol("ip4") if "ip4" in names else "")
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _parse_peer(text: str) -> ID:
    try:
        return ID(identity.peer_id_bytes(text))
    except identity.PeerIdError:
        raise errors.bad_params(f"not a peer id: {text!r}") from None


def _conn_addr(conn: INetConn) -> str:
    try:
        addrs = conn.get_transport_addresses()
        if addrs and (is_circuit(addrs[0]) or "/p2p/" not in str(addrs[0])):
            return str(addrs[0])
        if addrs and str(addrs[0]).startswith(("/ip4/", "/ip6/")):
            return str(addrs[0]).split("/p2p/")[0]  # a dial address keeps the peer id
    except Exception:
        pass
    # py-libp2p 0.8.1 has no address for IPv6 TCP connections (it rejects getpeername's
    # 4-tuple): find the socket under the session layers and ask it ourselves.
    layer: Any = conn.muxed_conn
    for attr in ("secured_conn", "conn", "read_writer", "read_write_closer", "stream",
                 "stream", "socket"):
        layer = getattr(layer, attr, layer)
        if hasattr(layer, "getpeername"):
            try:
                host, port = layer.getpeername()[:2]
            except OSError:
                return ""
            return f"/{'ip6' if ':' in host else 'ip4'}/{host}/tcp/{port}"
    return ""
