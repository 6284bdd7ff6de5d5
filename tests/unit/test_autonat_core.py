"""AutoNAT's pure parts: the verdict from dial-back answers, the server's rate limits,
and which requested addresses a server may dial."""

from __future__ import annotations

import multiaddr

from p2pm.services.transport.autonat import (PRIVATE, PUBLIC, UNKNOWN, DialBackLimiter,
                                             ReachabilityTracker, dialback_addrs)


def test_one_success_makes_a_node_public_and_one_failure_private() -> None:
    t = ReachabilityTracker()
    assert t.state == UNKNOWN
    assert t.record(False) and t.state == PRIVATE
    assert t.record(True) and t.state == PUBLIC


def test_an_established_verdict_survives_isolated_contrary_answers() -> None:
    t = ReachabilityTracker()
    t.record(True)
    for _ in range(3):
        t.record(True)  # confidence 3
    for _ in range(3):
        assert not t.record(False)
    assert t.state == PUBLIC
    assert t.record(False) and t.state == PRIVATE


def test_limiter_per_peer_and_in_total_within_the_window() -> None:
    lim = DialBackLimiter(max_per_peer=2, max_total=3, window_s=60)
    assert lim.allow("a", 0) and lim.allow("a", 1)
    assert not lim.allow("a", 2)  # third from the same peer
    assert lim.allow("b", 3)
    assert not lim.allow("c", 4)  # three in total
    assert lim.allow("a", 61)  # the window moved on
    assert lim.allow("c", 62)


def _b(text: str) -> bytes:
    return multiaddr.Multiaddr(text).to_bytes()


def test_dialback_only_to_the_observed_ip_and_never_through_a_relay() -> None:
    requested = [
        _b("/ip4/198.18.0.11/tcp/4001"),
        _b("/ip4/198.19.1.2/tcp/4001"),  # a LAN address: another IP
        _b("/ip4/203.0.113.9/tcp/80"),  # a third party we must not be aimed at
        _b("/ip4/198.18.0.2/tcp/4001/p2p/12D3KooWEGiRV8oE6crBS1Tmpohf1sZqxCbj3JFmHDXTti7X3dww"
           "/p2p-circuit"),
        _b("/ip4/198.18.0.11/tcp/4001"),  # duplicate
        _b("/ip4/198.18.0.11/udp/4001/quic-v1"),
        b"\xff\xfe not a multiaddr",
    ]
    assert [str(a) for a in dialback_addrs(requested, "198.18.0.11")] == [
        "/ip4/198.18.0.11/tcp/4001"]
    assert dialback_addrs(requested, "198.18.0.99") == []
