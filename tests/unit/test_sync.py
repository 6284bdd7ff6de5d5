"""Catch-up sync without I/O: range arithmetic (what each side is missing) and the
frames, which refuse anything malformed a peer could send."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pm.common import identity
from p2pm.services.gossip import sync

A = identity.peer_id_from_public_key(bytes(range(32)))
B = identity.peer_id_from_public_key(bytes(range(1, 33)))


def test_missing_is_what_i_hold_and_they_do_not() -> None:
    mine = {"a": [(1, 10)], "b": [(1, 2), (5, 5)], "c": [(3, 4)]}
    theirs = {"a": [(1, 3), (6, 7)], "b": [(1, 2), (5, 5)]}
    assert sync.missing(mine, theirs) == {"a": [(4, 5), (8, 10)], "c": [(3, 4)]}
    assert sync.missing(theirs, mine) == {}
    assert sync.holds(theirs, "a", 6) and not sync.holds(theirs, "a", 5)
    assert not sync.holds(theirs, "zed", 1)
    assert sync.contiguous([(1, 4), (6, 9)]) == 4 and sync.contiguous([(2, 3)]) == 0


def _spans(draw_set: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in sorted(draw_set):
        if out and out[-1][1] == s - 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


@settings(max_examples=200, deadline=None)
@given(st.sets(st.integers(1, 60)), st.sets(st.integers(1, 60)))
def test_subtract_matches_set_difference(mine: set[int], theirs: set[int]) -> None:
    got = sync.subtract(_spans(mine), _spans(theirs))
    assert got == _spans(mine - theirs)


def test_frames_round_trip() -> None:
    frames = [
        sync.Open(b"\x07" * sync.NONCE_BYTES),
        sync.Proof(b"\x01" * sync.PROOF_BYTES),
        sync.Hello({A: [(1, 3)]}, {B: ["/ip4/1.2.3.4/tcp/1"]}),
        sync.Hello({}, {}),
        sync.Envs((b"x", b"\x00\xff")),
        sync.Done(),
        sync.Have({A: [(1, 1), (3, 9)]}),
    ]
    for f in frames:
        assert sync.decode(sync.encode(f)) == f


@pytest.mark.parametrize("raw", [
    b"not json", b"[1]", b'{"t": "nope"}', b'{"t": "hello", "ranges": []}',
    b'{"t": "hello", "ranges": {"%s": [[3, 1]]}, "addrs": {}}' % A.encode(),
    b'{"t": "hello", "ranges": {"%s": [[1, 5], [4, 9]]}, "addrs": {}}' % A.encode(),
    b'{"t": "hello", "ranges": {"%s": [[0, 1]]}, "addrs": {}}' % A.encode(),
    b'{"t": "hello", "ranges": {"%s": [[1, true]]}, "addrs": {}}' % A.encode(),
    b'{"t": "hello", "ranges": {}, "addrs": {"%s": "x"}}' % A.encode(),
    b'{"t": "open", "nonce": "AAAA"}', b'{"t": "open"}', b'{"t": "proof", "proof": 5}',
    b'{"t": "proof", "proof": "AAAA"}',
    b'{"t": "envs", "envs": ["%%%"]}',
    b'{"t": "envs", "envs": "abc"}',
    b'{"t": "have"}',
])
def test_malformed_frames_are_refused(raw: bytes) -> None:
    with pytest.raises(sync.SyncError):
        sync.decode(raw)


@pytest.mark.parametrize("bad", ["p", "12D3KooW with space", A[:-1], A + "1", "1" + A,
                                 "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", "", "é" * 40])
def test_invalid_peer_ids_are_dropped_and_counted_never_kept(bad: str) -> None:
    raw = sync.orjson.dumps({"t": "hello", "ranges": {A: [[1, 2]], bad: [[1, 1]]},
                             "addrs": {B: ["/ip4/1.2.3.4/tcp/1"], bad: []}})
    hello = sync.decode(raw)
    assert isinstance(hello, sync.Hello)
    assert hello.ranges == {A: [(1, 2)]} and hello.addrs == {B: ["/ip4/1.2.3.4/tcp/1"]}
    assert hello.dropped == 2
    assert not sync.valid_peer_id(bad) and sync.valid_peer_id(A)


def test_limits_on_what_a_peer_may_send() -> None:
    too_many = {"t": "envs", "envs": ["eA=="] * (sync.ENVS_PER_FRAME + 1)}
    with pytest.raises(sync.SyncError):
        sync.decode(sync.orjson.dumps(too_many))
    with pytest.raises(sync.FrameTooLarge):
        sync.decode(b" " * (sync.MAX_FRAME + 1))
