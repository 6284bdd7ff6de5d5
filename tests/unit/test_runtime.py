"""The actor runtime in one process over inproc endpoints: routing, validation,
redelivery, crashes, events with gap/restart detection, client retry.

Time is trio's MockClock: whenever every task has waited a millisecond of real time
(for a zmq message in flight, or for a heartbeat), it jumps to the next deadline, so
heartbeats, timers and the three-heartbeat watchdog take virtual seconds, not real
ones; a deadline in a test is a deadline in virtual time."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
import trio
import trio.testing
import zmq

from p2pm.common import errors, wire
from p2pm.common.actor import Actor, ActorRuntime, every, on_event, request_auth, rpc
from p2pm.common.client import open_client
from p2pm.common.home import Endpoints
from p2pm.common.streams import StreamReset
from p2pm.common.zmqtrio import AsyncSocket
from tests.helpers.stopping import nursery_cut_by_the_stop

_names = itertools.count()


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Every test takes it, so pytest-trio runs the test on it."""
    # Not 0: a jump while a zmq message is still crossing the I/O thread would fire
    # the caller's timeout; a millisecond of quiet means nothing is in flight.
    return trio.testing.MockClock(autojump_threshold=0.001)


def endpoints() -> Endpoints:
    return Endpoints.inproc(f"rt-{next(_names)}")


class Counter(Actor):
    name = "counter"

    def __init__(self) -> None:
        super().__init__()
        self.value = 0
        self.ticks = 0

    @rpc
    async def add(self, amount: int, note: str | None = None) -> dict[str, Any]:
        self.value += amount
        self.publish("counter.value.changed", {"value": self.value})
        return {"value": self.value}

    @rpc
    async def slow_add(self, amount: int, delay: float) -> int:
        await trio.sleep(delay)
        self.value += amount
        return self.value

    @rpc
    async def echo_bytes(self, data: bytes) -> dict[str, Any]:
        return {"data": data, "length": len(data)}

    @rpc
    async def who(self, delay: float) -> str | None:
        """Who the request says it comes from, after a wait (so requests overlap)."""
        await trio.sleep(delay)
        auth = request_auth()
        return None if auth is None else f"{auth.actor}/{auth.token}"

    @rpc
    async def page(self, size: int) -> str:
        """A read whose reply is `size` characters (a history page, say); counted."""
        self.value += 1
        return "x" * size

    @rpc
    async def boom(self) -> None:
        raise RuntimeError("handler bug")

    @every(0.01)
    async def _tick(self) -> None:
        self.ticks += 1


class Watcher(Actor):
    name = "watcher"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []
        self.resyncs: list[tuple[str, str]] = []

    @on_event("counter.value")
    async def _changed(self, topic: str, data: dict[str, Any]) -> None:
        self.seen.append(data)

    async def resync(self, source: str, reason: str) -> None:
        self.resyncs.append((source, reason))


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


async def test_rpc_roundtrip_and_validation(clock: trio.testing.MockClock) -> None:
    ep = endpoints()
    async with trio.open_nursery() as nursery:
        await nursery.start(ActorRuntime(Counter(), ep).serve)
        async with open_client(zmq.Context.instance(), ep.rpc("counter"), "counter") as c:
            assert await c.call("add", {"amount": 2}) == {"value": 2}
            assert await c.call("echo_bytes", {"data": "aGVsbG8="}) == {
                "data": "aGVsbG8=", "length": 5}
            cases = [
                ("add", {"amount": "2"}, errors.BAD_PARAMS, "amount must be an integer"),
                ("add", {"amount": True}, errors.BAD_PARAMS, "amount must be an integer"),
                ("add", {}, errors.BAD_PARAMS, "missing param: amount"),
                ("add", {"amount": 1, "x": 1}, errors.BAD_PARAMS, "unknown params: x"),
                ("add", {"amount": 1, "note": 5}, errors.BAD_PARAMS, "note must be a string"),
                ("echo_bytes", {"data": "%%%"}, errors.BAD_PARAMS, "not valid base64"),
                ("nope", {}, errors.UNKNOWN_METHOD, "no method 'nope'"),
                ("boom", {}, errors.INTERNAL, "RuntimeError: handler bug"),
            ]
            for method, params, code, text in cases:
                with pytest.raises(errors.BusError) as exc:
                    await c.call(method, params)
                assert exc.value.code == code
                assert text in exc.value.message
            # None of the refused calls changed anything, and the actor is still up.
            assert await c.call("add", {"amount": 0}) == {"value": 2}
            status = await c.call("sys.status")
            assert status["healthy"] is True and status["actor"] == "counter"
            assert status["counters"]["errors"] == len(cases)
        nursery.cancel_scope.cancel()


