"""Keyspace, routing table (k-buckets, replacement cache, liveness, refresh) and the
per-peer rate limiter."""

from __future__ import annotations

import hashlib
import random

import pytest

from p2pm.services.dht.keyspace import (MAX_REFRESH_CPL, common_prefix_length, kad_key,
                                        random_key_in_bucket)
from p2pm.services.dht.messages import Peer
from p2pm.services.dht.ratelimit import RateLimiter
from p2pm.services.dht.routing import RoutingTable
from p2pm.services.dht.sim import random_peer_id


def _peers_in_bucket(table: RoutingTable, index: int, count: int, rng: random.Random) -> list[Peer]:
    out = []
    while len(out) < count:
        pid = random_peer_id(rng)
        if table.bucket_of(pid) == index:
            out.append(Peer(pid))
    return out


def test_distance_is_xor_of_sha256() -> None:
    a, b = b"alpha", b"beta"
    want = int.from_bytes(hashlib.sha256(a).digest(), "big") ^ int.from_bytes(
        hashlib.sha256(b).digest(), "big")
    assert kad_key(a) ^ kad_key(b) == want
    assert common_prefix_length(kad_key(a), kad_key(a)) == 256
    assert common_prefix_length(0, 1 << 255) == 0


def test_refresh_keys_land_in_their_bucket() -> None:
    rng = random.Random(3)
    local = kad_key(b"me")
    for cpl in (0, 1, 5, MAX_REFRESH_CPL):
        assert common_prefix_length(local, kad_key(random_key_in_bucket(local, cpl, rng))) == cpl
    with pytest.raises(ValueError):
        random_key_in_bucket(local, MAX_REFRESH_CPL + 1, rng)


def test_full_bucket_sends_newcomers_to_the_replacement_cache() -> None:
    rng = random.Random(1)
    table = RoutingTable(random_peer_id(rng), k=4, max_failures=2)
    peers = _peers_in_bucket(table, 0, 6, rng)
    assert [table.add(p, now=float(i)) for i, p in enumerate(peers)] == [True] * 4 + [False] * 2
    assert len(table) == 4 and table.replacement_count(0) == 2
    assert peers[4].id not in table
    # An established peer seen again is refreshed, not duplicated.
    assert table.add(peers[0], now=10.0) and len(table) == 4


def test_failing_peer_is_replaced_by_the_freshest_replacement() -> None:
    rng = random.Random(2)
    table = RoutingTable(random_peer_id(rng), k=2, max_failures=2)
    a, b, c, d = _peers_in_bucket(table, 0, 4, rng)
    for i, p in enumerate((a, b, c, d)):
        table.add(p, now=float(i))
    assert table.peer_failed(a.id) is None  # one failure is forgiven
    assert a.id in table
    eviction = table.peer_failed(a.id)
    assert eviction is not None and eviction.evicted == a.id and eviction.replacement == d.id
    assert a.id not in table and d.id in table and b.id in table


def test_a_success_resets_the_failure_count() -> None:
    rng = random.Random(4)
    table = RoutingTable(random_peer_id(rng), k=2, max_failures=2)
    (a,) = _peers_in_bucket(table, 1, 1, rng)
    table.add(a, 0.0)
    table.peer_failed(a.id)
    table.peer_responded(a, 1.0)
    assert table.peer_failed(a.id) is None and a.id in table


def test_closest_returns_the_true_nearest_in_order() -> None:
    rng = random.Random(5)
    table = RoutingTable(random_peer_id(rng), k=20)
    peers = [Peer(random_peer_id(rng)) for _ in range(300)]
    for p in peers:
        table.add(p, 0.0)
    members = [p for p in peers if p.id in table]
    target = kad_key(b"some key")
    want = sorted(members, key=lambda p: kad_key(p.id) ^ target)[:20]
    assert table.closest(target, 20) == want
    assert want[0] not in table.closest(target, 20, exclude=want[0].id)


def test_own_id_is_never_added() -> None:
    table = RoutingTable(b"me-myself")
    assert not table.add(Peer(b"me-myself"), 0.0) and len(table) == 0


def test_stale_buckets_are_flagged_for_refresh_until_a_lookup_passes() -> None:
    rng = random.Random(6)
    table = RoutingTable(random_peer_id(rng), k=20, refresh_interval=600.0)
    for index in (0, 2):
        table.add(_peers_in_bucket(table, index, 1, rng)[0], now=0.0)
    assert table.buckets_to_refresh(now=100.0, max_index=12) == []
    # bucket 1 is empty below a non-empty one: it needs filling as much as the stale ones
    assert table.buckets_to_refresh(now=700.0, max_index=12) == [0, 1, 2]
    table.touch_bucket(kad_key(random_key_in_bucket(table.local_point, 1, rng)), now=650.0)
    assert table.buckets_to_refresh(now=700.0, max_index=12) == [0, 2]


def test_rate_limiter_refuses_a_flood_then_recovers() -> None:
    limiter = RateLimiter(rate=2.0, burst=5)
    assert [limiter.allow(b"p", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.allow(b"other", 0.0)  # one peer's flood does not starve another
    assert not limiter.allow(b"p", 0.2)
    assert limiter.allow(b"p", 0.5)  # one token back after half a second at 2/s


def test_rate_limiter_memory_is_bounded() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_peers=100)
    for i in range(1000):
        limiter.allow(i.to_bytes(4, "big"), 0.0)
    assert len(limiter._buckets) == 100
