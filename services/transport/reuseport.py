"""TCP that dials from its listening port where NAT traversal needs it, so the NAT maps
the dial and the listener to one external port.

Hole punching depends on it: the address the relay observes for our connection to it
(identify's observed address) must be the one our NAT forwards to our listener, since
DCUtR hands that address to the other side, and the DCUtR simultaneous open must leave
from the port the other side dials. py-libp2p's TCP transport sets SO_REUSEADDR and
SO_REUSEPORT on its listeners and can bind a dial to a source (`dial_with_source`).

The rule: only DCUtR punches (dcutr.py passes `source_for` itself) and dials to relays
(`dial_from_listening_port`) leave from the listening port; every other dial uses an
ephemeral port. Dialling everything from the listening port makes two peers that dial
each other at the same moment (both gossip actors after an invite, say) produce one
TCP connection out of the two SYNs (a TCP simultaneous open) on which both sides act as
Noise initiator, and that dial hangs until it times out. A relay never dials its
clients, and DCUtR assigns the two roles of its simultaneous open, so neither collides.
A dial from the listening port falls back to an ephemeral port when the kernel refuses
(a second connection to the same remote endpoint from the same port would repeat the
4-tuple).

It also refuses `/p2p-circuit` addresses, which only the relay client (relay.py) dials:
without that the swarm would dial the relay's TCP address as if it were the target.
"""

from __future__ import annotations

import multiaddr
from libp2p.abc import IRawConnection
from libp2p.transport.exceptions import OpenConnectionError
from libp2p.transport.tcp.tcp import TCP

from p2pm.common.log import get_logger

log = get_logger("transport")


def is_circuit(addr: multiaddr.Multiaddr | str) -> bool:
    return "/p2p-circuit" in str(addr)


class ReuseportTCP(TCP):
    """Set as the class of the swarm's TCP transport (`adopt`); `source_port` is filled
    in once the listener is bound."""

    source_port: int = 0
    source_ip4: str = "0.0.0.0"
    # Bare "/ip4/../tcp/.." addresses dialled from the listening port: the relays.
    listening_port_targets: set[str]

    @classmethod
    def adopt(cls, transport: TCP) -> ReuseportTCP:
        transport.__class__ = cls
        assert isinstance(transport, ReuseportTCP)
        transport.source_port = 0
        transport.source_ip4 = "0.0.0.0"
        transport.listening_port_targets = set()
        return transport

    def dial_from_listening_port(self, maddr: multiaddr.Multiaddr) -> None:
        """Dials to `maddr` (a relay) leave from the listening port from now on."""
        bare = bare_tcp(maddr)
        if bare is not None:
            self.listening_port_targets.add(bare)

    def can_dial(self, maddr: multiaddr.Multiaddr) -> bool:
        return not is_circuit(maddr) and super().can_dial(maddr)

    def source_for(self, maddr: multiaddr.Multiaddr) -> tuple[str, int] | None:
        if not self.source_port or "/ip4/" not in str(maddr):
            return None
        return (self.source_ip4, self.source_port)

    async def dial(self, maddr: multiaddr.Multiaddr) -> IRawConnection:
        source = self.source_for(maddr)
        if source is None or bare_tcp(maddr) not in self.listening_port_targets:
            return await super().dial(maddr)
        try:
            return await self.dial_with_source(maddr, source)
        except OpenConnectionError as exc:
            # Refused by the kernel (4-tuple in use), or by the peer: an ephemeral port
            # tells the two apart, and still connects in the first case.
            log.debug("transport.reuseport_fallback", addr=str(maddr), error=str(exc))
            return await super().dial(maddr)


def bare_tcp(addr: multiaddr.Multiaddr) -> str | None:
    """"/ip4/<ip>/tcp/<port>" of an address, without what follows."""
    try:
        ip = addr.value_for_protocol("ip4")
        port = int(addr.value_for_protocol("tcp"))
    except Exception:
        return None
    return f"/ip4/{ip}/tcp/{port}" if ip and port else None


def local_port(conn: object) -> int | None:
    """The local TCP port under a swarm connection, found by walking the layers
    (muxer, security session, raw connection, trio stream) down to the socket (for a
    relayed connection, the socket of the connection to the relay)."""
    seen: set[int] = set()
    todo = [conn]
    while todo:
        obj = todo.pop()
        if obj is None or id(obj) in seen or len(seen) > 32:
            continue
        seen.add(id(obj))
        sock = getattr(obj, "socket", None)
        if sock is not None and hasattr(sock, "getsockname"):
            try:
                name = sock.getsockname()
                return int(name[1])
            except Exception:
                return None
        for attr in ("muxed_conn", "secured_conn", "conn", "read_writer", "stream"):
            todo.append(getattr(obj, attr, None))
    return None


def listening_port(addrs: list[multiaddr.Multiaddr]) -> tuple[str, int] | None:
    """(ip, port) of the first IPv4 TCP listener."""
    for addr in addrs:
        try:
            ip = addr.value_for_protocol("ip4")
            port = int(addr.value_for_protocol("tcp"))
        except Exception:
            continue
        if ip and port:
            return ip, port
    return None