async def test_each_request_sees_only_its_own_auth(clock: trio.testing.MockClock) -> None:
    ep = endpoints()
    async with trio.open_nursery() as nursery:
        await nursery.start(ActorRuntime(Counter(), ep).serve)
        async with open_client(zmq.Context.instance(), ep.rpc("counter"), "counter") as c:
            got: dict[str, Any] = {}

            async def ask(name: str | None, delay: float) -> None:
                auth = None if name is None else wire.Auth(name, f"t-{name}")
                got[str(name)] = await c.call("who", {"delay": delay}, auth=auth)

            async with trio.open_nursery() as asking:
                # the first asked answers last: all three are in the handler at once
                for name, delay in (("gossip", 0.3), (None, 0.2), ("dht", 0.1)):
                    asking.start_soon(ask, name, delay)
            assert got == {"gossip": "gossip/t-gossip", "None": None, "dht": "dht/t-dht"}
            assert await c.call("who", {"delay": 0}) is None  # nothing left behind
        nursery.cancel_scope.cancel()


async def test_malformed_frames_get_error_replies(clock: trio.testing.MockClock) -> None:
    ep = endpoints()
    ctx = zmq.Context.instance()
    async with trio.open_nursery() as nursery:
        await nursery.start(ActorRuntime(Counter(), ep).serve)
        raw = ctx.socket(zmq.DEALER)
        raw.connect(ep.rpc("counter"))
        sock = AsyncSocket(raw)
        bad = [b"not json", b"[1,2]", b'{"method":"add"}', b'{"id":"x"}',
               b'{"id":"x","method":"add","params":[1]}', b"\xff\xfe", b"{" * 10000]
        with trio.fail_after(5):
            for frame in bad:
                await sock.send_multipart([b"", frame])
                reply = orjson.loads((await sock.recv_multipart())[-1])
                assert reply["ok"] is False
                assert reply["error"]["code"] == errors.BAD_REQUEST
            # An empty body is refused too, and the actor still answers afterwards.
            await sock.send_multipart([b""])
            reply = orjson.loads((await sock.recv_multipart())[-1])
            assert reply["error"]["code"] == errors.BAD_REQUEST
            await sock.send_multipart([b"", b'{"id":"ok1","method":"sys.ping"}'])
            reply = orjson.loads((await sock.recv_multipart())[-1])
        assert reply["ok"] is True and reply["result"]["pong"] is True
        sock.close(0)
        nursery.cancel_scope.cancel()


async def test_redelivered_request_runs_once(clock: trio.testing.MockClock) -> None:
    """A client retry carries the same id: the handler must not run twice, whether
    the duplicate arrives while the first is in flight or after it finished."""
    ep = endpoints()
    ctx = zmq.Context.instance()
    counter = Counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(ActorRuntime(counter, ep).serve)
        socks = []
        for _ in range(2):  # two sockets: a retry may come over a new connection
            s = ctx.socket(zmq.DEALER)
            s.connect(ep.rpc("counter"))
            socks.append(AsyncSocket(s))
        req = orjson.dumps({"id": "r-1", "method": "slow_add",
                            "params": {"amount": 5, "delay": 0.2}})
        with trio.fail_after(5):
            await socks[0].send_multipart([b"", req])
            await socks[1].send_multipart([b"", req])
            r0 = orjson.loads((await socks[0].recv_multipart())[-1])
            r1 = orjson.loads((await socks[1].recv_multipart())[-1])
            await socks[0].send_multipart([b"", req])  # after completion
            r2 = orjson.loads((await socks[0].recv_multipart())[-1])
        assert r0 == r1 == r2 == {"id": "r-1", "ok": True, "result": 5}
        assert counter.value == 5
        for s in socks:
            s.close(0)
        nursery.cancel_scope.cancel()


