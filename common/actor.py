"""The actor runtime: one declarative shape for every p2pm service.

An actor is a class with a `name`. Decorators only record metadata:

    class Storage(Actor):
        name = "storage"

        @rpc
        async def save_message(self, conversation: str, body: bytes) -> dict: ...

        @on_event("gossip.message.received")
        async def _store_incoming(self, topic: str, data: dict) -> None: ...

        @every(30.0)
        async def _checkpoint(self) -> None: ...

`ActorRuntime` derives from that the ROUTER routes, SUB subscriptions and timers. The
same class runs three ways: methods called directly in a unit test; several actors in
one process over `inproc://` endpoints (integration tests, simulations); or one actor a
process under supervisord over `ipc://` endpoints in the node's home.

Theory of operation
-------------------
* Requests arrive on a ROUTER. Each is decoded once at the boundary (`wire`), its
  params bound to the handler's signature and type-checked (`_bind`), and handled in
  its own task, at most `MAX_CONCURRENT` at once (beyond that the ROUTER stops reading
  and ZMQ pushes back on the callers).
* Redelivery is harmless: clients retry with the same request id; a reply is cached
  by id for a while and re-sent, and a duplicate of an in-flight request waits for the
  same reply instead of running the handler twice.
* Anything wrong with a request becomes an error reply; nothing a client sends can take
  the actor down. A handler crash is logged and answered with `internal`.
* Events go out on a PUB socket as `[topic, {epoch, seq, ts, data}]`; `seq` counts per
  topic, `epoch` changes with every process start. A heartbeat every second carries
  the epoch and the last seq of every topic, so a subscriber notices both a restart and
  an event it missed, and calls the actor's `resync(source, reason)` to re-read state.
"""

from __future__ import annotations

import inspect
import os
import signal
import sys
import time
import types
import typing
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import trio
import zmq

from . import clients, errors, wire
from .client import Client, open_client
from .home import Endpoints, Home
from .log import get_logger
from .zmqtrio import AsyncSocket

MAX_CONCURRENT = 256
REPLY_CACHE = 4096
HEARTBEAT_S = 1.0

# -- decorators ----------------------------------------------------------------------


