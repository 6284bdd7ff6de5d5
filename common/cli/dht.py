"""DHT commands, answered by the dht actor: `find PEER_ID` and the `dht` group
(`table`, `closest`, `get`, `put`).

Exit codes: 0 done, 1 not found or refused, 2 bad input, 3 the dht did not answer.
"""

from __future__ import annotations

import base64
from typing import Any

import click

from . import bus
from .base import Ctx, main
from .safe import inert

# A lookup gives up after 30 s inside the dht; the call waits a little longer.
LOOKUP_TIMEOUT = 30.0
CALL_TIMEOUT = LOOKUP_TIMEOUT + 5.0


def _dht(obj: Ctx, method: str, params: dict[str, Any] | None = None,
         timeout: float = CALL_TIMEOUT) -> Any:
    # A lookup is not idempotent in cost: one attempt, with the lookup's own deadline.
    return bus.call_or_exit(obj.home, "dht", method, params, timeout=timeout, retries=0)


@main.command()
@click.argument("peer_id")
@click.pass_obj
def find(obj: Ctx, peer_id: str) -> None:
    """Find PEER_ID's addresses through the DHT (then `p2pm ping PEER_ID` can dial it)."""
    found = _dht(obj, "find_peer", {"peer_id": peer_id, "timeout": LOOKUP_TIMEOUT})
    lines = [f"{found['peer_id']}: {len(found['addrs'])} address"
             f"{'es' if len(found['addrs']) != 1 else ''} ({found['ms']:.1f} ms, "
             f"{found['queried']} peers asked)"]
    lines += [f"  {a}" for a in found["addrs"]]
    obj.out({"peer_id": found["peer_id"], "addrs": found["addrs"]}, "\n".join(lines))


@main.group()
def dht() -> None:
    """The DHT: routing table, lookups, records."""


@dht.command()
@click.pass_obj
def table(obj: Ctx) -> None:
    """The routing table, bucket by bucket (bucket i: peers sharing i leading bits)."""
    got = _dht(obj, "routing_table", timeout=bus.CALL_TIMEOUT)
    lines = [f"{got['peer_id']} ({got['mode']} mode): {got['size']} peer"
             f"{'s' if got['size'] != 1 else ''}"]
    for bucket in got["buckets"]:
        lines.append(f"  bucket {bucket['index']}: {len(bucket['peers'])}")
        for peer in bucket["peers"]:
            lines.append(f"    {peer['peer_id']}  {' '.join(peer['addrs'])}")
    obj.out(got, "\n".join(lines))


@dht.command()
@click.argument("key")
@click.pass_obj
def closest(obj: Ctx, key: str) -> None:
    """The peers nearest to KEY (a peer ID, or a multihash in hex or base58)."""
    got = _dht(obj, "closest_peers", {"key": key, "timeout": LOOKUP_TIMEOUT})
    lines = [f"{len(got['peers'])} peers ({got['queried']} asked, {got['rounds']} rounds)"]
    lines += [f"  {p['peer_id']}" for p in got["peers"]]
    obj.out(got, "\n".join(lines))


@dht.command()
@click.argument("key")
@click.pass_obj
def get(obj: Ctx, key: str) -> None:
    """The best valid value of KEY (/p2pm/<label>/<peer id> or /pk/<peer id>)."""
    got = _dht(obj, "get", {"key": key, "timeout": LOOKUP_TIMEOUT})
    value = base64.b64decode(got["value"])
    try:
        text = inert(value.decode("utf-8"), indent="")
    except UnicodeDecodeError:
        text = f"({len(value)} bytes) {value.hex()}"
    obj.out(got, text)


@dht.command()
@click.argument("key")
@click.argument("value")
@click.option("--ttl", type=click.FloatRange(60, 7 * 24 * 3600), default=24 * 3600.0,
              show_default=True, help="Seconds the record lives (/p2pm/ records).")
@click.pass_obj
def put(obj: Ctx, key: str, value: str, ttl: float) -> None:
    """Publish VALUE (text) under KEY: /p2pm/<label>/<this node's peer id>."""
    got = _dht(obj, "put", {"key": key, "value": base64.b64encode(value.encode()).decode(),
                            "ttl": ttl, "timeout": LOOKUP_TIMEOUT})
    obj.out(got, f"stored at {len(got['stored_at'])} peers"
                 + (f", refused or unreachable at {len(got['failed'])}" if got["failed"] else ""))
