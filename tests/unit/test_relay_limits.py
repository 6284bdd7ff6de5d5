"""Circuit Relay v2 limits: the reservation table and the splicing loop that enforces
a circuit's byte and time budget (fake streams, no sockets)."""

from __future__ import annotations

import pytest
import trio
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb import circuit_pb2 as pb

from p2pm.common.config import ConfigError, settings_of

from p2pm.services.transport.relay import (Circuit, RelayLimits, RelayRefused,
                                           ReservationTable, _splice, circuit_addr, relay_of)

A, B, C, D = (ID(bytes([0, 1, n])) for n in range(4))


def table(**kw: int) -> ReservationTable:
    return ReservationTable(RelayLimits(**kw))


def test_reservations_are_capped_and_renewals_do_not_count_twice() -> None:
    t = table(max_reservations=2, reservation_ttl_s=100)
    assert t.reserve(A, 1000.0) == 1100
    t.reserve(B, 1000.0)
    assert t.reserve(A, 1050.0) == 1150  # renewal of a held slot
    with pytest.raises(RelayRefused) as exc:
        t.reserve(C, 1050.0)
    assert exc.value.status == pb.RESERVATION_REFUSED
    # Expired reservations free their slot.
    t.reserve(C, 1101.0)
    assert set(t.reservations) == {A, C}


def test_a_circuit_needs_the_target_to_hold_a_live_reservation() -> None:
    t = table(reservation_ttl_s=100)
    with pytest.raises(RelayRefused) as exc:
        t.open_circuit(A, B, 0.0)
    assert exc.value.status == pb.NO_RESERVATION
    t.reserve(B, 0.0)
    t.open_circuit(A, B, 50.0)
    with pytest.raises(RelayRefused):
        t.open_circuit(C, B, 100.5)  # expired by now


def test_circuit_limits_in_total_and_per_peer() -> None:
    t = table(max_circuits=3, max_circuits_per_peer=2)
    for peer in (B, C, D):
        t.reserve(peer, 0.0)
    first = t.open_circuit(A, B, 1.0)
    t.open_circuit(A, C, 1.0)
    with pytest.raises(RelayRefused) as exc:
        t.open_circuit(A, D, 1.0)  # A already has two
    assert exc.value.status == pb.RESOURCE_LIMIT_EXCEEDED
    t.open_circuit(C, D, 1.0)
    with pytest.raises(RelayRefused):
        t.open_circuit(B, D, 1.0)  # three in total
    t.close_circuit(first)
    t.open_circuit(B, D, 1.0)
    assert t.refused == 2


def test_limits_come_from_the_settings_and_nonsense_is_refused() -> None:
    limits = RelayLimits.from_settings(
        settings_of({"transport": {"relay_circuit_duration_s": 30}}).transport)
    assert limits.circuit_duration_s == 30
    assert limits.max_circuits == RelayLimits().max_circuits
    for key, value in (("relay_max_circuits", 0), ("relay_circuit_data_bytes", "lots")):
        with pytest.raises(ConfigError, match=f"transport.{key}"):
            settings_of({"transport": {key: value}})


def test_circuit_addresses_round_trip() -> None:
    addr = circuit_addr(f"/ip4/198.18.0.2/tcp/4001/p2p/{A}", A)
    assert str(addr) == f"/ip4/198.18.0.2/tcp/4001/p2p/{A}/p2p-circuit"
    relay, transport = relay_of(f"{addr}/p2p/{B}")
    assert relay == A and str(transport) == "/ip4/198.18.0.2/tcp/4001"
    assert relay_of(f"/ip4/1.2.3.4/tcp/1/p2p/{B}") is None


class FakeStream:
    """One direction of a pipe: what is written to it can be read by its peer."""

    def __init__(self) -> None:
        self.inbox_send, self.inbox = trio.open_memory_channel[bytes](100)
        self.peer: FakeStream | None = None
        self.written = 0

    async def read(self, n: int = -1) -> bytes:
        return await self.inbox.receive()

    async def write(self, data: bytes) -> None:
        self.written += len(data)


async def _splice_with(limit_bytes: int, duration: float, chunks: list[bytes],
                       keep_open: bool) -> tuple[bool, int, float]:
    a, b = FakeStream(), FakeStream()
    for chunk in chunks:
        a.inbox_send.send_nowait(chunk)
    if not keep_open:
        a.inbox_send.send_nowait(b"")
    circuit = Circuit(A, B, trio.current_time() + duration, limit_bytes)
    counters = {"bytes_relayed": 0}
    start = trio.current_time()
    limited = await _splice(a, b, circuit, counters, start)
    return limited, b.written, trio.current_time() - start


async def test_splice_stops_a_direction_at_its_byte_budget(autojump_clock: trio.abc.Clock) -> None:
    limited, written, _ = await _splice_with(1000, 60, [b"x" * 600, b"y" * 600], True)
    assert limited and written == 600  # the chunk that would overflow is not relayed


async def test_splice_stops_at_the_circuit_deadline(autojump_clock: trio.abc.Clock) -> None:
    limited, written, took = await _splice_with(10_000, 30, [b"x" * 10], True)
    assert limited and written == 10 and took == pytest.approx(30, abs=0.1)


async def test_splice_ends_quietly_when_a_side_closes(autojump_clock: trio.abc.Clock) -> None:
    limited, written, _ = await _splice_with(10_000, 30, [b"x" * 10], False)
    assert not limited and written == 10