def rpc(fn: Callable[..., Awaitable[Any]] | None = None, *, name: str | None = None) -> Any:
    """Mark a coroutine method as an RPC entrypoint (wire name: the method's name)."""

    def mark(f: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        f._p2pm_rpc = name or f.__name__  # type: ignore[attr-defined]
        return f

    return mark(fn) if fn is not None else mark


def on_event(*prefixes: str) -> Callable[[Callable[..., Awaitable[None]]], Any]:
    """Mark a coroutine method `(self, topic, data)` as handler of events with these
    dotted prefixes (`transport.peer` matches `transport.peer.connected`)."""

    def mark(f: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        f._p2pm_events = tuple(prefixes)  # type: ignore[attr-defined]
        return f

    return mark


def every(seconds: float) -> Callable[[Callable[..., Awaitable[None]]], Any]:
    """Mark a coroutine method to run every `seconds` while the actor runs."""

    def mark(f: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        f._p2pm_every = float(seconds)  # type: ignore[attr-defined]
        return f

    return mark


# -- the base class ------------------------------------------------------------------


class Actor:
    """Base class. Subclasses set `name` and override the hooks they need."""

    name: ClassVar[str] = ""

    def __init__(self, home: Home | None = None, config: dict[str, Any] | None = None) -> None:
        self.home = home
        self.config = config or {}
        self.log = get_logger(self.name or type(self).__name__)
        self.runtime: ActorRuntime | None = None

    # hooks ---------------------------------------------------------------------------
    async def setup(self) -> None:
        """Runs before the endpoints serve requests (open files, load state)."""

    async def run(self) -> None:
        """Long-running work of the actor; returns or runs until cancelled."""

    async def teardown(self) -> None:
        """Runs on shutdown, after requests stop (flush, close)."""

    def status(self) -> dict[str, Any]:
        """Extra fields for `sys.status`."""
        return {}

    def healthy(self) -> bool:
        return True

    async def resync(self, source: str, reason: str) -> None:
        """A subscribed actor restarted or we missed its events: re-read its state."""

    # services of the runtime ---------------------------------------------------------
    def publish(self, topic: str, data: Any) -> None:
        assert self.runtime is not None, "publish() needs a running actor"
        self.runtime.publish(topic, data)

    async def call_until_answered(self, actor: str, method: str,
                                  params: dict[str, Any] | None = None,
                                  on_wait: Callable[[str], None] | None = None) -> Any:
        """Call an actor this one cannot work without (at start: the keystore's
        identity, say) until it answers, backing off up to 2 s. Only "not there yet"
        (timeout, unavailable) is waited out; any other error is raised. `on_wait`
        gets the reason each time, e.g. to show it in `sys.status`."""
        return await clients.call_until_answered(self.call, actor, method, params,
                                                 on_wait, self.log)

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start a background task in the actor's nursery (it dies with the actor)."""
        assert self.runtime is not None and self.runtime._nursery is not None
        self.runtime._nursery.start_soon(fn, *args)

    async def call(self, actor: str, method: str, params: dict[str, Any] | None = None,
                   **kw: Any) -> Any:
        assert self.runtime is not None, "call() needs a running actor"
        client = await self.runtime.client(actor)
        return await client.call(method, params, **kw)


# -- parameter binding ---------------------------------------------------------------

_SIMPLE = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
           bytes: "a base64 string", dict: "an object", list: "a list"}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    if hint is Any or hint is inspect.Parameter.empty:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        last: errors.BusError | None = None
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _coerce(value, opt, where)
            except errors.BusError as exc:
                last = exc
        assert last is not None
        raise last
    if origin is list:
        if not isinstance(value, list):
            raise errors.bad_params(f"{where} must be a list")
        (item,) = typing.get_args(hint) or (Any,)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise errors.bad_params(f"{where} must be an object")
        return value
    if hint is bytes:
        return wire.b64d(value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in _SIMPLE:
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise errors.bad_params(f"{where} must be {_SIMPLE[hint]}")
        return value
    return value


class _Method:
    def __init__(self, fn: Callable[..., Awaitable[Any]]) -> None:
        self.fn = fn
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
        self.params = {
            n: (p, hints.get(n, Any)) for n, p in sig.parameters.items() if n != "self"
        }

    def bind(self, params: dict[str, Any]) -> dict[str, Any]:
        unknown = set(params) - set(self.params)
        if unknown:
            raise errors.bad_params(f"unknown params: {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {}
        for n, (p, hint) in self.params.items():
            if n in params:
                kwargs[n] = _coerce(params[n], hint, n)
            elif p.default is inspect.Parameter.empty:
                raise errors.bad_params(f"missing param: {n}")
        return kwargs


# -- the runtime ---------------------------------------------------------------------


class ActorRuntime:
    """Serves one actor on its endpoints inside a trio nursery."""

    def __init__(self, actor: Actor, endpoints: Endpoints, ctx: zmq.Context | None = None):
        self.actor = actor
        self.name = actor.name
        self.endpoints = endpoints
        self.ctx = ctx or zmq.Context.instance()
        self.epoch = f"{int(time.time() * 1000):x}-{uuid.uuid4().hex[:8]}"
        self.started_at = time.time()
        self.pid = os.getpid()
        self.log = actor.log
        self.ready = trio.Event()
        self.methods: dict[str, _Method] = {}
        self.handlers: list[tuple[tuple[str, ...], Callable[..., Awaitable[None]]]] = []
        self.timers: list[tuple[float, Callable[..., Awaitable[None]]]] = []
        for attr in dir(type(actor)):
            fn = getattr(actor, attr, None)
            if fn is None or not callable(fn):
                continue
            if (wname := getattr(fn, "_p2pm_rpc", None)) is not None:
                self.methods[wname] = _Method(fn)
            if (prefixes := getattr(fn, "_p2pm_events", None)) is not None:
                self.handlers.append((prefixes, fn))
            if (period := getattr(fn, "_p2pm_every", None)) is not None:
                self.timers.append((period, fn))
        self.methods["sys.ping"] = _Method(self._sys_ping)
        self.methods["sys.status"] = _Method(self._sys_status)
        self.methods["sys.methods"] = _Method(self._sys_methods)
        self._topic_seq: dict[str, int] = {}
        self._replies: OrderedDict[str, bytes] = OrderedDict()
        self._inflight: dict[str, list[bytes]] = {}
        self._clients: dict[str, Client] = {}
        self._nursery: trio.Nursery | None = None
        self._pub: AsyncSocket | None = None
        self._sub_state: dict[str, tuple[str, int]] = {}  # topic -> (epoch, seq)
        self._source_epoch: dict[str, str] = {}
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
                with trio.move_on_after(5):
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
            self._replies[req.id] = reply
            if len(self._replies) > REPLY_CACHE:
                self._replies.popitem(last=False)
            for who in self._inflight.pop(req.id):
                await self._router.send_multipart([who, *envelope[1:], reply])
        finally:
            limiter.release()

    async def dispatch(self, req: wire.Request) -> bytes:
        """Run one decoded request through validation and its handler; the encoded
        reply. Also used by doors other than the ROUTER (the gateway's TCP endpoint)."""
        method = self.methods.get(req.method)
        if method is None:
            self.counters["errors"] += 1
            return wire.encode_error(req.id, errors.BusError(
                errors.UNKNOWN_METHOD, f"{self.name} has no method {req.method!r}"))
        try:
            result = await method.fn(**method.bind(req.params))
            return wire.encode_ok(req.id, result)
        except errors.BusError as exc:
            self.counters["errors"] += 1
            return wire.encode_error(req.id, exc)
        except Exception as exc:  # a handler bug must not take the actor down
            self.counters["errors"] += 1
            self.log.error("rpc.crashed", exc=True, method=req.method)
            return wire.encode_error(req.id, errors.BusError(
                errors.INTERNAL, f"{req.method} failed: {type(exc).__name__}: {exc}"))

    async def _heartbeat(self) -> None:
        while True:
            self.publish(f"{self.name}.sys.heartbeat", {
                "pid": self.pid, "healthy": bool(self.actor.healthy()),
                "topics": dict(self._topic_seq),
            })
            await trio.sleep(HEARTBEAT_S)

    async def _timer(self, period: float, fn: Callable[[], Awaitable[None]]) -> None:
        while True:
            await trio.sleep(period)
            try:
                await fn()
            except Exception:
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
        self._heard = {src: trio.current_time() for src in sources}
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_sources, sub, sources)
                while True:
                    frames = await asock.recv_multipart()
                    self._heard[frames[0].split(b".", 1)[0].decode(errors="replace")] = \
                        trio.current_time()
                    await self._on_event_frames(frames, prefixes)
        finally:
            asock.close(linger_ms=0)

    async def _watch_sources(self, sub: zmq.Socket, sources: list[str]) -> None:
        """A source silent for three heartbeats is reconnected: ipc does that by
        itself, but an inproc pipe to a publisher that went away never recovers."""
        while True:
            await trio.sleep(HEARTBEAT_S)
            now = trio.current_time()
            for src in sources:
                if now - self._heard.get(src, now) > 3 * HEARTBEAT_S:
                    ep = self.endpoints.events(src)
                    if ep.startswith("inproc://"):
                        try:
                            sub.disconnect(ep)
                        except zmq.ZMQError:
                            pass  # the pipe is already gone
                        sub.connect(ep)
                    self._heard[src] = now

    async def _on_event_frames(self, frames: list[bytes], prefixes: list[str]) -> None:
        if len(frames) != 2:
            return
        try:
            topic = frames[0].decode()
            ev = wire.loads(frames[1])
            epoch, seq, data = ev["epoch"], int(ev["seq"]), ev.get("data")
        except Exception:
            return
        self.counters["events_received"] += 1
        source = topic.split(".")[0]
        # A new epoch: the source restarted. Everything we knew from it is stale.
        if self._source_epoch.get(source) != epoch:
            first = source not in self._source_epoch
            self._source_epoch[source] = epoch
            self._sub_state = {t: v for t, v in self._sub_state.items()
                               if not t.startswith(source + ".")}
            if not first:
                await self._resync(source, "restarted")
        # Missed events show as a seq beyond the last one we got (0 if none: a
        # subscriber that joined after the source's first events, which PUB/SUB drops
        # while it connects, has missed them just the same).
        # Heartbeats themselves may be missed at no cost: each carries all the seqs.
        heartbeat = f"{source}.sys.heartbeat"
        topics = data.get("topics") if isinstance(data, dict) else None
        if topic == heartbeat and isinstance(topics, dict):
            missed = []
            for t, last in topics.items():
                if not isinstance(last, int) or t == heartbeat or not _matches(t, prefixes):
                    continue  # a malformed heartbeat must not take the subscriber down
                seen = self._sub_state.get(t)
                if (seen[1] if seen is not None else 0) < last:
                    self._sub_state[t] = (epoch, last)
                    missed.append(t)
            if missed:
                await self._resync(source, f"missed events on {', '.join(missed)}")
        prev = self._sub_state.get(topic)
        self._sub_state[topic] = (epoch, seq)
        if topic != heartbeat and seq > (prev[1] if prev is not None else 0) + 1:
            await self._resync(source, f"gap on {topic}")
        for pfx, fn in self.handlers:
            if _matches(topic, pfx):
                try:
                    await fn(topic, data)
                except Exception:
                    self.log.error("event.handler_crashed", exc=True, topic=topic)

    async def _resync(self, source: str, reason: str) -> None:
        self.counters["resyncs"] += 1
        self.log.info("bus.resync", source=source, reason=reason)
        try:
            await self.actor.resync(source, reason)
        except Exception:
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


def _matches(topic: str, prefixes: typing.Iterable[str]) -> bool:
    return any(topic == p or topic.startswith(p + ".") for p in prefixes)


# -- process entry -------------------------------------------------------------------


def run_actor_process(actor: Actor, endpoints: Endpoints) -> int:
    """Run one actor as this process until SIGTERM/SIGINT; returns the exit code.

    On a signal the root nursery is cancelled, sockets close with a linger and the
    context is terminated (pyzmq does not do that at interpreter exit, and queued
    messages would be lost). 0 on a signal, 1 on a crash.
    """
    ctx = zmq.Context.instance()
    lock = _lock_actor(actor.name, endpoints)
    if lock is None:
        print(f"p2pm: {actor.name} is already running in this home; stop it first "
              f"(e.g. supervisorctl stop {actor.name})", file=sys.stderr)
        return 2

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            runtime = ActorRuntime(actor, endpoints, ctx)

            async def watch_signals() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                    async for signum in sigs:
                        actor.log.info("actor.stopping", signal=signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(watch_signals)
            await runtime.serve()

    code = 0
    try:
        trio.run(main)
    except Exception:
        actor.log.error("actor.crashed", exc=True)
        code = 1
    finally:
        ctx.term()
        lock.close()
    return code


def _lock_actor(name: str, endpoints: Endpoints) -> Any:
    """One process per actor and home: binding an ipc endpoint silently steals it from
    a live process, so a second instance must be refused before it binds."""
    import fcntl

    run_dir = endpoints.run_dir
    if run_dir is None:
        return open(os.devnull)  # inproc: nothing to guard
    f = open(run_dir / f"{name}.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f
