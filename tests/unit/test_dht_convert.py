"""The dht shell's conversions between the bus's text forms and the wire's binary ones:
what a local caller or a stored snapshot sends is checked, and bad input is refused
with a message (or skipped, for one bad snapshot entry) instead of reaching the core."""

from __future__ import annotations

import nacl.signing
import orjson
import pytest

from p2pm.common import identity
from p2pm.services.dht.convert import (decode_snapshot, encode_snapshot, make_peer,
                                       peer_id_bytes, peer_json, provider_key, record_key,
                                       record_key_text)
from p2pm.services.dht.messages import Peer

PEER = "12D3KooWGmmDR9cEAfVfRmqQbNexo6oBmCSZVzkL5gLhzxMZwXvh"


def test_peer_addresses_round_trip_as_full_multiaddrs() -> None:
    peer = make_peer(PEER, ["/ip4/127.0.0.1/tcp/4001", f"/ip4/10.0.0.1/tcp/5/p2p/{PEER}",
                            "not an address"])
    assert len(peer.addrs) == 2  # the bad one is dropped, /p2p/ is not sent on the wire
    assert peer_json(peer) == {"peer_id": PEER, "addrs": [
        f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}", f"/ip4/10.0.0.1/tcp/5/p2p/{PEER}"]}
    assert peer_json(Peer(peer.id, (b"\xff\xfe",)))["addrs"] == []  # peer garbage


@pytest.mark.parametrize("bad", ["", "short", "0OIl" * 10, "Qm" + "1" * 40])
def test_bad_peer_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        peer_id_bytes(bad)


def test_record_keys_in_text_and_back() -> None:
    raw = record_key(f"/p2pm/profile/{PEER}")
    assert raw == b"/p2pm/profile/" + peer_id_bytes(PEER)
    assert record_key_text(raw) == f"/p2pm/profile/{PEER}"
    assert record_key(f"/pk/{PEER}") == b"/pk/" + peer_id_bytes(PEER)
    hex_form = "/pk/" + peer_id_bytes(PEER).hex()
    assert record_key(hex_form) == hex_form.encode()  # py-libp2p's form stays text
    assert record_key("/other/x") == b"/other/x"  # for the validators to refuse
    with pytest.raises(ValueError):
        record_key("/p2pm/no-owner")


def test_a_record_key_whose_owner_holds_a_slash_byte_reads_back() -> None:
    # Peer IDs are binary in keys; about one in eight holds b"/" (0x2f).
    owner = next(p for p in (identity.peer_id_from_public_key(
        nacl.signing.SigningKey(bytes([i]) * 32).verify_key.encode()) for i in range(256))
        if b"/" in peer_id_bytes(p))
    raw = record_key(f"/p2pm/profile/{owner}")
    assert record_key_text(raw) == f"/p2pm/profile/{owner}"


def test_provider_keys_are_multihashes() -> None:
    assert provider_key("1220" + "ab" * 32) == bytes.fromhex("1220" + "ab" * 32)
    assert provider_key(PEER) == peer_id_bytes(PEER)
    for bad in ("", "12", "zz", "1220ab"):
        with pytest.raises(ValueError):
            provider_key(bad)


def test_snapshot_round_trip_skips_bad_entries_and_refuses_garbage() -> None:
    peer = make_peer(PEER, ["/ip4/127.0.0.1/tcp/4001"])
    doc = orjson.loads(encode_snapshot([peer]))
    doc["peers"] += [{"peer_id": "nope", "addrs": []}, {"addrs": "x"}, "junk",
                     {"peer_id": PEER, "addrs": []}]
    assert decode_snapshot(orjson.dumps(doc)) == [peer]
    for garbage in (b"", b"[]", b'{"version": 2, "peers": []}', b"\xff"):
        with pytest.raises(ValueError):
            decode_snapshot(garbage)
