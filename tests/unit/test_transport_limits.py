"""The rules behind bounded memory and rate limits, without sockets: token-bucket tables,
the Yamux receive guard and the per-protocol stream limits."""

from __future__ import annotations

import pytest

from p2pm.common.ratelimit import Rate, RateTable
from p2pm.services.transport import limits, mux_budget, penalty
from p2pm.services.transport import yamux_guard as yg

WINDOW = yg.DEFAULT_WINDOW


def test_bucket_allows_a_burst_then_its_rate() -> None:
    table = RateTable(Rate(rate=2.0, burst=5.0), max_keys=10)
    assert [table.allow("p", 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert not table.would_allow("p", 0.4)
    assert table.would_allow("p", 0.5) and table.allow("p", 0.5)
    assert not table.allow("p", 0.5)
    # A full refill never exceeds the burst.
    assert sum(table.allow("p", 100.0) for _ in range(10)) == 5
    assert table.status()["refused"] == 7


def test_full_table_drops_the_least_recently_used_bucket() -> None:
    table = RateTable(Rate(rate=1.0, burst=1.0), max_keys=2)
    assert table.allow("a", 0.0) and table.allow("b", 0.0)
    assert not table.allow("a", 0.0)  # a used most recently, b is the oldest
    assert table.allow("c", 0.0)  # evicts b
    assert len(table) == 2 and table.evicted == 1
    assert not table.allow("a", 0.0)  # a kept its empty bucket
    assert table.allow("b", 0.0)  # b starts afresh (evicting c)


def test_a_clock_going_backwards_refills_nothing() -> None:
    table = RateTable(Rate(rate=1.0, burst=1.0), max_keys=1)
    assert table.allow("a", 10.0)
    assert not table.allow("a", 5.0) and not table.allow("a", 10.5)


def test_bad_rates_are_refused() -> None:
    with pytest.raises(ValueError):
        Rate(rate=0.0, burst=1.0)
    with pytest.raises(ValueError):
        RateTable(Rate(1.0, 1.0), max_keys=0)


def guard(**kw: object) -> tuple[yg.ReceiveGuard, yg.MuxStats]:
    stats = yg.MuxStats()
    table = RateTable(Rate(rate=1.0, burst=3.0), max_keys=4)
    return yg.ReceiveGuard("peer", yg.GuardLimits(**kw), table, stats), stats  # type: ignore[arg-type]


def test_data_within_the_window_is_accepted_and_an_overrun_resets() -> None:
    g, stats = guard()
    assert g.on_data(WINDOW, WINDOW, 0, 0.0).verdict is yg.Verdict.ACCEPT
    overrun = g.on_data(1, 0, WINDOW, 0.0)
    assert overrun.verdict is yg.Verdict.RESET and "overran" in overrun.reason
    assert stats.counters["overrun_resets"] == 1 and stats.counters["discarded_bytes"] == 1


def test_the_third_overrun_closes_the_connection() -> None:
    g, stats = guard()
    verdicts = [g.on_data(WINDOW + 1, WINDOW, 0, 0.0).verdict for _ in range(3)]
    assert verdicts == [yg.Verdict.RESET, yg.Verdict.RESET, yg.Verdict.GO_AWAY]
    assert stats.counters["disconnects"] == 1 and stats.counters["strikes"] == 3


def test_the_connection_budget_resets_without_a_strike() -> None:
    g, stats = guard(conn_buffer_cap=4 * WINDOW)
    assert g.on_data(WINDOW, WINDOW, 3 * WINDOW, 0.0).verdict is yg.Verdict.ACCEPT
    full = g.on_data(1, WINDOW, 4 * WINDOW, 0.0)
    assert full.verdict is yg.Verdict.RESET and g.strikes == 0
    assert stats.counters["budget_resets"] == 1


def test_data_for_a_dead_stream_is_discarded_until_the_allowance_runs_out() -> None:
    g, stats = guard(dead_stream_bytes=Rate(rate=1000.0, burst=4 * WINDOW))
    for _ in range(4):
        assert g.on_data(WINDOW, None, 0, 0.0).verdict is yg.Verdict.DISCARD
    assert g.strikes == 0
    # Past the allowance: still discarded (there is no stream to reset), but a strike.
    assert g.on_data(WINDOW, None, 0, 0.0).verdict is yg.Verdict.DISCARD and g.strikes == 1
    # A peer that goes on loses the connection.
    outcomes = [g.on_data(WINDOW, None, 0, 0.0).verdict for _ in range(20)]
    assert yg.Verdict.GO_AWAY in outcomes
    assert stats.counters["discarded_bytes"] >= 9 * WINDOW


def test_stream_opens_are_limited_by_rate_and_count() -> None:
    g, stats = guard(max_inbound_streams=2)
    assert g.on_open(0.0, 0).verdict is yg.Verdict.ACCEPT
    assert g.on_open(0.0, 2).verdict is yg.Verdict.RESET
    assert stats.counters["streams_refused_count"] == 1
    assert g.on_open(0.0, 1).verdict is yg.Verdict.ACCEPT
    assert g.on_open(0.0, 1).verdict is yg.Verdict.ACCEPT
    refused = g.on_open(0.0, 1)  # the burst of 3 is spent
    assert refused.verdict is yg.Verdict.RESET and refused.reason == "stream open rate"
    assert g.on_open(1.0, 1).verdict is yg.Verdict.ACCEPT
    assert g.strikes == 0


def test_yamux_header_checks() -> None:
    h = yg.decode_header(yg.encode_header(yg.TYPE_DATA, yg.FLAG_SYN, 3, 10))
    assert (h.type, h.flags, h.stream_id, h.length) == (yg.TYPE_DATA, yg.FLAG_SYN, 3, 10)
    for bad in (b"\x01" + bytes(11),  # version 1
                yg.encode_header(4, 0, 1, 0),  # unknown type
                yg.encode_header(yg.TYPE_PING, yg.FLAG_SYN, 5, 0),  # ping on a stream
                yg.encode_header(yg.TYPE_DATA, 0, 0, 1),  # data on the session
                bytes(11)):
        with pytest.raises(yg.YamuxProtocolError):
            yg.decode_header(bad)


def test_every_protocol_a_stranger_can_open_has_its_own_limit() -> None:
    kinds = {p: limits.protocol_kind(p) for p in (
        "/ipfs/kad/1.0.0", "/libp2p/circuit/relay/0.2.0/hop",
        "/libp2p/circuit/relay/0.2.0/stop", "/libp2p/autonat/1.0.0", "/libp2p/dcutr",
        "/ipfs/id/push/1.0.0", "/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", "/meshsub/1.1.0",
        "/p2pm/sync/1.0.0", "/p2pm/keys/1.0.0", "/something/else")}
    assert kinds == {
        "/ipfs/kad/1.0.0": "kad", "/libp2p/circuit/relay/0.2.0/hop": "relay_hop",
        "/libp2p/circuit/relay/0.2.0/stop": "relay_stop", "/libp2p/autonat/1.0.0": "autonat",
        "/libp2p/dcutr": "dcutr", "/ipfs/id/push/1.0.0": "identify_push",
        "/ipfs/id/1.0.0": "identify", "/ipfs/ping/1.0.0": "ping", "/meshsub/1.1.0": "meshsub",
        "/p2pm/sync/1.0.0": "sync", "/p2pm/keys/1.0.0": "keys", "/something/else": "other"}
    table = limits.PeerLimits(max_peers=8)
    allowed = sum(table.allow_protocol("p", "/libp2p/dcutr", 0.0) for _ in range(50))
    assert allowed == 5  # dcutr's burst, and only the dcutr table was spent
    assert table.allow_protocol("p", "/ipfs/kad/1.0.0", 0.0)
    assert table.allow_protocol("q", "/libp2p/dcutr", 0.0)  # per peer
    status = table.status()
    assert status["dcutr"]["refused"] == 45 and status["kad"]["allowed"] == 1


# -- the node-wide budget (mux_budget.py) ------------------------------------------------

def test_a_frame_that_fits_the_node_budget_costs_nobody() -> None:
    budget = mux_budget.NodeBudget(cap=10 * WINDOW)
    budget.report("a", 4 * WINDOW)
    budget.report("b", 5 * WINDOW)
    assert budget.payer("b", WINDOW) is None
    assert budget.status()["unread"] == 9 * WINDOW


def test_the_connection_furthest_over_its_share_pays_never_one_within_it() -> None:
    # Four connections share 8 windows: a share is 2. The hog holds 5; the slow but
    # honest reader holds its full share and asks for nothing more than its share.
    budget = mux_budget.NodeBudget(cap=8 * WINDOW)
    budget.report("hog", 5 * WINDOW)
    budget.report("slow", 2 * WINDOW)
    budget.report("light", WINDOW // 2)
    assert budget.share("honest") == 2 * WINDOW
    assert budget.payer("honest", WINDOW) == "hog"
    # The slow reader asking for more than its share is itself over it, yet the hog
    # is further over: the hog still pays first.
    assert budget.payer("slow", WINDOW) == "hog"
    # With the hog brought down under its share (8/3 windows now that three hold
    # data), a connection going furthest over its share pays for its own frame, and
    # the old hog, asking while within its share, is protected.
    budget.report("hog", 2 * WINDOW)
    budget.report("slow", 3 * WINDOW)
    budget.report("light", 5 * WINDOW // 2)
    assert budget.payer("slow", WINDOW) == "slow"
    assert budget.payer("hog", 6 * WINDOW // 10) == "slow"
    assert budget.status()["connections"] == 3


def test_a_dropped_connection_gives_its_bytes_back() -> None:
    budget = mux_budget.NodeBudget(cap=4 * WINDOW)
    budget.report("a", 4 * WINDOW)
    assert not budget.fits(1)
    budget.drop("a")
    budget.drop("never-seen")
    assert budget.fits(4 * WINDOW) and budget.status()["connections"] == 0
    assert budget.status()["peak"] == 4 * WINDOW


def test_shedding_resets_the_largest_streams_first_down_to_the_share() -> None:
    assert mux_budget.shed_plan({1: 10, 3: 50, 5: 30, 7: 0}, keep=40) == [3]
    assert mux_budget.shed_plan({1: 10, 3: 50, 5: 30}, keep=5) == [3, 5, 1]
    assert mux_budget.shed_plan({1: 10}, keep=10) == []


# -- the penalty box (penalty.py) --------------------------------------------------------

def test_an_offender_is_refused_for_a_term_that_doubles_up_to_an_hour() -> None:
    box = penalty.PenaltyBox()
    assert box.refuses("p", 0.0) == 0.0
    assert box.punish("p", 0.0) == 60.0
    assert box.refuses("p", 59.0) == pytest.approx(1.0)
    assert box.refuses("q", 59.0) == 0.0  # only the offender
    assert box.refuses("p", 60.0) == 0.0  # term over
    terms = [box.punish("p", t) for t in (100.0, 300.0, 600.0, 1200.0, 2400.0, 5000.0,
                                          9000.0)]
    assert terms == [120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0, 3600.0]
    status = box.status(9001.0)
    assert status["boxed"] == 1 and status["offences"] == 8 and status["refused"] == 1


def test_an_offender_that_behaves_for_an_hour_after_its_term_starts_over() -> None:
    box = penalty.PenaltyBox()
    box.punish("p", 0.0)
    assert box.punish("p", 60.0 + 3600.0 + 1) == 60.0


def test_a_full_box_drops_the_expired_then_the_term_ending_soonest() -> None:
    box = penalty.PenaltyBox(max_keys=2)
    box.punish("a", 0.0)
    box.punish("b", 10.0)
    box.punish("c", 20.0)  # nothing expired: a's term ends soonest
    assert box.refuses("a", 21.0) == 0.0 and box.refuses("b", 21.0) > 0
    assert box.counters["evicted"] == 1
    box.punish("d", 10_000.0)  # b and c are long forgotten: no eviction needed
    assert box.counters["evicted"] == 1 and box.status(10_000.0)["remembered"] == 1
