"""DCUtR's retry bookkeeping and address choice (pure, no sockets).

py-libp2p's DCUtR keeps a failure count per peer that is never reset while the peer
stays connected: after three failures that peer is never punched again. Ours blocks a
peer only for a cooldown, and forgets on success or when the peer disconnects."""

from __future__ import annotations

import multiaddr

from p2pm.services.transport.dcutr import HolePunchTracker, punch_addrs


def test_one_run_at_a_time_per_peer() -> None:
    t = HolePunchTracker(cooldown_s=600)
    assert t.begin("p", 0)
    assert not t.begin("p", 1)
    assert t.begin("q", 1)


def test_a_failed_peer_is_retried_after_the_cooldown_not_never() -> None:
    t = HolePunchTracker(cooldown_s=600)
    for round_start in (0, 605, 1210):
        assert t.begin("p", round_start)
        t.end("p", False, round_start + 5)
        assert not t.begin("p", round_start + 300)
    assert t.begin("p", 1815)


def test_success_and_disconnect_clear_the_record() -> None:
    t = HolePunchTracker(cooldown_s=600)
    t.begin("p", 0)
    t.end("p", False, 1)
    t.forget("p")  # reconnected: a new relayed connection starts afresh
    assert t.begin("p", 2)
    t.end("p", True, 3)
    assert t.begin("p", 4) and "p" not in t.failed_at


def test_punch_addresses_are_direct_ipv4_tcp_deduplicated() -> None:
    raw = [multiaddr.Multiaddr(a).to_bytes() for a in (
        "/ip4/198.18.0.12/tcp/4001", "/ip4/198.18.0.12/tcp/4001",
        "/ip4/198.18.0.12/udp/4001/quic-v1",
        "/ip4/198.18.0.2/tcp/4001/p2p/12D3KooWEGiRV8oE6crBS1Tmpohf1sZqxCbj3JFmHDXTti7X3dww"
        "/p2p-circuit")] + [b"garbage"]
    assert [str(a) for a in punch_addrs(raw)] == ["/ip4/198.18.0.12/tcp/4001"]
