"""The real core on a simulated 500-node network: lookups find what Kademlia promises,
joined nodes become findable, values and providers travel end to end, churn is
routed around, and runs are reproducible."""

from __future__ import annotations

import random

import pytest

from p2pm.services.dht.core import LookupDone, ProvideDone, PutDone
from p2pm.services.dht.records import PublicKeyValidator, SignedRecordValidator, Validators
from p2pm.services.dht.sim import Network, measure, measure_records

from .test_kad_records import Owner, nacl_verify

SIZE = 500


@pytest.fixture(scope="module")
def validators() -> Validators:
    return Validators(PublicKeyValidator(), SignedRecordValidator(nacl_verify))


def test_lookups_find_the_true_k_closest_without_churn() -> None:
    net = Network(SIZE, seed=7)
    net.fill_tables()
    online = net.online_ids()
    rng = random.Random(8)
    for _ in range(20):
        source, target = rng.sample(online, 2)
        result, _ = net.lookup(source, target)
        assert [p.id for p in result.closest] == net.true_closest(target, 20, exclude=source)
        assert result.failed == 0


def test_a_joined_node_is_findable_by_others() -> None:
    net = Network(SIZE, seed=9)
    net.fill_tables()
    bootstrap = net.online_ids()[0]
    newcomer = net.join(bootstrap)
    assert len(net.nodes[newcomer].core.routing) >= 20  # its self-lookup filled its table
    rng = random.Random(10)
    for source in rng.sample(net.online_ids(), 5):
        if source == newcomer:
            continue
        result, _ = net.lookup(source, newcomer)
        assert result.closest[0].id == newcomer


def test_lookups_route_around_offline_nodes_and_evict_them() -> None:
    net = Network(SIZE, seed=11, request_timeout=2.0)
    net.fill_tables()
    net.set_churn(0.2)
    online = set(net.online_ids())
    rng = random.Random(12)
    source = sorted(online)[0]
    table = net.nodes[source].core.routing
    net.lookup(source, sorted(online)[1])  # builds the source's table
    offline_before = sum(p.id not in online for p in table.peers())
    found = 0
    for target in rng.sample(sorted(online - {source}), 20):
        result, _ = net.lookup(source, target)
        assert {p.id for p in result.closest} <= online  # only peers that answered
        found += result.closest[0].id == target
    assert found == 20
    # peers that failed twice were dropped from the table the lookups went through
    assert sum(p.id not in online for p in table.peers()) < offline_before


def test_signed_value_put_on_one_node_is_read_from_another(validators: Validators) -> None:
    net = Network(SIZE, seed=13, validators=validators)
    net.fill_tables()
    writer, reader = net.online_ids()[:2]
    key, value = Owner(1).record("profile", b"hello", expires=net.now + 3600)
    op = net.start(writer, lambda c: c.put_value(key, value, net.now))
    net.run()
    put = net.result(writer, op)
    assert isinstance(put, PutDone) and len(put.stored_at) == 20 and not put.failed
    op = net.start(reader, lambda c: c.get_value(key, net.now))
    net.run()
    got = net.result(reader, op)
    assert isinstance(got, LookupDone) and got.result.value == value


def test_provider_is_found_by_another_node() -> None:
    net = Network(SIZE, seed=14)
    net.fill_tables()
    provider, seeker = net.online_ids()[:2]
    key = b"\x12\x20" + bytes(32)
    op = net.start(provider, lambda c: c.provide(key, net.now))
    net.run()
    assert isinstance(net.result(provider, op), ProvideDone)
    op = net.start(seeker, lambda c: c.get_providers(key, net.now))
    net.run()
    found = net.result(seeker, op)
    assert [p.id for p in found.result.providers] == [provider]


def test_simulation_is_deterministic_and_wire_encoding_changes_nothing() -> None:
    plain = measure(300, 15, churn=0.2, seed=5)
    again = measure(300, 15, churn=0.2, seed=5)
    wired = measure(300, 15, churn=0.2, seed=5, wire=True)
    assert plain == again == wired
    assert plain["success"] >= 0.9


def test_records_survive_churn_after_they_were_put() -> None:
    got = measure_records(SIZE, 20, churn=0.3, seed=3)
    assert got["stored_at_mean"] == 20 and got["found"] == 1.0
