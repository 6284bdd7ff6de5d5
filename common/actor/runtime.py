"""ActorRuntime: serves one actor on its endpoints, as the package docstring tells.
Requests arrive on a ROUTER and are answered from the handler (or the reply cache);
events go out on a PUB socket with a heartbeat; subscriptions come in on a SUB socket
and go through the sequence tracker, which says when to resync."""

from __future__ import annotations

import contextvars
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import zmq

from p2pm.common import errors, wire
from p2pm.common.client import Client, open_client
from p2pm.common.groups import handle_beside_cancel
from p2pm.common.home import Endpoints
from p2pm.common.zmqtrio import AsyncSocket

from .base import Actor
from .params import Method
from .sequence import SequenceTracker, matches

MAX_CONCURRENT = 256
REPLY_CACHE = 4096
# The cache answers a retried request without running it again; it is bounded in bytes
# too, or it holds the last 4096 replies whatever their size (4096 history pages of
# 200 messages are hundreds of MiB). A reply above REPLY_CACHE_ITEM_BYTES is not kept:
# only reads answer that much, and a read that runs twice is the same read. So big
# reads never push out the small replies of writes, whose dedupe matters.
REPLY_CACHE_BYTES = 8 * 1024 * 1024
REPLY_CACHE_ITEM_BYTES = 64 * 1024
HEARTBEAT_S = 1.0
# An actor exits within STOP_BOUND_S of SIGTERM: teardown gets up to TEARDOWN_S, the
# sockets' linger is 0.2 s, and whatever is still running after that is cut short
# (process.py).
TEARDOWN_S = 4.0
STOP_BOUND_S = 5.0

# Who sent the request being handled, as the request says (unchecked: the keystore
# checks it against actor_tokens). Set per request task by `dispatch`.
_request_auth: contextvars.ContextVar[wire.Auth | None] = contextvars.ContextVar(
    "request_auth", default=None)


def request_auth() -> wire.Auth | None:
    """The `auth` of the request this handler answers (None: the sender gave none)."""
    return _request_auth.get()