async def test_large_replies_are_not_kept_for_retries_so_memory_stays_bounded(
        clock: trio.testing.MockClock) -> None:
    """A retry of a small reply is answered from the cache; one of a large reply (a
    read) runs again instead of being held: 4096 cached history pages grew an actor by
    hundreds of MiB."""
    from p2pm.common.actor import runtime as rt
    ep = endpoints()
    ctx = zmq.Context.instance()
    counter = Counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(ActorRuntime(counter, ep).serve)
        raw = ctx.socket(zmq.DEALER)
        raw.connect(ep.rpc("counter"))
        sock = AsyncSocket(raw)
        with trio.fail_after(5):
            for rid, size in (("small", 10), ("large", rt.REPLY_CACHE_ITEM_BYTES + 1)):
                req = orjson.dumps({"id": rid, "method": "page", "params": {"size": size}})
                for _ in range(2):
                    await sock.send_multipart([b"", req])
                    reply = orjson.loads((await sock.recv_multipart())[-1])
                    assert reply["ok"] and len(reply["result"]) == size
        assert counter.value == 1 + 2  # the small one ran once, the large one twice
        sock.close(0)
        nursery.cancel_scope.cancel()


async def test_events_reach_subscribers_and_restart_triggers_resync(
        clock: trio.testing.MockClock) -> None:
    ep = endpoints()
    watcher = Watcher()
    beat = 0.1  # s: three of them before the watchdog reconnects
    async with trio.open_nursery() as nursery:
        await nursery.start(ActorRuntime(watcher, ep, heartbeat_s=beat).serve)
        first = trio.CancelScope()

        async def run_counter(scope: trio.CancelScope, task_status: Any) -> None:
            with scope:
                await ActorRuntime(Counter(), ep, heartbeat_s=beat).serve(task_status=task_status)

        await nursery.start(run_counter, first)
        async with open_client(zmq.Context.instance(), ep.rpc("counter"), "counter") as c:
            # PUB/SUB joins asynchronously: publish until the subscriber is attached.
            with trio.fail_after(5):
                while not watcher.seen:
                    await c.call("add", {"amount": 1})
                    await trio.sleep(0.01)
            if watcher.seen[0]["value"] > 1:  # it joined late: the heartbeat tells it
                await wait_until(lambda: watcher.resyncs, 5)
            joined = list(watcher.resyncs)
            before = len(watcher.seen)
            for _ in range(50):
                await c.call("add", {"amount": 1})
            await wait_until(lambda: len(watcher.seen) == before + 50)
            values = [d["value"] for d in watcher.seen]
            assert values == sorted(values)
            assert watcher.resyncs == joined  # nothing missed while attached
            # Restart the counter: a new epoch must make the watcher re-read state.
            first.cancel()
            await nursery.start(run_counter, trio.CancelScope())
            # inproc pipes do not reconnect: the watchdog does it after ~3 heartbeats
            # (of `beat` here: the counter's 10 ms timer makes each jump of the clock short).
            await wait_until(lambda: ("counter", "restarted") in watcher.resyncs, 15)
        nursery.cancel_scope.cancel()


