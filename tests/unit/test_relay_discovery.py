"""Relay discovery's pure parts: the provider key, when announcements and lookups are
due (backoff), which providers become candidates, and how candidates are bounded and
forgotten."""

from __future__ import annotations

import hashlib

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from p2pm.services.dht.convert import provider_key
from p2pm.services.transport.nat import NatSettings
from p2pm.services.transport.relay_discovery import (ANNOUNCE_INTERVAL_S, CANDIDATE_TTL_S,
                                                     LOOKUP_INTERVAL_S, MAX_FAILURES,
                                                     RELAY_PROVIDER_KEY_HEX, RETRY_MAX_S,
                                                     RETRY_MIN_S, RelayAnnouncer,
                                                     RelayFinder)


def peer() -> str:
    return str(ID.from_pubkey(create_new_key_pair().public_key))


def provider(pid: str, *addrs: str) -> dict[str, object]:
    return {"peer_id": pid, "addrs": list(addrs) or [f"/ip4/198.18.0.2/tcp/4001/p2p/{pid}"]}


def test_the_key_is_the_sha256_multihash_the_dht_accepts() -> None:
    raw = provider_key(RELAY_PROVIDER_KEY_HEX)
    assert raw == b"\x12\x20" + hashlib.sha256(b"/p2pm/relay/v1").digest()


def test_a_lookup_only_while_short_and_not_twice_at_once() -> None:
    f = RelayFinder(peer())
    assert not f.lookup_due(0, short=False)
    assert f.lookup_due(0, short=True)
    f.lookup_started()
    assert not f.lookup_due(0, short=True)  # one in flight
    relay = peer()
    named = f.lookup_done(1, {"providers": [provider(relay)]})
    assert [c.peer_id for c in named] == [relay]
    # Found relays: no new lookup for a while, even if still short.
    assert not f.lookup_due(1 + LOOKUP_INTERVAL_S - 1, short=True)
    assert f.lookup_due(1 + LOOKUP_INTERVAL_S, short=True)


def test_failed_or_empty_lookups_back_off_doubling_to_a_cap_and_reset_on_success() -> None:
    f = RelayFinder(peer())
    now, waits = 0.0, []
    for i in range(10):
        f.lookup_started()
        if i % 2:
            f.lookup_failed(now, "dht: timeout")
        else:
            assert f.lookup_done(now, {"providers": []}) == []
        wait = f.backoff.next_in(now)
        assert not f.lookup_due(now + wait - 0.01, short=True)
        waits.append(wait)
        now += wait
    assert waits[:4] == [RETRY_MIN_S, 2 * RETRY_MIN_S, 4 * RETRY_MIN_S, 8 * RETRY_MIN_S]
    assert waits[-1] == RETRY_MAX_S
    assert f.lookup_failures == 5 and f.status(now)["last_error"]
    f.lookup_started()
    f.lookup_done(now, {"providers": [provider(peer())]})
    f.lookup_started()
    f.lookup_failed(now + LOOKUP_INTERVAL_S, "dht: down")
    assert f.backoff.next_in(now + LOOKUP_INTERVAL_S) == RETRY_MIN_S


def test_bad_provider_entries_and_unusable_addresses_are_skipped() -> None:
    me, good = peer(), peer()
    other = peer()
    f = RelayFinder(me)
    f.lookup_started()
    named = f.lookup_done(0, {"providers": [
        "not an entry", {"peer_id": "nope", "addrs": ["/ip4/198.18.0.9/tcp/1"]},
        {"peer_id": good}, provider(me),  # no addrs; ourselves
        provider(peer(), "/ip4/127.0.0.1/tcp/4001", "/ip4/0.0.0.0/tcp/4001",
                 "/ip6/fe80::1/tcp/4001", "/ip4/198.18.0.3/udp/4001",
                 f"/ip4/198.18.0.3/tcp/4001/p2p/{other}/p2p-circuit", "garbage"),
        provider(good, "/ip4/127.0.0.1/tcp/4001", f"/ip4/198.18.0.2/tcp/4001/p2p/{good}",
                 f"/ip4/198.18.0.2/tcp/4001/p2p/{other}", "/dns4/relay.example/tcp/4001"),
    ]})
    assert [c.peer_id for c in named] == [good]
    assert [str(a) for a in named[0].addrs] == ["/ip4/198.18.0.2/tcp/4001",
                                                "/dns4/relay.example/tcp/4001"]
    f.lookup_started()
    assert f.lookup_done(1, None) == [] and f.lookup_done(1, {"providers": 3}) == []
    assert [c.peer_id for c in f.candidates(2)] == [good]  # a bad reply changes nothing


