"""The message-request rules without I/O (services/gossip/requests.py): what a
stranger flooding requests can make a node keep, how fast it may ask, what the sender
shows while it waits, and the wire frames a lying peer might send."""

from __future__ import annotations

import pytest

from p2pm.services.gossip import requests as rq


def held(n: int, seq: int | None = None) -> rq.Held:
    return rq.Held(f"m{n}", seq if seq is not None else n, 1000.0 + n, f"text {n}", b"env")


def test_a_sender_gets_at_most_max_held_messages_kept_the_oldest_first() -> None:
    box = rq.RequestBox()
    many = [held(n) for n in range(rq.MAX_HELD_PER_SENDER + 5, 0, -1)]
    status, ids, evicted = box.hold("peerA", "Ann", (), "d1", many, now=0.0)
    assert status == "requested" and evicted is None
    kept = box.pending["peerA"].messages
    assert sorted(h.seq for h in kept.values()) == list(range(1, rq.MAX_HELD_PER_SENDER + 1))
    assert sorted(ids) == sorted(f"m{n}" for n in range(1, rq.MAX_HELD_PER_SENDER + 1))
    # Asking again with the same messages holds nothing twice and answers the same.
    again = box.hold("peerA", "Ann", (), "d1", many, now=1.0)
    assert sorted(again[1]) == sorted(ids) and len(kept) == rq.MAX_HELD_PER_SENDER
    assert box.counters["request_messages_not_held"] == 10
    assert box.counters["requests_received"] == 1


def test_a_full_table_refuses_new_senders_until_one_is_stale() -> None:
    box = rq.RequestBox()
    for i in range(rq.MAX_SENDERS):
        assert box.hold(f"sybil{i}", "", (), f"d{i}", [held(1)], now=float(i))[0] == \
            "requested"
    # A fresh stranger finds the table full: told so, nothing kept, nobody evicted.
    assert box.hold("late", "", (), "dx", [held(1)], now=100.0) == ("full", [], None)
    assert "late" not in box.pending and len(box.pending) == rq.MAX_SENDERS
    # One who already has a request may still add to it.
    assert box.hold("sybil3", "", (), "d3", [held(2)], now=101.0)[0] == "requested"
    # Once the least recently active request is older than the TTL, it makes room.
    later = rq.REQUEST_TTL_S + 10.0
    status, _, evicted = box.hold("late", "", (), "dx", [held(1)], now=later)
    assert status == "requested" and evicted == "sybil0"
    assert len(box.pending) == rq.MAX_SENDERS and box.counters["requests_expired"] == 1


def test_rate_limits_per_sender_and_for_everyone() -> None:
    box = rq.RequestBox()
    answers = [box.admit("peerA", now=0.0) for _ in range(rq.PEER_BURST + 2)]
    assert answers == [None] * rq.PEER_BURST + ["slow", "slow"]
    assert box.admit("peerA", now=rq.PEER_REFILL_S) is None  # one more after a refill
    # Fresh peer ids each get their burst, but all of them together only the global one.
    admitted = sum(box.admit(f"p{i}", now=rq.PEER_REFILL_S) is None for i in range(200))
    assert admitted <= rq.GLOBAL_BURST
    assert box.counters["requests_rate_limited"] >= 200 - rq.GLOBAL_BURST


def test_rate_limit_memory_is_bounded() -> None:
    buckets = rq.TokenBuckets(2, 10.0, max_keys=100)
    for i in range(10_000):
        buckets.allow(f"peer{i}", now=float(i))
    assert len(buckets) == 100


def test_blocked_peers_are_refused_and_lose_their_pending_request() -> None:
    box = rq.RequestBox()
    box.hold("eve", "Bank", (), "d1", [held(1)], now=0.0)
    assert box.block("eve") is True and "eve" not in box.pending
    assert box.block("eve") is False
    assert box.admit("eve", now=1.0) == "refused"
    assert box.counters["requests_refused_blocked"] == 1


def test_the_block_list_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rq, "MAX_BLOCKED", 3)
    box = rq.RequestBox()
    for p in ("a", "b", "c"):
        box.block(p)
    with pytest.raises(ValueError, match="at most 3"):
        box.block("d")
    assert box.blocked == {"a", "b", "c"}


def test_sender_shows_requested_until_delivered_and_asks_again_for_new_messages() -> None:
    asking = rq.Asking()
    assert asking.due("bob", "d1", ["m1"], now=0.0)
    asking.asked("bob", now=0.0)
    assert not asking.due("bob", "d1", ["m1"], now=0.5)  # no answer yet
    asking.answered("bob", "requested", now=0.5)
    assert asking.mark("d1", ["m1"], "requested") == ["m1"]
    assert asking.mark("d1", ["m1"], "requested") == []
    assert asking.shown("d1", "m1", "pending") == "requested"
    assert asking.shown("d1", "m1", "sent") == "requested"
    assert asking.shown("d1", "m1", "delivered") == "delivered"
    assert asking.shown("d1", "m2", "pending") == "pending"
    # Nothing new: asked again only at the retry time.
    assert not asking.due("bob", "d1", ["m1"], now=5.0)
    assert asking.due("bob", "d1", ["m1"], now=0.5 + rq.RETRY_S)
    # A new message joins the request within a second.
    assert not asking.due("bob", "d1", ["m1", "m2"], now=1.0)
    assert asking.due("bob", "d1", ["m1", "m2"], now=0.5 + rq.MIN_ASK_GAP_S)


