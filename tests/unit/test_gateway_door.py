"""The TCP door's rules without sockets: where it may listen, how wrong tokens are
limited, and how little it logs about them."""

from __future__ import annotations

import pytest

from p2pm.services.gateway import door


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:7600", "tcp://127.1.2.3:1",
                                      "tcp://localhost:*", "tcp://[::1]:7600"])
def test_loopback_doors_need_no_setting(endpoint: str) -> None:
    door.check_bind(endpoint, False)


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:7600", "tcp://*:7600",
                                      "tcp://192.0.2.1:7600", "tcp://[::]:7600",
                                      "tcp://eth0:7600"])
def test_other_addresses_need_tcp_allow_remote(endpoint: str) -> None:
    with pytest.raises(ValueError, match="gateway.tcp_allow_remote = true"):
        door.check_bind(endpoint, False)
    door.check_bind(endpoint, True)


def test_door_settings_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(ValueError, match="gateway.tcp_allow_remote must be true or false"):
        door.check_bind("tcp://127.0.0.1:1", "yes")
    for bad in ("http://127.0.0.1:1", "tcp://127.0.0.1", "tcp://:5"):
        with pytest.raises(ValueError, match="gateway.tcp"):
            door.check_bind(bad, False)


def test_door_limits_failed_tokens_per_source_and_overall() -> None:
    g = door.DoorGuard()
    logged = [g.failed("10.0.0.1", 0.0) for _ in range(int(door.PER_SOURCE.burst))]
    assert logged == [True] + [False] * (len(logged) - 1)  # one line, not one per try
    assert not g.admits("10.0.0.1", 0.0)
    assert g.admits("10.0.0.2", 0.0)  # another source is still heard
    assert g.admits("10.0.0.1", 1.0 / door.PER_SOURCE.rate)  # and this one refills
    # Many sources at once hit the door's own limit.
    t = 2.0
    heard = 0
    for i in range(1000):
        source = f"10.1.{i // 250}.{i % 250}"
        if g.admits(source, t):
            g.failed(source, t)
            heard += 1
    assert heard <= door.OVERALL.burst + 1
    assert g.status()["tcp_limited"] >= 1000 - heard


def test_door_summary_is_one_bounded_line_per_period() -> None:
    g = door.DoorGuard()
    for i in range(5000):
        g.failed(f"198.51.{i // 256 % 256}.{i % 256}", 0.0)
    assert g.summary(door.SUMMARY_S / 2) is None
    line = g.summary(door.SUMMARY_S)
    assert line is not None and line.refused == 5000
    assert len(line.sources) == door.SUMMARY_TOP
    assert line.other_sources == 5000 - door.SUMMARY_TOP
    assert g.summary(2 * door.SUMMARY_S) is None  # quiet: nothing to say...
    assert g.failed("198.51.0.1", 3 * door.SUMMARY_S)  # ...and the next is logged at once
