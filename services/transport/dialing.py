"""Dialling a peer's direct addresses: the transport's part of a dial that py-libp2p's
swarm does not do well (it dials one TCP address per peer, the first in its
peerstore), and the small address and error helpers that go with it."""

from __future__ import annotations

from typing import Any

import multiaddr
import trio
from libp2p.abc import INetConn
from libp2p.peer.id import ID

from p2pm.common.groups import handle_beside_cancel

from .reuseport import is_circuit

DIAL_STAGGER_S = 0.25  # head start of each direct address over the next one
MAX_DIRECT_ADDRS = 8


async def dial_direct(network: Any, peer: ID, given: list[multiaddr.Multiaddr],
                      known: list[multiaddr.Multiaddr]) -> None:
    """Dial the peer's direct addresses, those the caller gave first, starting the
    next one every DIAL_STAGGER_S (or as soon as one fails); the first connection
    wins. py-libp2p's own dial_peer dials a single TCP address per peer, the first
    in its peerstore, which is often a home-LAN address nobody outside can reach."""
    order: list[multiaddr.Multiaddr] = []
    for addr in [*given, *known]:
        addr = strip_p2p(addr)
        if not is_circuit(addr) and all(str(addr) != str(a) for a in order):
            order.append(addr)
    won: list[INetConn] = []
    failures: list[str] = []

    async def one(addr: multiaddr.Multiaddr, failed: trio.Event,
                  scope: trio.CancelScope) -> None:
        def failure(exc: Exception) -> None:
            failures.append(f"{addr}: {why(exc)}")
            failed.set()

        try:
            won.append(await network.dial_addr(addr, peer))
            scope.cancel()
        except Exception as exc:
            failure(exc)
        except BaseExceptionGroup as group:
            # Cancelled as another address won, while this one failed (the swarm's
            # nurseries): the failure would otherwise come out of a dial that won.
            handle_beside_cancel(group, failure)

    async with trio.open_nursery() as nursery:
        for addr in order[:MAX_DIRECT_ADDRS]:
            failed = trio.Event()
            nursery.start_soon(one, addr, failed, nursery.cancel_scope)
            with trio.move_on_after(DIAL_STAGGER_S):
                await failed.wait()
    if not won and not network.get_connections(peer):
        raise ValueError("; ".join(failures) or "no direct address")


def strip_p2p(addr: multiaddr.Multiaddr) -> multiaddr.Multiaddr:
    try:
        return addr.decapsulate_code(multiaddr.protocols.P_P2P)
    except Exception:
        return addr


def why(exc: BaseException) -> str:
    """The innermost useful message of a py-libp2p error chain."""
    seen = exc
    while seen.__cause__ is not None and not str(seen).strip():
        seen = seen.__cause__
    text = str(seen).strip() or type(seen).__name__
    return text.splitlines()[0][:200]