def test_a_refusal_is_shown_and_not_asked_again_soon() -> None:
    asking = rq.Asking()
    asking.asked("bob", now=0.0)
    asking.answered("bob", "refused", now=0.1)
    asking.mark("d1", ["m1", "m2"], "refused")
    assert asking.shown("d1", "m2", "pending") == "refused"
    assert not asking.due("bob", "d1", ["m1", "m2", "m3"], now=100.0)
    assert asking.due("bob", "d1", ["m3"], now=0.1 + rq.RETRY_REFUSED_S)


def test_a_message_written_after_a_refusal_shows_refused_at_once() -> None:
    """Bob blocked us; our next message must not stay pending until the next ask, an
    hour away: it shows refused as soon as it is owed, once."""
    asking = rq.Asking()
    assert asking.still_refused("bob", "d1", ["m1"]) == []  # no answer yet: asked
    asking.asked("bob", now=0.0)
    asking.answered("bob", "requested", now=0.1)
    assert asking.still_refused("bob", "d1", ["m1"]) == []  # held, not refused
    asking.answered("bob", "refused", now=20.0)
    asking.mark("d1", ["m1"], "refused")
    assert asking.still_refused("bob", "d1", ["m1", "m2"]) == ["m2"]
    assert asking.shown("d1", "m2", "pending") == "refused"
    assert asking.still_refused("bob", "d1", ["m1", "m2"]) == []  # told once
    assert asking.still_refused("carol", "d2", ["m9"]) == []  # only that peer's chat
    asking.answered("bob", "requested", now=20.0 + rq.RETRY_REFUSED_S)  # unblocked us
    assert asking.still_refused("bob", "d1", ["m3"]) == []


def test_marks_per_conversation_are_bounded() -> None:
    asking = rq.Asking()
    ids = [f"m{i}" for i in range(rq.MAX_REQUESTED_IDS + 50)]
    asking.mark("d1", ids, "requested")
    marks = asking.marked["d1"]
    assert len(marks) == rq.MAX_REQUESTED_IDS and "m0" not in marks and ids[-1] in marks


def test_frames_round_trip() -> None:
    ask = rq.Ask("d" + "0" * 32, b"p" * 32, "p2pm-node:x.y", (b"e1", b"e2"))
    assert rq.decode(rq.encode(ask)) == ask
    for frame in (rq.Answer("requested", ("m1",)), rq.Answer("refused"), rq.AskProfile(),
                  rq.Profile("p2pm-node:x.y")):
        assert rq.decode(rq.encode(frame)) == frame


@pytest.mark.parametrize("raw, words", [
    (b"not json", "one JSON object"),
    (b"{broken", "one JSON object"),
    (b"[]", "one JSON object"),
    (b'{"t": "nope"}', "unknown frame"),
    (b'{"t": "ask", "conv": "", "proof": "", "envs": []}', "conversation id"),
    (b'{"t": "ask", "conv": "d1", "proof": "!!", "envs": []}', "base64"),
    (b'{"t": "ask", "conv": "d1", "proof": "", "envs": ' +
     b'["AA=="]' * 1 + b"}", None),
    (b'{"t": "ask", "conv": "d1", "proof": "", "envs": [' +
     b",".join([b'"AA=="'] * (rq.MAX_HELD_PER_SENDER + 1)) + b"]}", "at most"),
    (b'{"t": "answer", "status": "delivered"}', "unknown answer"),
    (b'{"t": "answer", "status": "requested", "held": [1]}', "message ids"),
    (b'{"t": "profile", "profile": "' + b"x" * (rq.MAX_PROFILE_CHARS + 1) + b'"}',
     "at most"),
    (b'{"t": "profile?", "pad": "' + b"x" * rq.MAX_FRAME + b'"}', "at most"),
])
def test_malformed_frames_are_refused(raw: bytes, words: str | None) -> None:
    if words is None:
        assert isinstance(rq.decode(raw), rq.Ask)
        return
    with pytest.raises(rq.RequestError, match=words):
        rq.decode(raw)


def test_storage_keeps_envelopes_not_text() -> None:
    box = rq.RequestBox()
    box.hold("peerA", "Ann", ("/ip4/1.2.3.4/tcp/1",), "d1",
             [rq.Held("m1", 1, 5.0, "secret plans", b"sealed-1")], now=0.0)
    doc = box.pending["peerA"].doc()
    assert b"secret plans" not in __import__("orjson").dumps(doc)
    back = rq.Pending.from_doc(doc, lambda env: {b"sealed-1": "secret plans"}[env])
    assert back == box.pending["peerA"]
