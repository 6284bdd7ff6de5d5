"""Per-peer rate limits on what a remote peer may open at the transport.

Two layers, both token buckets in bounded tables (common/ratelimit.py, where the
overflow rule is written):

* any new stream, counted by the muxer before a byte of it is read (yamux_guard.py;
  on an Mplex connection, by the host before protocol negotiation): `STREAM_OPEN`;
* each protocol, once multistream-select has named it, before its handler runs: the
  rates below. The transport's own protocols (identify, identify push, ping, relay hop
  and stop, AutoNAT, DCUtR) and the ones owners speak through the stream API (kad,
  meshsub, sync, keys) are all limited here, since every handler the host installs passes
  through `P2pmHost.set_stream_handler`.

A refused stream is reset at once and counted; the peer sees a reset stream, exactly as
if the handler had refused it. The rates are far above what an honest peer opens (one
meshsub stream per connection; a kad lookup asks each peer a few questions; identify
once per connection and push on address changes) and low enough that opening streams
costs a stranger more than it costs us.
"""

from __future__ import annotations

from collections.abc import Hashable

from p2pm.common.ratelimit import Rate, RateTable

# Any new inbound stream, whatever its protocol, per peer.
STREAM_OPEN = Rate(rate=100.0, burst=300.0)

# Protocol prefix -> (kind, rate). The first prefix a protocol ID starts with wins.
PROTOCOL_RATES: tuple[tuple[str, str, Rate], ...] = (
    ("/ipfs/id/push/", "identify_push", Rate(rate=1.0, burst=10.0)),
    ("/ipfs/id/", "identify", Rate(rate=1.0, burst=10.0)),
    ("/ipfs/ping/", "ping", Rate(rate=5.0, burst=30.0)),
    ("/ipfs/kad/", "kad", Rate(rate=50.0, burst=200.0)),
    ("/meshsub/", "meshsub", Rate(rate=1.0, burst=10.0)),
    ("/p2pm/sync/", "sync", Rate(rate=5.0, burst=30.0)),
    # one exchange per flush of what a peer owes us (sender keys, admissions), and a
    # first contact's bundle ask; each may cost us Olm sessions and a one-time key
    ("/p2pm/keys/", "keys", Rate(rate=1.0, burst=20.0)),
    ("/libp2p/circuit/relay/0.2.0/hop", "relay_hop", Rate(rate=1.0, burst=10.0)),
    ("/libp2p/circuit/relay/0.2.0/stop", "relay_stop", Rate(rate=2.0, burst=20.0)),
    ("/libp2p/autonat/", "autonat", Rate(rate=0.5, burst=5.0)),
    ("/libp2p/dcutr", "dcutr", Rate(rate=0.5, burst=5.0)),
)
# Protocols that owners register through the stream API beyond the ones above (an
# application's, a benchmark's): each such stream is also bounded by the hub's
# per-peer stream limit, so this only keeps opens under the muxer's rate.
OTHER = ("other", Rate(rate=50.0, burst=300.0))


def protocol_kind(protocol: str) -> str:
    for prefix, kind, _rate in PROTOCOL_RATES:
        if protocol.startswith(prefix):
            return kind
    return OTHER[0]


class PeerLimits:
    """The per-peer tables of one host: `stream_open` for the muxer and one per protocol
    kind. `max_peers` bounds each table (a few times the connection limit, so a bucket
    is normally only evicted once its peer has gone)."""

    def __init__(self, max_peers: int) -> None:
        self.stream_open = RateTable(STREAM_OPEN, max_peers)
        self.protocols = {kind: RateTable(rate, max_peers)
                          for _prefix, kind, rate in (*PROTOCOL_RATES, ("", *OTHER))}

    def allow_protocol(self, peer: Hashable, protocol: str, now: float) -> bool:
        return self.protocols[protocol_kind(protocol)].allow(peer, now)

    def status(self) -> dict[str, dict[str, int]]:
        tables = {"stream_open": self.stream_open, **self.protocols}
        return {kind: table.status() for kind, table in tables.items()}
