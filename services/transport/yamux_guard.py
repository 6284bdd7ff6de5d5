"""What a Yamux connection does with each frame a peer sends: the bounded-memory rules.

Theory of operation. py-libp2p 0.8.1's Yamux buffers every DATA frame for a known stream
whatever the window said (it logs a warning and clamps its count at zero), and keeps
buffering for a stream whose local side has finished with it: a peer writing into a
finished identify stream grew a node by ~100 MiB/s. The receive loop of our muxer
(`BoundedYamux`, host.py) asks a `ReceiveGuard` about each frame *before* reading its
body, and the guard answers with a `Verdict`:

* ACCEPT   - buffer the body (it fits the stream's credit and the connection budget).
* DISCARD  - read the body in small pieces and drop it (a stream we closed or reset, or
             one never opened: its data may legitimately be in flight).
* RESET    - discard the body and reset the stream (RST): it overran its window, or the
             stream may not be opened (rate, count).
* GO_AWAY  - discard and close the connection with a protocol error: the peer broke
             the protocol (a bad header) or kept overrunning (`strikes_to_disconnect`).

Order of checks for DATA on a known stream: window first (length > credit is an overrun
and a strike), then the connection's budget (total unread bytes; hitting it resets the
stream, no strike: the peer stayed inside what we granted). Data for unknown streams is
paid from a per-connection allowance of discarded bytes (a token bucket in bytes):
in-flight data after a reset fits it easily; a peer that keeps writing into a stream we
reset exhausts it, which is a strike.

What is bounded, per connection: unread data <= `conn_buffer_cap` (each stream's window
is at most `max_stream_window`, which BoundedYamux also caps when it auto-tunes); open
inbound streams <= `max_inbound_streams`; opens per peer by the shared `RateTable`
(common/ratelimit.py, its overflow rule there). Nothing about a dead stream is kept.

Why this is a guard around py-libp2p's Yamux rather than a muxer of our own: the
guard's rules are the whole fix, and they sit where a peer's bytes first land; the
sending side, stream reads and window updates stay py-libp2p's, which js-libp2p and
py-libp2p interoperate with today. Everything here is sans-IO, so an own muxer for the
performance work can reuse it unchanged.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Hashable
from dataclasses import dataclass, field

from p2pm.common.ratelimit import Rate, RateTable

HEADER = struct.Struct("!BBHII")  # version, type, flags, stream id, length
HEADER_SIZE = HEADER.size
TYPE_DATA, TYPE_WINDOW_UPDATE, TYPE_PING, TYPE_GO_AWAY = 0, 1, 2, 3
FLAG_SYN, FLAG_ACK, FLAG_FIN, FLAG_RST = 1, 2, 4, 8
GO_AWAY_NORMAL, GO_AWAY_PROTOCOL_ERROR = 0, 1
DEFAULT_WINDOW = 256 * 1024


class YamuxProtocolError(ValueError):
    """The peer sent something Yamux does not allow."""


@dataclass(frozen=True, slots=True)
class Header:
    version: int
    type: int
    flags: int
    stream_id: int
    length: int


def decode_header(data: bytes) -> Header:
    """A 12-byte Yamux header, checked: version 0, a known type, and a stream ID that
    fits the type (ping and go-away on the session, 0; data and window updates not)."""
    if len(data) != HEADER_SIZE:
        raise YamuxProtocolError(f"a header is {HEADER_SIZE} bytes, got {len(data)}")
    h = Header(*HEADER.unpack(data))
    if h.version != 0:
        raise YamuxProtocolError(f"unknown version {h.version}")
    if h.type > TYPE_GO_AWAY:
        raise YamuxProtocolError(f"unknown frame type {h.type}")
    if (h.stream_id == 0) != (h.type in (TYPE_PING, TYPE_GO_AWAY)):
        raise YamuxProtocolError(f"frame type {h.type} on stream {h.stream_id}")
    return h


def encode_header(type_: int, flags: int, stream_id: int, length: int) -> bytes:
    return HEADER.pack(0, type_, flags, stream_id, length)


class Verdict(enum.Enum):
    ACCEPT = "accept"
    DISCARD = "discard"
    RESET = "reset"
    GO_AWAY = "go_away"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str = ""


ACCEPT = Decision(Verdict.ACCEPT)
DISCARD = Decision(Verdict.DISCARD)


@dataclass(frozen=True, slots=True)
class GuardLimits:
    # Largest window a stream is granted (py-libp2p would auto-tune up to 16 MiB).
    max_stream_window: int = 1024 * 1024
    # Unread bytes a connection may hold over all its streams: a few full windows.
    conn_buffer_cap: int = 8 * 1024 * 1024
    # Overruns (or exhausted discard allowances) a connection survives.
    strikes_to_disconnect: int = 3
    # Streams the peer may have open towards us at once (the spec's ACK backlog is 256).
    max_inbound_streams: int = 256
    # Bytes a peer may send into streams that are gone, beyond which it is a strike.
    dead_stream_bytes: Rate = Rate(rate=1024 * 1024, burst=4 * 1024 * 1024)


@dataclass
class MuxStats:
    """Counters over every connection, for sys.status (transport.muxer)."""

    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys((
        "streams_accepted", "streams_refused_rate", "streams_refused_count",
        "strikes", "overrun_resets", "budget_resets", "disconnects",
        "protocol_errors", "discarded_bytes"), 0))

    def bump(self, name: str, by: int = 1) -> None:
        self.counters[name] += by


class ReceiveGuard:
    """The rules for one connection. `peer` keys the shared per-peer open-rate table."""

    def __init__(self, peer: Hashable, limits: GuardLimits, open_rate: RateTable,
                 stats: MuxStats) -> None:
        self.peer = peer
        self.limits = limits
        self.open_rate = open_rate
        self.stats = stats
        self.strikes = 0
        self._dead_bytes = RateTable(limits.dead_stream_bytes, max_keys=1)

    def on_open(self, now: float, inbound_open: int) -> Decision:
        """A SYN from the peer for a stream ID we do not know, while `inbound_open` of
        the streams it opened are still open."""
        if inbound_open >= self.limits.max_inbound_streams:
            self.stats.bump("streams_refused_count")
            return Decision(Verdict.RESET, "too many open streams")
        if not self.open_rate.allow(self.peer, now):
            self.stats.bump("streams_refused_rate")
            return Decision(Verdict.RESET, "stream open rate")
        self.stats.bump("streams_accepted")
        return ACCEPT

    def on_data(self, length: int, credit: int | None, buffered: int,
                now: float) -> Decision:
        """A DATA frame of `length` bytes. `credit` is the stream's remaining receive
        window, None for a stream we do not (or no longer) know; `buffered` is what the
        connection holds unread."""
        if credit is None:
            self.stats.bump("discarded_bytes", length)
            if length and not self._dead_bytes.allow(None, now, cost=length):
                decision = self._strike("kept writing into streams that are gone")
                self._dead_bytes.forget(None)
                return Decision(Verdict.DISCARD, decision.reason) \
                    if decision.verdict is Verdict.RESET else decision
            return DISCARD
        if length > credit:
            self.stats.bump("discarded_bytes", length)
            decision = self._strike(f"overran its window by {length - credit} bytes")
            if decision.verdict is Verdict.RESET:
                self.stats.bump("overrun_resets")
            return decision
        if buffered + length > self.limits.conn_buffer_cap:
            self.stats.bump("budget_resets")
            self.stats.bump("discarded_bytes", length)
            return Decision(Verdict.RESET, "connection buffer full")
        return ACCEPT

    def on_protocol_error(self, reason: str) -> Decision:
        self.stats.bump("protocol_errors")
        self.stats.bump("disconnects")
        return Decision(Verdict.GO_AWAY, reason)

    def _strike(self, reason: str) -> Decision:
        self.strikes += 1
        self.stats.bump("strikes")
        if self.strikes >= self.limits.strikes_to_disconnect:
            self.stats.bump("disconnects")
            return Decision(Verdict.GO_AWAY, f"{reason} ({self.strikes} strikes)")
        return Decision(Verdict.RESET, reason)
