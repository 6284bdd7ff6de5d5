"""The subscriber's epoch/seq bookkeeping without sockets: a restart, a gap, events
lost in transit or published before it joined each ask for one resync, and nothing
else does."""

from __future__ import annotations

from p2pm.common.actor import Resync, SequenceTracker

HB = "counter.sys.heartbeat"
TOPIC = "counter.value.changed"



def test_events_in_order_ask_for_nothing() -> None:
    t = SequenceTracker(["counter.value"])
    assert [t.observe(TOPIC, "e1", s, {}) for s in (1, 2, 3)] == [[], [], []]
    assert t.observe(HB, "e1", 9, {"topics": {TOPIC: 3, HB: 9}}) == []
    assert t.last_seq(TOPIC) == 3


def test_a_gap_asks_for_one_resync_and_then_continues() -> None:
    t = SequenceTracker(["counter.value"])
    t.observe(TOPIC, "e1", 1, {})
    assert t.observe(TOPIC, "e1", 4, {}) == [Resync("counter", f"gap on {TOPIC}")]
    assert t.observe(TOPIC, "e1", 5, {}) == []


def test_a_new_epoch_is_a_restart_but_the_first_is_not() -> None:
    t = SequenceTracker(["counter.value"])
    assert t.observe(TOPIC, "e1", 1, {}) == []  # joined at the start: nothing missed
    t.observe(TOPIC, "e1", 2, {})
    # The source restarted: seqs start again at 1, no gap, but state is stale.
    assert t.observe(TOPIC, "e2", 1, {}) == [Resync("counter", "restarted")]
    assert t.observe(TOPIC, "e2", 2, {}) == []


def test_a_heartbeat_reveals_lost_events_once() -> None:
    t = SequenceTracker(["counter.value"])
    t.observe(TOPIC, "e1", 1, {})
    lost = t.observe(HB, "e1", 5, {"topics": {TOPIC: 4, HB: 5}})
    assert lost == [Resync("counter", f"missed events on {TOPIC}")]
    assert t.observe(HB, "e1", 6, {"topics": {TOPIC: 4, HB: 6}}) == []  # told once
    assert t.observe(TOPIC, "e1", 5, {}) == []  # and the next event is no gap


def test_a_late_subscriber_learns_from_its_first_heartbeat() -> None:
    t = SequenceTracker(["counter.value"])
    assert t.observe(HB, "e1", 7, {"topics": {TOPIC: 3}}) == [
        Resync("counter", f"missed events on {TOPIC}")]


def test_topics_outside_the_prefixes_and_malformed_heartbeats_are_ignored() -> None:
    t = SequenceTracker(["counter.value"])
    assert t.observe(HB, "e1", 1, {"topics": {"counter.other": 9, TOPIC: "x",
                                               "counter.valueless": 3}}) == []
    assert t.observe(HB, "e1", 2, {"topics": ["not", "a", "dict"]}) == []
    assert t.observe(HB, "e1", 3, None) == []


def test_sources_are_tracked_apart() -> None:
    t = SequenceTracker(["counter.value", "other.thing"])
    t.observe(TOPIC, "e1", 1, {})
    t.observe("other.thing.done", "x1", 1, {})
    assert t.observe("other.thing.done", "x2", 1, {}) == [Resync("other", "restarted")]
    assert t.observe(TOPIC, "e1", 2, {}) == []  # counter's state survived other's restart