def test_candidates_are_bounded_freshest_kept_and_expire() -> None:
    f = RelayFinder(peer(), max_candidates=3)
    first = [peer() for _ in range(3)]
    f.lookup_started()
    f.lookup_done(0, {"providers": [provider(p) for p in first]})
    later = peer()
    f.lookup_started()
    f.lookup_done(10, {"providers": [provider(first[0]), provider(later)]})
    assert {c.peer_id for c in f.candidates(10)} == {first[0], first[2], later}
    assert f.found == 4
    assert {c.peer_id for c in f.candidates(1 + CANDIDATE_TTL_S)} == {first[0], later}
    assert f.candidates(11 + CANDIDATE_TTL_S) == []


def test_a_discovered_relay_that_keeps_refusing_is_forgotten_until_found_again() -> None:
    f = RelayFinder(peer())
    bad, good = peer(), peer()
    f.lookup_started()
    f.lookup_done(0, {"providers": [provider(bad), provider(good)]})
    for _ in range(MAX_FAILURES - 1):
        f.reserve_result(bad, False)
    f.reserve_result(good, False)
    f.reserve_result(good, True)  # a success clears the count
    assert f.is_candidate(bad)
    f.reserve_result(bad, False)
    assert not f.is_candidate(bad)
    for _ in range(MAX_FAILURES - 1):
        f.reserve_result(good, False)
    assert f.is_candidate(good)
    f.reserve_result(peer(), False)  # not a discovered relay: ignored
    f.lookup_started()
    f.lookup_done(100, {"providers": [provider(bad)]})
    assert f.is_candidate(bad)


def test_an_announcement_nobody_took_is_retried_soon_a_taken_one_much_later() -> None:
    a = RelayAnnouncer()
    assert a.due(0)
    assert not a.done(0, {"sent_to": []})
    assert not a.due(RETRY_MIN_S - 0.1) and a.due(RETRY_MIN_S)
    a.failed(RETRY_MIN_S, "dht: unavailable")
    assert not a.due(RETRY_MIN_S * 3 - 0.1) and a.due(RETRY_MIN_S * 3)
    assert a.done(10, {"key": RELAY_PROVIDER_KEY_HEX, "sent_to": ["QmA", "QmB"]})
    assert not a.due(10 + ANNOUNCE_INTERVAL_S - 1) and a.due(10 + ANNOUNCE_INTERVAL_S)
    assert a.status(10) | {"next_in_s": 0} == {
        "announces": 1, "failures": 2, "last_sent_to": 2, "last_error": None,
        "next_in_s": 0}
    assert not a.done(11, "garbage") and a.failures == 3


def test_relay_discovery_setting_defaults_on_and_a_bad_value_is_refused() -> None:
    from p2pm.common.config import ConfigError, settings_of

    def nat(transport: dict[str, object]) -> NatSettings:
        return NatSettings(settings_of({"transport": transport}).transport)

    assert nat({}).relay_discovery is True
    assert nat({"relay_discovery": False}).relay_discovery is False
    with pytest.raises(ConfigError, match="transport.relay_discovery: must be true or false"):
        nat({"relay_discovery": "yes"})
