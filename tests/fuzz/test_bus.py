"""Fuzzing the bus as an actor sees it: garbage requests on its ROUTER and garbage
events from the actors it subscribes to must get error replies or be ignored, and the
actor must keep answering afterwards. In-process actors over inproc endpoints."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import trio
import zmq
from hypothesis import given
from hypothesis import strategies as st

from p2pm.common import errors, wire
from p2pm.common.actor import Actor, ActorRuntime, on_event, rpc
from p2pm.common.client import open_client
from p2pm.common.home import Endpoints
from p2pm.common.zmqtrio import AsyncSocket

from .mutate import fuzzed
from .test_decoders import dumps, json_values, requests

_names = itertools.count()


class Echo(Actor):
    name = "echo"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, Any]] = []
        self.resyncs = 0

    @rpc
    async def echo(self, text: str, data: bytes = b"", n: int = 0) -> dict[str, Any]:
        return {"text": text, "data": data, "n": n}

    @on_event("src.thing")
    async def _thing(self, topic: str, data: Any) -> None:
        self.seen.append((topic, data))

    async def resync(self, source: str, reason: str) -> None:
        self.resyncs += 1


async def _with_actor(body: Any) -> None:
    endpoints = Endpoints.inproc(f"fuzz-{next(_names)}")
    # A context per example, ended with it: libzmq keeps an inproc connect to a name
    # nobody bound (the actor's SUB to "src" when the example binds no publisher)
    # pending in its context, with the socket's descriptor, for as long as the
    # context lives; over thousands of examples one shared context runs out of them.
    # (Nodes use ipc endpoints, where a connect leaves nothing behind.)
    ctx = zmq.Context()
    actor = Echo()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(ActorRuntime(actor, endpoints, ctx).serve)
            await body(actor, endpoints, ctx)
            nursery.cancel_scope.cancel()
    finally:
        ctx.destroy(linger=0)


request_frames = st.lists(st.one_of(
    fuzzed(requests, 128),
    st.fixed_dictionaries({"id": st.text(min_size=1, max_size=8), "method": st.just("echo"),
                           "params": st.dictionaries(st.sampled_from(["text", "data", "n",
                                                                     "x"]), json_values)})
    .map(dumps)), min_size=1, max_size=25)


@given(request_frames, st.lists(st.integers(1, 3), max_size=3))
def test_garbage_requests_get_error_replies_and_the_actor_keeps_serving(
        bodies: list[bytes], extra_parts: list[int]) -> None:
    async def body(actor: Echo, endpoints: Endpoints, ctx: zmq.Context) -> None:
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(endpoints.rpc("echo"))
        sock = AsyncSocket(dealer)
        try:
            expected = 0
            for i, frame in enumerate(bodies):
                # An odd envelope shape sometimes: more frames before the body.
                parts = [b""] * (extra_parts[i % len(extra_parts)] if extra_parts else 1)
                await sock.send_multipart([*parts, frame])
                expected += 1
            with trio.fail_after(10):
                for _ in range(expected):
                    reply = orjson.loads((await sock.recv_multipart())[-1])
                    assert set(reply) >= {"id", "ok"}
                    if not reply["ok"]:
                        assert reply["error"]["code"] in errors.ALL
                        assert reply["error"]["code"] != errors.INTERNAL, reply
        finally:
            sock.close(linger_ms=0)
        async with open_client(ctx, endpoints.rpc("echo"), "echo") as client:
            got = await client.call("echo", {"text": "still here", "data": wire.b64e(b"\x00")})
        assert got == {"text": "still here", "data": "AA==", "n": 0}

    trio.run(_with_actor, body)


event_frames = st.lists(st.one_of(
    st.lists(st.binary(max_size=30), min_size=1, max_size=3),
    st.tuples(st.sampled_from([b"src.thing.new", b"src.sys.heartbeat", b"src.other", b"\xff"]),
              fuzzed(st.fixed_dictionaries(
                  {"epoch": st.one_of(st.sampled_from(["e1", "e2"]), json_values),
                   "seq": st.one_of(st.integers(-3, 5), json_values),
                   "ts": json_values,
                   "data": st.one_of(json_values, st.fixed_dictionaries(
                       {"topics": st.one_of(json_values, st.dictionaries(
                           st.sampled_from(["src.thing.new", "x"]), json_values))}))})
                  .map(dumps), 64)).map(list)), min_size=1, max_size=20)


@given(event_frames)
def test_garbage_events_are_ignored_and_the_actor_keeps_serving(frames: list[list[bytes]]
                                                                 ) -> None:
    async def body(actor: Echo, endpoints: Endpoints, ctx: zmq.Context) -> None:
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.bind(endpoints.events("src"))
        sock = AsyncSocket(pub)
        try:
            marker = [b"src.thing.marker",
                      wire.encode_event("marker", 1, 0.0, {"last": True})]
            # Subscriptions propagate asynchronously: send markers until one arrives.
            with trio.fail_after(10):
                while not actor.seen:
                    await sock.send_multipart(marker)
                    await trio.sleep(0.01)
            actor.seen.clear()
            for f in frames:
                await sock.send_multipart(f)
            await sock.send_multipart([b"src.thing.marker",
                                       wire.encode_event("final", 1, 0.0, "end")])
            with trio.fail_after(10):
                while ("src.thing.marker", "end") not in actor.seen:
                    await trio.sleep(0.01)
        finally:
            sock.close(linger_ms=0)
        async with open_client(ctx, endpoints.rpc("echo"), "echo") as client:
            assert (await client.call("echo", {"text": "ok"}))["text"] == "ok"

    trio.run(_with_actor, body)
