"""Catch-up sync without I/O: range arithmetic (what each side is missing) and the
frames, which refuse anything malformed a peer could send."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pm.services.gossip import sync


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
        sync.Hello({"a": [(1, 3)]}, {"p": ["/ip4/1.2.3.4/tcp/1"]}, "r00", b"\x01" * 32),
        sync.Hello({}, {}),
        sync.Envs((b"x", b"\x00\xff")),
        sync.Done(),
        sync.Have({"a": [(1, 1), (3, 9)]}),
    ]
    for f in frames:
        assert sync.decode(sync.encode(f)) == f


@pytest.mark.parametrize("raw", [
    b"not json", b"[1]", b'{"t": "nope"}', b'{"t": "hello", "ranges": []}',
    b'{"t": "hello", "ranges": {"a": [[3, 1]]}, "addrs": {}}',
    b'{"t": "hello", "ranges": {"a": [[1, 5], [4, 9]]}, "addrs": {}}',
    b'{"t": "hello", "ranges": {"a": [[0, 1]]}, "addrs": {}}',
    b'{"t": "hello", "ranges": {"a": [[1, true]]}, "addrs": {}}',
    b'{"t": "hello", "ranges": {}, "addrs": {"p": "x"}}',
    b'{"t": "hello", "ranges": {}, "addrs": {}, "conv": "r1", "proof": 5}',
    b'{"t": "envs", "envs": ["%%%"]}',
    b'{"t": "envs", "envs": "abc"}',
    b'{"t": "have"}',
])
def test_malformed_frames_are_refused(raw: bytes) -> None:
    with pytest.raises(sync.SyncError):
        sync.decode(raw)


def test_limits_on_what_a_peer_may_send() -> None:
    too_many = {"t": "envs", "envs": ["eA=="] * (sync.ENVS_PER_FRAME + 1)}
    with pytest.raises(sync.SyncError):
        sync.decode(sync.orjson.dumps(too_many))
    with pytest.raises(sync.SyncError, match="too large"):
        sync.decode(b" " * (sync.MAX_FRAME + 1))
