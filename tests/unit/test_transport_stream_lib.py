"""The owner-side Stream and StreamClient without sockets: credit, back-pressure, EOF,
reset, and the RESET of an open that was cancelled or timed out."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from p2pm.common import errors
from p2pm.common.streams import frames as fr
from p2pm.common.streams import (ProtocolSpec, Stream, StreamClient, StreamError,
                                             StreamReset)


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


class FakeSocket:
    """Stands in for the StreamClient's AsyncSocket: records frames, never answers."""

    def __init__(self) -> None:
        self.sent: list[fr.Frame] = []

    async def send_multipart(self, parts: list[bytes]) -> None:
        self.sent.append(fr.parse(parts))

    def send_multipart_nowait(self, parts: list[bytes]) -> bool:
        self.sent.append(fr.parse(parts))
        return True


def registered_client() -> tuple[FakeSocket, StreamClient]:
    sock = FakeSocket()
    client = StreamClient(sock, "owner", {}, fr.DEFAULT_WINDOW)  # type: ignore[arg-type]
    client._registered.set()
    return sock, client


async def test_an_open_cancelled_by_its_caller_resets_the_stream() -> None:
    sock, client = registered_client()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.open_stream, "/t/1")
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
    opened, reset = sock.sent
    assert opened.kind == fr.OPEN and reset.kind == fr.RESET and reset.sid == opened.sid
    assert not client._pending


async def test_an_open_that_times_out_resets_the_stream_once() -> None:
    sock, client = registered_client()
    with pytest.raises(StreamError) as info:
        await client.open_stream("/t/1", timeout=0.01)
    assert info.value.code == errors.TIMEOUT
    assert [f.kind for f in sock.sent] == [fr.OPEN, fr.RESET]