async def test_heartbeat_reveals_missed_events(clock: trio.testing.MockClock) -> None:
    """Events lost in transit (simulated by dropping them at the subscriber) are
    noticed from the heartbeat's per-topic seq, and trigger a resync."""
    ep = endpoints()
    watcher = Watcher()
    counter = Counter()
    async with trio.open_nursery() as nursery:
        runtime = ActorRuntime(counter, ep)
        await nursery.start(runtime.serve)
        await nursery.start(ActorRuntime(watcher, ep).serve)
        async with open_client(zmq.Context.instance(), ep.rpc("counter"), "counter") as c:
            with trio.fail_after(5):
                while not watcher.seen:
                    await c.call("add", {"amount": 1})
                    await trio.sleep(0.01)
            # Advance the topic's seq without sending: as if the frames were lost.
            runtime._topic_seq["counter.value.changed"] += 3
            await wait_until(lambda: any("missed events" in r for _, r in watcher.resyncs))
        nursery.cancel_scope.cancel()


async def test_a_subscriber_that_joined_late_resyncs(clock: trio.testing.MockClock) -> None:
    """Events published before a subscriber connected never reach it (PUB/SUB): the
    first heartbeat it hears shows them, and it re-reads the source's state."""
    ep = endpoints()
    counter = Counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(ActorRuntime(counter, ep).serve)
        async with open_client(zmq.Context.instance(), ep.rpc("counter"), "counter") as c:
            for _ in range(3):
                await c.call("add", {"amount": 1})
        watcher = Watcher()
        await nursery.start(ActorRuntime(watcher, ep).serve)
        await wait_until(lambda: any(src == "counter" and "missed events" in why
                                     for src, why in watcher.resyncs), 5)
        assert watcher.seen == []
        nursery.cancel_scope.cancel()


async def test_timer_runs_and_status_counts(clock: trio.testing.MockClock) -> None:
    ep = endpoints()
    counter = Counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(ActorRuntime(counter, ep).serve)
        await wait_until(lambda: counter.ticks >= 3)
        nursery.cancel_scope.cancel()


async def test_client_retries_until_actor_appears(clock: trio.testing.MockClock) -> None:
    """A call made while the actor is down succeeds once it starts (within retries),
    and a call to an actor that never comes answers TIMEOUT, not a hang."""
    ep = endpoints()
    ctx = zmq.Context.instance()
    async with trio.open_nursery() as nursery:
        async with open_client(ctx, ep.rpc("counter"), "counter") as c:
            with pytest.raises(errors.BusError) as exc:
                await c.call("sys.ping", timeout=0.05, retries=1)
            assert exc.value.code == errors.TIMEOUT

            async def start_later() -> None:
                await trio.sleep(0.1)
                await nursery.start(ActorRuntime(Counter(), ep).serve)

            nursery.start_soon(start_later)
            result = await c.call("add", {"amount": 7}, timeout=0.2, retries=10)
            assert result == {"value": 7}
        nursery.cancel_scope.cancel()


async def test_many_concurrent_calls_share_one_client(clock: trio.testing.MockClock) -> None:
    ep = endpoints()
    async with trio.open_nursery() as nursery:
        await nursery.start(ActorRuntime(Counter(), ep).serve)
        results: list[int] = []
        async with open_client(zmq.Context.instance(), ep.rpc("counter"), "counter") as c:

            async def one(i: int) -> None:
                results.append(await c.call("slow_add", {"amount": 1, "delay": 0.001}))

            async with trio.open_nursery() as inner:
                for i in range(500):
                    inner.start_soon(one, i)
        assert sorted(results) == list(range(1, 501))
        nursery.cancel_scope.cancel()


async def test_errors_inside_open_client_are_not_wrapped(clock: trio.testing.MockClock) -> None:
    ep = endpoints()
    async with trio.open_nursery() as nursery:
        await nursery.start(ActorRuntime(Counter(), ep).serve)
        with pytest.raises(errors.BusError) as exc:
            async with open_client(zmq.Context.instance(), ep.rpc("counter"), "counter") as c:
                await c.call("nope")
        assert exc.value.code == errors.UNKNOWN_METHOD
        nursery.cancel_scope.cancel()


