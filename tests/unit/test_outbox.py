"""The outbox mirror without I/O: a message is delivered when its last recipient has
it, receipts only count for their own conversation, a peer's sync ranges acknowledge
what they cover, and recipients still owing a receipt after the grace period are due."""

from __future__ import annotations

from p2pm.services.gossip.outbox import Outbox


def test_delivered_only_when_the_last_recipient_has_it() -> None:
    box = Outbox(grace_s=10)
    box.add("m1", "r1", 1, {"bob", "carol"}, now=0)
    assert box.owes("m1", "bob", "r1") and not box.owes("m1", "bob", "r2")
    assert box.delivered("m1", "bob") is None and "m1" in box
    assert not box.owes("m1", "bob")
    assert box.delivered("m1", "carol") == "r1" and "m1" not in box and len(box) == 0
    assert box.delivered("m1", "carol") is None  # a late duplicate receipt


def test_no_recipients_owe_nothing() -> None:
    box = Outbox()
    box.add("m1", "r1", 1, set(), now=0)
    assert len(box) == 0


def test_sync_ranges_acknowledge_what_they_cover() -> None:
    box = Outbox()
    for seq in (1, 2, 3, 5):
        box.add(f"m{seq}", "r1", seq, {"bob"}, now=0)
    box.add("other", "r2", 1, {"bob"}, now=0)
    assert sorted(box.covered("r1", "bob", "me", {"me": [(1, 2), (5, 9)]})) == \
        ["m1", "m2", "m5"]
    assert box.covered("r1", "carol", "me", {"me": [(1, 9)]}) == []
    assert box.covered("r1", "bob", "me", {"someone": [(1, 9)]}) == []


def test_due_after_the_grace_period() -> None:
    box = Outbox(grace_s=10)
    box.add("m1", "d1", 1, {"bob"}, now=0)
    box.add("m2", "r1", 1, {"bob", "carol"}, now=5)
    assert box.due(9) == {}
    assert box.due(10) == {"bob": {"d1"}}
    assert box.due(15) == {"bob": {"d1", "r1"}, "carol": {"r1"}}
    box.delivered("m1", "bob")
    assert box.due(15) == {"bob": {"r1"}, "carol": {"r1"}}
