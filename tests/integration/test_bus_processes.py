"""The bus between real processes: volume without stalls, hostile frames, shutdown."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import trio
import zmq

from p2pm.common import errors, wire
from p2pm.common.client import open_client
from p2pm.common.home import Endpoints
from p2pm.common.zmqtrio import AsyncSocket

PEER = Path(__file__).with_name("bus_peer.py")


@pytest.fixture
def peer() -> Iterator[tuple[Endpoints, subprocess.Popen[bytes]]]:
    run = Path(tempfile.mkdtemp(prefix="p2pm-", dir="/tmp"))
    ep = Endpoints(f"ipc://{run}")
    proc = subprocess.Popen([sys.executable, str(PEER), ep.base],
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        yield ep, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        shutil.rmtree(run, ignore_errors=True)


async def wait_ready(ep: Endpoints) -> None:
    async with open_client(zmq.Context.instance(), ep.rpc("buspeer"), "buspeer") as c:
        await c.call("sys.ping", timeout=0.5, retries=40)


async def test_20k_requests_across_processes(peer) -> None:
    ep, _ = peer
    await wait_ready(ep)
    n, in_flight = 20_000, 64
    answered: list[int] = []
    async with open_client(zmq.Context.instance(), ep.rpc("buspeer"), "buspeer") as c:

        async def worker(start: int) -> None:
            for i in range(start, n, in_flight):
                assert await c.call("echo", {"value": i}) == i
                answered.append(i)

        # A stall would hang here: the deadline is generous, it is not a speed test.
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for w in range(in_flight):
                    nursery.start_soon(worker, w)
        assert await c.call("handled_count") == n
    assert sorted(answered) == list(range(n))


async def test_100k_events_across_processes(peer) -> None:
    ep, _ = peer
    await wait_ready(ep)
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 200_000)
    sub.setsockopt(zmq.SUBSCRIBE, b"buspeer.")
    sub.connect(ep.events("buspeer"))
    asub = AsyncSocket(sub)
    n = 100_000
    try:
        # Wait until the subscription is live: heartbeats arrive once it is.
        with trio.fail_after(10):
            while (await asub.recv_multipart())[0] != b"buspeer.sys.heartbeat":
                pass
        async with open_client(ctx, ep.rpc("buspeer"), "buspeer") as c:
            await c.call("blast", {"count": n})
        seqs: list[int] = []
        with trio.fail_after(120):
            while len(seqs) < n:
                topic, payload = await asub.recv_multipart()
                if topic == b"buspeer.blast.item":
                    seqs.append(orjson.loads(payload)["seq"])
        assert seqs == list(range(1, n + 1))  # in order, no gap, no duplicate
    finally:
        asub.close(0)


async def test_hostile_frames_never_take_the_actor_down(peer) -> None:
    ep, proc = peer
    await wait_ready(ep)
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.DEALER)
    raw.connect(ep.rpc("buspeer"))
    sock = AsyncSocket(raw)
    hostile = [
        [b"", b"\x00" * 100],
        [b"", b"null"],
        [b"", b'{"id": 5, "method": "echo"}'],
        [b"", b'{"id": "a", "method": "echo", "params": {"value": 1, "extra": 2}}'],
        [b"", b'{"id": "b", "method": "no.such"}'],
        [b"", b"x" * (wire.MAX_FRAME + 1)],
        [b"a", b"b", b"c", b"not json either"],
    ]
    try:
        with trio.fail_after(20):
            for frames in hostile:
                await sock.send_multipart(frames)
                reply = orjson.loads((await sock.recv_multipart())[-1])
                assert reply["ok"] is False
                assert reply["error"]["code"] in errors.ALL
        async with open_client(ctx, ep.rpc("buspeer"), "buspeer") as c:
            assert await c.call("echo", {"value": "still here"}) == "still here"
        assert proc.poll() is None
    finally:
        sock.close(0)


async def test_sigterm_exits_zero_and_frees_the_endpoint(peer) -> None:
    ep, proc = peer
    await wait_ready(ep)
    proc.send_signal(signal.SIGTERM)
    with trio.fail_after(10):
        while proc.poll() is None:
            await trio.sleep(0.02)
    assert proc.returncode == 0
    # A replacement binds the same endpoints and the same client reaches it.
    again = subprocess.Popen([sys.executable, str(PEER), ep.base], start_new_session=True)
    try:
        await wait_ready(ep)
    finally:
        again.terminate()
        again.wait(10)
    assert again.returncode == 0


async def test_second_instance_is_refused(peer) -> None:
    ep, _ = peer
    await wait_ready(ep)
    second = subprocess.run([sys.executable, str(PEER), ep.base], capture_output=True,
                            timeout=30)
    assert second.returncode == 2
    assert b"already running" in second.stderr
    async with open_client(zmq.Context.instance(), ep.rpc("buspeer"), "buspeer") as c:
        assert await c.call("echo", {"value": 1}) == 1