class ActorRuntime:
    """Serves one actor on its endpoints inside a trio nursery. `heartbeat_s` is how
    often it publishes its heartbeat, and how often it checks that the sources it
    subscribes to are still heard (a test on trio's MockClock may use its own)."""

    def __init__(self, actor: Actor, endpoints: Endpoints, ctx: zmq.Context | None = None,
                 *, heartbeat_s: float = HEARTBEAT_S) -> None:
        if not heartbeat_s > 0:
            raise ValueError(f"heartbeat_s must be positive, not {heartbeat_s!r}")
        self.heartbeat_s = heartbeat_s
        self.actor = actor
        self.name = actor.name
        self.endpoints = endpoints
        self.ctx = ctx or zmq.Context.instance()
        self.epoch = f"{int(time.time() * 1000):x}-{uuid.uuid4().hex[:8]}"
        self.started_at = time.time()
        self.pid = os.getpid()
        self.log = actor.log
        self.ready = trio.Event()
        self.methods: dict[str, Method] = {}
        self.handlers: list[tuple[tuple[str, ...], Callable[..., Awaitable[None]]]] = []
        self.timers: list[tuple[float, Callable[..., Awaitable[None]]]] = []
        for attr in dir(type(actor)):
            fn = getattr(actor, attr, None)
            if fn is None or not callable(fn):
                continue
            if (wname := getattr(fn, "_p2pm_rpc", None)) is not None:
                self.methods[wname] = Method(fn)
            if (prefixes := getattr(fn, "_p2pm_events", None)) is not None:
                self.handlers.append((prefixes, fn))
            if (period := getattr(fn, "_p2pm_every", None)) is not None:
                self.timers.append((period, fn))
        self.methods["sys.ping"] = Method(self._sys_ping)
        self.methods["sys.status"] = Method(self._sys_status)
        self.methods["sys.methods"] = Method(self._sys_methods)
        self._topic_seq: dict[str, int] = {}
        self._replies: OrderedDict[str, bytes] = OrderedDict()
        self._replies_bytes = 0
        self._inflight: dict[str, list[bytes]] = {}
        self._clients: dict[str, Client] = {}
        self._nursery: trio.Nursery | None = None
        self._pub: AsyncSocket | None = None
        self._tracker = SequenceTracker(())  # replaced once the subscriptions are known
        self.counters = {"requests": 0, "errors": 0, "bad_requests": 0, "duplicates": 0,
                         "events_published": 0, "events_received": 0, "resyncs": 0}
        actor.runtime = self

    # -- sys methods -------------------------------------------------------------------
    async def _sys_ping(self) -> dict[str, Any]:
        return {"pong": True, "actor": self.name, "pid": self.pid, "epoch": self.epoch}

    async def _sys_status(self) -> dict[str, Any]:
        healthy = self.ready.is_set() and bool(self.actor.healthy())
        return {
            "actor": self.name, "pid": self.pid, "epoch": self.epoch,
            "uptime_s": round(time.time() - self.started_at, 3), "healthy": healthy,
            "counters": dict(self.counters), **self.actor.status(),
        }

    async def _sys_methods(self) -> list[str]:
        return sorted(self.methods)

    # -- events ------------------------------------------------------------------------
    def publish(self, topic: str, data: Any) -> None:
        """Publish an event now. PUB never blocks: a subscriber too slow to keep up
        loses events (and notices by the seq gap)."""
        if self._pub is None:
            return
        seq = self._topic_seq.get(topic, 0) + 1
        self._topic_seq[topic] = seq
        payload = wire.encode_event(self.epoch, seq, time.time(), data)
        self._pub.send_multipart_nowait([topic.encode(), payload])
        self.counters["events_published"] += 1

    async def client(self, actor: str) -> Client:
        if actor not in self._clients:
            assert self._nursery is not None
            client = await self._nursery.start(self._run_client, actor)
            self._clients.setdefault(actor, client)
        return self._clients[actor]

    async def _run_client(self, actor: str, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with open_client(self.ctx, self.endpoints.rpc(actor), actor) as c:
            task_status.started(c)
            await trio.sleep_forever()

    # -- serving -----------------------------------------------------------------------
    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        router = self.ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        pub = self.ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, 100_000)
        await _bind(router, self.endpoints.rpc(self.name))
        await _bind(pub, self.endpoints.events(self.name))
        self._router = AsyncSocket(router)
        self._pub = AsyncSocket(pub)
        sub_prefixes = sorted({p for prefixes, _ in self.handlers for p in prefixes})
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self.actor.setup()
                nursery.start_soon(self._serve_requests)
                if sub_prefixes:
                    await nursery.start(self._serve_events, sub_prefixes)
                nursery.start_soon(self._heartbeat)
                for period, fn in self.timers:
                    nursery.start_soon(self._timer, period, fn)
                self.ready.set()
                self.log.info("actor.ready", pid=self.pid, epoch=self.epoch)
                task_status.started(self)
                await self.actor.run()
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(TEARDOWN_S):
                    await self.actor.teardown()
            for c in self._clients.values():
                c.close()
            self._router.close()
            self._pub.close()
            self._pub = None

    async def _serve_requests(self) -> None:
        limiter = trio.Semaphore(MAX_CONCURRENT)
        assert self._nursery is not None
        while True:
            frames = await self._router.recv_multipart()
            await limiter.acquire()
            self._nursery.start_soon(self._handle, frames, limiter)

    async def _handle(self, frames: list[bytes], limiter: trio.Semaphore) -> None:
        try:
            if len(frames) < 2:
                return  # nothing to reply to
            ident, body = frames[0], frames[-1]
            envelope = frames[:-1]
            self.counters["requests"] += 1
            try:
                req = wire.decode_request(body)
            except errors.BusError as exc:
                self.counters["bad_requests"] += 1
                await self._router.send_multipart([*envelope, wire.encode_error(None, exc)])
                return
            cached = self._replies.get(req.id)
            if cached is not None:
                self.counters["duplicates"] += 1
                await self._router.send_multipart([*envelope, cached])
                return
            if req.id in self._inflight:
                self.counters["duplicates"] += 1
                self._inflight[req.id].append(ident)
                return
            self._inflight[req.id] = [ident]
            reply = await self.dispatch(req)
            self._keep_reply(req.id, reply)
            for who in self._inflight.pop(req.id):
                await self._router.send_multipart([who, *envelope[1:], reply])
        finally:
            limiter.release()

    def _keep_reply(self, req_id: str, reply: bytes) -> None:
        """Remember a reply for a retry of its request, within REPLY_CACHE entries and
        REPLY_CACHE_BYTES, oldest out first."""
        if len(reply) > REPLY_CACHE_ITEM_BYTES:
            return
        self._replies[req_id] = reply
        self._replies_bytes += len(reply)
        while len(self._replies) > REPLY_CACHE or self._replies_bytes > REPLY_CACHE_BYTES:
            self._replies_bytes -= len(self._replies.popitem(last=False)[1])

    async def dispatch(self, req: wire.Request) -> bytes:
        """Run one decoded request through validation and its handler; the encoded
        reply. Also used by doors other than the ROUTER (the gateway's TCP endpoint)."""
        method = self.methods.get(req.method)
        if method is None:
            self.counters["errors"] += 1
            return wire.encode_error(req.id, errors.BusError(
                errors.UNKNOWN_METHOD, f"{self.name} has no method {req.method!r}"))
        reset = _request_auth.set(req.auth)
        try:
            result = await method.fn(**method.bind(req.params))
            return wire.encode_ok(req.id, result)
        except Exception as exc:  # a handler bug must not take the actor down
            return self._failed(req, exc)
        except BaseExceptionGroup as group:
            # Cancelled (the actor stops) while a nursery in the handler saw an error:
            # the error is counted and logged as ever, the Cancelled goes on up.
            handle_beside_cancel(group, lambda exc: self._failed(req, exc))
        finally:
            _request_auth.reset(reset)

    def _failed(self, req: wire.Request, exc: Exception) -> bytes:
        """The error reply to a request whose handler raised `exc`."""
        self.counters["errors"] += 1
        if isinstance(exc, errors.BusError):
            return wire.encode_error(req.id, exc)
        self.log.error("rpc.crashed", exc=True, method=req.method)
        return wire.encode_error(req.id, errors.BusError(
            errors.INTERNAL, f"{req.method} failed: {type(exc).__name__}: {exc}"))

    async def _heartbeat(self) -> None:
        while True:
            self.publish(f"{self.name}.sys.heartbeat", {
                "pid": self.pid, "healthy": bool(self.actor.healthy()),
                "topics": dict(self._topic_seq),
            })
            await trio.sleep(self.heartbeat_s)

    async def _timer(self, period: float, fn: Callable[[], Awaitable[None]]) -> None:
        while True:
            await trio.sleep(period)
            try:
                await fn()
            except* Exception:  # a group with Cancelled: see common/groups.py
                self.log.error("timer.crashed", exc=True, timer=fn.__name__)

    # -- subscribing -------------------------------------------------------------------
    async def _serve_events(self, prefixes: list[str],
                            task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 100_000)
        sub.setsockopt(zmq.LINGER, 0)
        sources = sorted({p.split(".")[0] for p in prefixes})
        for src in sources:
            sub.connect(self.endpoints.events(src))
            sub.setsockopt(zmq.SUBSCRIBE, f"{src}.sys.heartbeat".encode())
        for p in prefixes:
            sub.setsockopt(zmq.SUBSCRIBE, p.encode())
        asock = AsyncSocket(sub)
        self._tracker = SequenceTracker(prefixes)
        self._heard = {src: trio.current_time() for src in sources}
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                # Only an inproc pipe needs watching; over ipc the watch would wake
                # every heartbeat to do nothing.
                inproc = [s for s in sources
                          if self.endpoints.events(s).startswith("inproc://")]
                if inproc:
                    nursery.start_soon(self._watch_sources, sub, inproc)
                while True:
                    frames = await asock.recv_multipart()
                    self._heard[frames[0].split(b".", 1)[0].decode(errors="replace")] = \
                        trio.current_time()
                    await self._on_event_frames(frames)
        finally:
            asock.close(linger_ms=0)

    async def _watch_sources(self, sub: zmq.Socket, sources: list[str]) -> None:
        """A source silent for three heartbeats is reconnected: ipc does that by
        itself, but an inproc pipe to a publisher that went away never recovers."""
        while True:
            await trio.sleep(self.heartbeat_s)
            now = trio.current_time()
            for src in sources:
                if now - self._heard.get(src, now) > 3 * self.heartbeat_s:
                    ep = self.endpoints.events(src)
                    if ep.startswith("inproc://"):
                        try:
                            sub.disconnect(ep)
                        except zmq.ZMQError:
                            pass  # the pipe is already gone
                        sub.connect(ep)
                    self._heard[src] = now

    async def _on_event_frames(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            return
        try:
            topic = frames[0].decode()
            ev = wire.loads(frames[1])
            epoch, seq, data = ev["epoch"], int(ev["seq"]), ev.get("data")
        except Exception:
            return
        self.counters["events_received"] += 1
        for due in self._tracker.observe(topic, epoch, seq, data):
            await self._resync(due.source, due.reason)
        for pfx, fn in self.handlers:
            if matches(topic, pfx):
                try:
                    await fn(topic, data)
                except* Exception:  # a group with Cancelled: see common/groups.py
                    self.log.error("event.handler_crashed", exc=True, topic=topic)

    async def _resync(self, source: str, reason: str) -> None:
        self.counters["resyncs"] += 1
        self.log.info("bus.resync", source=source, reason=reason)
        try:
            await self.actor.resync(source, reason)
        except* Exception:  # a group with Cancelled: see common/groups.py
            self.log.error("resync.crashed", exc=True, source=source)


async def _bind(sock: zmq.Socket, endpoint: str) -> None:
    """Bind, waiting briefly for an inproc name still held by a just-closed socket
    (ZMQ closes sockets asynchronously; an in-process restart can race it)."""
    with trio.move_on_after(2.0):
        while True:
            try:
                sock.bind(endpoint)
                return
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE or not endpoint.startswith("inproc://"):
                    raise
            await trio.sleep(0.01)
    sock.bind(endpoint)
