"""Peer commands, answered by the transport: `peers`, `dial MULTIADDR`, `ping PEER`.

Exit codes: 0 done, 1 the transport refused or the peer is unreachable, 2 bad input,
3 the transport did not answer.
"""

from __future__ import annotations

from typing import Any

import click

from . import bus
from .base import Ctx, main

# The transport gives a dial 10 s before answering "cannot reach".
DIAL_CALL_TIMEOUT = 15.0


def _transport(obj: Ctx, method: str, params: dict[str, Any] | None = None,
               timeout: float = bus.CALL_TIMEOUT) -> Any:
    return bus.call_or_exit(obj.home, "transport", method, params, timeout=timeout, retries=1)


@main.command()
@click.pass_obj
def peers(obj: Ctx) -> None:
    """The connected peers: ID, direction, address and what they speak."""
    found = _transport(obj, "peers")
    lines = [f"{len(found)} peer{'s' if len(found) != 1 else ''} connected"]
    for p in sorted(found, key=lambda p: p["peer_id"]):
        lines.append(f"  {p['peer_id']}  {p['direction'] or '?':8}  {p['remote_addr']}  "
                     f"{len(p['protocols'])} protocols, {p['streams']} streams")
    obj.out(found, "\n".join(lines))


@main.command()
@click.argument("multiaddr")
@click.pass_obj
def dial(obj: Ctx, multiaddr: str) -> None:
    """Connect to the peer at MULTIADDR (ending in /p2p/<peer id>)."""
    result = _transport(obj, "dial", {"addr": multiaddr}, timeout=DIAL_CALL_TIMEOUT)
    obj.out(result, f"connected to {result['peer_id']} in {result['connect_ms']:.1f} ms")


@main.command()
@click.argument("peer")
@click.option("--count", "-c", type=click.IntRange(1, 100), default=1, show_default=True,
              help="How many round trips.")
@click.pass_obj
def ping(obj: Ctx, peer: str, count: int) -> None:
    """Measure the round trip to PEER (a peer ID, or a multiaddr to dial first)."""
    if peer.startswith("/"):
        peer = _transport(obj, "dial", {"addr": peer}, timeout=DIAL_CALL_TIMEOUT)["peer_id"]
    result = _transport(obj, "ping", {"peer_id": peer, "count": count},
                        timeout=DIAL_CALL_TIMEOUT)
    rtts = ", ".join(f"{r:.2f}" for r in result["rtts_ms"])
    obj.out({"peer_id": result["peer_id"], "rtt_ms": result["rtt_ms"],
             "rtts_ms": result["rtts_ms"]},
            f"{result['peer_id']}: rtt {result['rtt_ms']:.2f} ms"
            + (f" (min of {rtts})" if count > 1 else ""))