async def test_the_heartbeat_period_is_the_runtime_s(clock: trio.testing.MockClock) -> None:
    """heartbeat_s sets how often the heartbeat goes out (here 0.25 s of virtual time
    instead of the default second), carrying the seq of every topic."""
    ep = endpoints()
    counter = Counter()
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"counter.sys.heartbeat")
    sub.connect(ep.events("counter"))
    asock = AsyncSocket(sub)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(ActorRuntime(counter, ep, heartbeat_s=0.25).serve)
            await counter.add(2)
            beats: list[tuple[float, dict[str, Any]]] = []
            with trio.fail_after(10):
                while len(beats) < 9:
                    _, body = await asock.recv_multipart()
                    beats.append((trio.current_time(), orjson.loads(body)["data"]))
            gaps = [round(b[0] - a[0], 2) for a, b in zip(beats[1:], beats[2:])]
            assert gaps == [0.25] * 7  # the first may come before we were attached
            assert beats[-1][1]["topics"]["counter.value.changed"] == 1
            nursery.cancel_scope.cancel()
    finally:
        asock.close(linger_ms=0)
    with pytest.raises(ValueError, match="heartbeat_s"):
        ActorRuntime(Counter(), endpoints(), heartbeat_s=0)


# -- a handler whose nursery is cut by the actor's stop ----------------------------------
# A sync's receiving half is cancelled while its sending half finds the stream reset by
# the closing stream client: the handler ends in a group of that reset and Cancelled.
# The runtime logs the reset and lets the Cancelled go on up; the stop stays clean.

async def exchange_cut_by_the_stop(in_flight: trio.Event) -> None:
    await nursery_cut_by_the_stop(
        StreamReset(errors.UNAVAILABLE, "the owner closed its stream client"), in_flight)


class SyncsOnRequest(Actor):
    name = "syncer"

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = trio.Event()

    @rpc
    async def sync(self) -> None:
        await exchange_cut_by_the_stop(self.in_flight)


class SyncsOnTimer(SyncsOnRequest):
    @every(0.5)
    async def _sync_now_and_then(self) -> None:
        await exchange_cut_by_the_stop(self.in_flight)


class SyncsOnEvent(SyncsOnRequest):
    @on_event("counter.value")
    async def _sync_on_change(self, topic: str, data: dict[str, Any]) -> None:
        await exchange_cut_by_the_stop(self.in_flight)


async def test_a_request_cut_by_the_stop_is_logged_and_the_stop_stays_clean(
        clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    ep = endpoints()
    syncer = SyncsOnRequest()
    runtime = ActorRuntime(syncer, ep)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.serve)
            async with open_client(zmq.Context.instance(), ep.rpc("syncer"), "syncer") as c:
                nursery.start_soon(c.call, "sync")
                await syncer.in_flight.wait()
                nursery.cancel_scope.cancel()
    assert runtime.counters["errors"] == 1
    assert "rpc.crashed method=sync" in caplog.text
    assert "the owner closed its stream client" in caplog.text


async def test_a_timer_cut_by_the_stop_is_logged_and_the_stop_stays_clean(
        clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    syncer = SyncsOnTimer()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(ActorRuntime(syncer, endpoints()).serve)
            await syncer.in_flight.wait()
            nursery.cancel_scope.cancel()
    assert "timer.crashed timer=_sync_now_and_then" in caplog.text


async def test_an_event_handler_cut_by_the_stop_is_logged_and_the_stop_stays_clean(
        clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    ep = endpoints()
    counter, syncer = Counter(), SyncsOnEvent()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(ActorRuntime(counter, ep).serve)
            await nursery.start(ActorRuntime(syncer, ep).serve)
            while not syncer.in_flight.is_set():  # until the subscription is up
                await counter.add(1)
                with trio.move_on_after(0.1):
                    await syncer.in_flight.wait()
            nursery.cancel_scope.cancel()
    assert "event.handler_crashed topic=counter.value.changed" in caplog.text
