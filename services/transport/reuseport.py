"""TCP that dials from its listening port, so NATs map both to one external port.

Hole punching depends on it: the address a peer observes for our outgoing connections
(identify's observed address) must be the one our NAT forwards to our listener, and
the DCUtR simultaneous open must leave from the port the other side dials. py-libp2p's
TCP transport sets SO_REUSEADDR/SO_REUSEPORT on its listeners and can bind a dial to a
source (`dial_with_source`), but its plain `dial()` uses an ephemeral port. This
subclass makes the listening port the default source, and falls back to an ephemeral
port when the kernel refuses (a second connection to the same remote endpoint from the
same port is impossible: the 4-tuple would repeat).

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

    @classmethod
    def adopt(cls, transport: TCP) -> ReuseportTCP:
        transport.__class__ = cls
        assert isinstance(transport, ReuseportTCP)
        transport.source_port = 0
        transport.source_ip4 = "0.0.0.0"
        return transport

    def can_dial(self, maddr: multiaddr.Multiaddr) -> bool:
        return not is_circuit(maddr) and super().can_dial(maddr)

    def source_for(self, maddr: multiaddr.Multiaddr) -> tuple[str, int] | None:
        if not self.source_port or "/ip4/" not in str(maddr):
            return None
        return (self.source_ip4, self.source_port)

    async def dial(self, maddr: multiaddr.Multiaddr) -> IRawConnection:
        source = self.source_for(maddr)
        if source is None:
            return await super().dial(maddr)
        try:
            return await self.dial_with_source(maddr, source)
        except OpenConnectionError as exc:
            # Refused by the kernel (4-tuple in use), or by the peer: an ephemeral port
            # tells the two apart, and still connects in the first case.
            log.debug("transport.reuseport_fallback", addr=str(maddr), error=str(exc))
            return await super().dial(maddr)


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
