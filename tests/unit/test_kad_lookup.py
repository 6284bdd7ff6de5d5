"""The Lookup state machine on its own: concurrency, termination, hop counting, value
quorum and selection, provider collection."""

from __future__ import annotations

import random

import pytest

from p2pm.services.dht.keyspace import kad_key
from p2pm.services.dht.lookup import Lookup, LookupKind
from p2pm.services.dht.messages import Message, MessageType, Peer, Record
from p2pm.services.dht.sim import random_peer_id

TARGET = b"target-key"


def by_distance(peers: list[Peer]) -> list[Peer]:
    return sorted(peers, key=lambda p: kad_key(p.id) ^ kad_key(TARGET))


def peers(n: int, seed: int = 1) -> list[Peer]:
    rng = random.Random(seed)
    return [Peer(random_peer_id(rng)) for _ in range(n)]


def find(seeds: list[Peer], **kw: object) -> Lookup:
    return Lookup(LookupKind.FIND_NODE, TARGET, seeds, local_id=b"me", **kw)  # type: ignore[arg-type]


def reply(*closer: Peer, **kw: object) -> Message:
    return Message(type=MessageType.FIND_NODE, closer_peers=closer, **kw)  # type: ignore[arg-type]


def test_alpha_bounds_requests_in_flight() -> None:
    lookup = find(peers(10), k=5, alpha=3)
    first = lookup.poll(0.0)
    assert len(first) == 3 and lookup.poll(0.0) == []
    lookup.on_reply(first[0].id, reply())
    assert len(lookup.poll(0.0)) == 1


def test_nearest_first_and_done_when_the_k_nearest_answered() -> None:
    seeds = by_distance(peers(8))
    lookup = find(list(reversed(seeds)), k=3, alpha=1)
    asked = []
    while not lookup.done:
        (peer,) = lookup.poll(0.0)
        asked.append(peer)
        lookup.on_reply(peer.id, reply())
    assert asked == seeds[:3]  # nobody beyond the k nearest was bothered
    assert list(lookup.result().closest) == seeds[:3]


def test_failures_pull_in_the_next_nearest() -> None:
    seeds = by_distance(peers(6))
    lookup = find(seeds, k=3, alpha=3, timeout=2.0)
    first = lookup.poll(0.0)
    lookup.on_failure(first[0].id)
    lookup.on_reply(first[2].id, reply())
    assert lookup.expire(1.0) == [] and lookup.expire(2.0) == [first[1].id]
    more = lookup.poll(2.0)
    assert more == seeds[3:5]
    for p in more:
        lookup.on_reply(p.id, reply())
    assert lookup.done and list(lookup.result().closest) == [seeds[2], *seeds[3:5]]
    assert lookup.result().failed == 2


def test_rounds_count_the_depth_of_the_discovery_chain() -> None:
    near, mid, far = by_distance(peers(3, seed=3))
    lookup = find([far], k=1, alpha=1)
    for named in ((mid,), (near,), ()):
        (asked,) = lookup.poll(0.0)
        lookup.on_reply(asked.id, reply(*named))
    assert lookup.done
    result = lookup.result()
    # far named mid, mid named near: three sequential round trips
    assert (result.rounds, result.queried, result.closest) == (3, 3, (near,))


def test_concurrent_answers_of_one_depth_count_as_one_round() -> None:
    seeds = peers(3)
    lookup = find(seeds, k=3, alpha=3)
    for peer in lookup.poll(0.0):
        lookup.on_reply(peer.id, reply())
    assert lookup.done and lookup.result().rounds == 1


def test_late_and_duplicate_answers_change_nothing() -> None:
    seeds = peers(4)
    lookup = find(seeds, k=4, alpha=2, timeout=1.0)
    a, b = lookup.poll(0.0)
    lookup.expire(5.0)
    lookup.on_reply(a.id, reply(*peers(5, seed=9)))  # after its timeout: ignored
    assert len(lookup._candidates) == 4 and lookup.result().failed == 2
    c, d = lookup.poll(5.0)
    lookup.on_reply(c.id, reply())
    lookup.on_reply(c.id, reply(*peers(5, seed=10)))  # a second answer: ignored
    assert len(lookup._candidates) == 4


def test_empty_seed_list_is_done_at_once() -> None:
    lookup = find([])
    assert lookup.done and lookup.poll(0.0) == [] and lookup.result().closest == ()


def _get_value(seeds: list[Peer], quorum: int, local: bytes | None = None) -> Lookup:
    def validate(key: bytes, value: bytes) -> None:
        if value.startswith(b"bad"):
            raise ValueError("invalid")

    def select(key: bytes, values: list[bytes]) -> int:
        return max(range(len(values)), key=lambda i: values[i])

    return Lookup(LookupKind.GET_VALUE, TARGET, seeds, local_id=b"me", k=5, alpha=5,
                  quorum=quorum, validate=validate, select=select, local_value=local)


def _value_reply(value: bytes | None) -> Message:
    record = Record(TARGET, value) if value is not None else None
    return Message(type=MessageType.GET_VALUE, key=TARGET, record=record)


def test_get_value_picks_the_best_valid_value_and_names_the_outdated() -> None:
    seeds = peers(5)
    lookup = _get_value(seeds, quorum=3)
    asked = lookup.poll(0.0)
    answers = [b"v1", b"bad-but-newest", b"v3", None, b"v2"]
    for peer, value in zip(asked, answers):
        lookup.on_reply(peer.id, _value_reply(value))
        if lookup.done:
            break
    result = lookup.result()
    assert result.value == b"v3"  # the invalid value was ignored, not selected
    assert result.value_holders == (asked[2].id,)
    # holders of v1 and v2 are outdated; so are near peers that held nothing valid
    assert {p.id for p in result.outdated} == {p.id for p in asked} - {asked[2].id}


def test_get_value_local_value_counts_towards_quorum() -> None:
    lookup = _get_value(peers(3), quorum=2, local=b"v9")
    (first, *_) = lookup.poll(0.0)
    lookup.on_reply(first.id, _value_reply(b"v9"))
    assert lookup.done and lookup.result().value == b"v9"


@pytest.mark.parametrize("want", [1, 3])
def test_get_providers_deduplicates_and_stops_at_enough(want: int) -> None:
    seeds = peers(4)
    provs = peers(3, seed=5)
    lookup = Lookup(LookupKind.GET_PROVIDERS, TARGET, seeds, local_id=b"me", k=4, alpha=4,
                    want_providers=want)
    for peer in lookup.poll(0.0):
        lookup.on_reply(peer.id, Message(type=MessageType.GET_PROVIDERS,
                                         provider_peers=(provs[0], *provs[:want])))
        if lookup.done:
            break
    assert lookup.done and [p.id for p in lookup.result().providers] == [p.id for p in provs[:want]]


def test_named_peers_that_are_not_peer_ids_are_ignored() -> None:
    seeds = peers(1)
    lookup = find(seeds, k=5, alpha=3)
    (first,) = lookup.poll(0.0)
    bogus = (Peer(b"x"), Peer(b"\x12\x20short"), Peer(b"me"))  # not multihashes, or ourselves
    lookup.on_reply(first.id, reply(*bogus, *peers(2, seed=4)))
    assert len(lookup.poll(0.0)) == 2 and len(lookup._candidates) == 3
