"""The owner-side Stream without sockets: credit, back-pressure, EOF and reset."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from p2pm.services.transport import frames as fr
from p2pm.services.transport.streams import ProtocolSpec, Stream, StreamReset


class FakeClient:
    """Stands in for StreamClient: records the frames a Stream sends."""

    def __init__(self, window: int = 4096) -> None:
        self.window = window
        self._streams: dict[int, Stream] = {}
        self.sent: list[fr.Frame] = []

    async def _send(self, parts: list[bytes]) -> None:
        self.sent.append(fr.parse(parts))


def make(window: int = 4096, spec: ProtocolSpec | None = None) -> tuple[FakeClient, Stream]:
    client = FakeClient(window)
    stream = Stream(client, 1, {"peer": "p", "protocol": "/t/1", "window": 1000},  # type: ignore[arg-type]
                    spec or ProtocolSpec(), "outbound")
    client._streams[1] = stream
    return client, stream


async def test_send_waits_for_credit_and_resumes_when_granted() -> None:
    client, stream = make()
    await stream.send(b"a" * 1000)  # exactly the granted window
    done = trio.Event()

    async def blocked_send() -> None:
        await stream.send(b"b" * 10)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked_send)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set() and len(client.sent) == 1
        stream._on_credit(500)
        await done.wait()
    assert [f.kind for f in client.sent] == [fr.DATA, fr.DATA]


async def test_receive_grants_credit_in_quarters_of_the_window() -> None:
    client, stream = make(window=4096)
    for _ in range(4):
        stream._on_data(b"x" * 512)
    assert stream.buffered == 2048
    await stream.receive()
    assert not client.sent  # 512 < 1024: not yet
    await stream.receive()
    (credit,) = client.sent
    assert credit.kind == fr.CREDIT and credit.credit() == 1024
    assert stream.buffered == 1024


async def test_eof_then_end_of_channel_and_reset_raises() -> None:
    client, stream = make()
    stream._on_data(b"last")
    stream._on_eof()
    assert await stream.receive() == b"last"
    with pytest.raises(trio.EndOfChannel):
        await stream.receive()
    await stream.close()
    assert 1 not in client._streams  # both halves closed: forgotten
    _, other = make()
    other._on_reset(StreamReset("unavailable", "gone"))
    with pytest.raises(StreamReset):
        await other.receive()
    with pytest.raises(StreamReset):
        await other.send(b"x")


async def test_message_streams_refuse_oversized_messages_and_keep_boundaries() -> None:
    client, stream = make(spec=ProtocolSpec(messages=True, max_message=10))
    with pytest.raises(ValueError):
        await stream.send(b"x" * 11)
    await stream.send(b"")
    await stream.send(b"y" * 10)
    assert [f.body for f in client.sent] == [b"", b"y" * 10]


async def test_raw_sends_are_cut_into_chunks() -> None:
    client, stream = make()
    stream._on_credit(10 * fr.CHUNK)
    data = bytes(range(256)) * (fr.CHUNK // 128)  # two chunks' worth
    await stream.send(data)
    assert b"".join(f.body for f in client.sent) == data
    assert all(len(f.body) <= fr.CHUNK for f in client.sent) and len(client.sent) == 2


async def test_async_with_closes_on_success_and_resets_on_error() -> None:
    client, stream = make()
    async with stream:
        pass
    assert client.sent[-1].kind == fr.EOF
    client, stream = make()
    with pytest.raises(RuntimeError):
        async with stream:
            raise RuntimeError("boom")
    assert client.sent[-1].kind == fr.RESET
